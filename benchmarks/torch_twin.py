"""The PyTorch twin of a cnncli model, for benchmarks only (PyTorch is never a dependency).

``torch_twin(model, torch)`` walks the model's layer tree (the same tree ``cnn shapes``
reports) and builds the equivalent ``torch.nn`` module, copying every parameter and
batchnorm buffer, so both engines start from the same weights. Residual and parallel
blocks become small modules of their own; a final softmax is left out (both sides train
with the fused softmax cross-entropy).
"""

from __future__ import annotations

from typing import Any


def torch_twin(model: Any, torch: Any) -> Any:
    """nn.Module equivalent to ``model`` (a cnncli Model), with its weights copied in."""
    nn = torch.nn
    net = nn.Sequential(*_sequence(model, model.network.nodes, torch, last=True))
    return net


def _act(name: str, hp: dict, torch: Any) -> Any:
    nn = torch.nn
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "leaky_relu":
        return nn.LeakyReLU(hp.get("slope", 0.01))
    if name == "elu":
        return nn.ELU(hp.get("alpha", 1.0))
    raise SystemExit(f"benchmark: no PyTorch twin for activation {name}")


def _copy(model: Any, node: Any, module: Any, names: dict[str, str], torch: Any) -> None:
    with torch.no_grad():
        for ours, theirs in names.items():
            key = f"{node.path}.{ours}"
            if key in model.params or key in model.buffers:
                getattr(module, theirs).copy_(torch.from_numpy(model.get(key)))


def _sequence(model: Any, nodes: list, torch: Any, last: bool = False) -> list:
    out = []
    for i, node in enumerate(nodes):
        out += _node(model, node, torch, last and i == len(nodes) - 1)
    return out


def _node(model: Any, node: Any, torch: Any, last: bool) -> list:
    nn = torch.nn
    cfg, t = node.layer.cfg, node.type
    if t in ("sequential", "repeat"):
        return _sequence(model, node.children["layers"], torch, last)
    if t == "residual":
        body = nn.Sequential(*_sequence(model, node.children["body"], torch))
        short = nn.Sequential(*_sequence(model, node.children["shortcut"], torch))
        act = cfg.get("activation")
        return [_Residual(body, short, float(cfg["scale"]),
                          _act(act[0], act[1], torch) if act else nn.Identity(), torch)]
    if t == "parallel":
        branches = [nn.Sequential(*_sequence(model, b, torch)) for b in node.children.values()]
        return [_Parallel(branches, cfg["merge"], torch)]
    mods: list = []
    if t == "conv":
        c = node.in_shape[2]
        m = nn.Conv2d(c, cfg["filters"], cfg["kernel"], cfg["stride"], node.layer.pad,
                      dilation=cfg["dilation"], groups=cfg["groups"], bias=cfg["bias"])
        _copy(model, node, m, {"weight": "weight", "bias": "bias"}, torch)
        mods.append(m)
    elif t == "dense":
        m = nn.Linear(node.params["weight"][1], cfg["units"], bias=cfg["bias"])
        _copy(model, node, m, {"weight": "weight", "bias": "bias"}, torch)
        if len(node.in_shape) == 3:
            mods.append(nn.Flatten())
        mods.append(m)
    elif t == "batchnorm":
        c = node.in_shape[-1]
        m = (nn.BatchNorm2d if len(node.in_shape) == 3 else nn.BatchNorm1d)(
            c, eps=cfg["eps"], momentum=cfg["momentum"])
        _copy(model, node, m, {"weight": "weight", "bias": "bias",
                               "running_mean": "running_mean", "running_var": "running_var"},
              torch)
        mods.append(m)
    elif t == "pool":
        if cfg["over"] != "space":
            raise SystemExit("benchmark: no PyTorch twin for pooling over depth")
        kind = cfg["type"]
        if kind == "max":
            mods.append(nn.MaxPool2d(cfg["size"], cfg["stride"], cfg["padding"],
                                     ceil_mode=cfg["ceil"]))
        elif kind == "avg":
            mods.append(nn.AvgPool2d(cfg["size"], cfg["stride"], cfg["padding"],
                                     ceil_mode=cfg["ceil"]))
        else:
            mods.append(nn.LPPool2d(2, cfg["size"], cfg["stride"], ceil_mode=cfg["ceil"]))
    elif t == "global_pool":
        mods += [nn.AdaptiveAvgPool2d(1) if cfg["type"] == "avg" else nn.AdaptiveMaxPool2d(1),
                 nn.Flatten()]
    elif t == "flatten":
        mods.append(nn.Flatten())
    elif t == "dropout":
        mods.append(nn.Dropout(cfg["rate"]))
    elif t == "softmax":
        if not last:
            mods.append(nn.Softmax(dim=1))
    elif t in ("relu", "relu6", "tanh", "sigmoid", "leaky_relu", "elu"):
        mods.append(_act(t, node.layer.activation()[1], torch))
    else:
        raise SystemExit(f"benchmark: no PyTorch twin for layer type {t}")
    act = cfg.get("activation")
    if t in ("conv", "dense") and act is not None and not (act[0] == "softmax" and last):
        mods.append(_act(act[0], act[1], torch) if act[0] != "softmax" else nn.Softmax(1))
    return mods


def _Residual(body, short, scale, act, torch):  # noqa: N802 (a module factory)
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.shortcut, self.act, self.scale = body, short, act, scale

        def forward(self, x):
            s = self.shortcut(x)
            return self.act(self.body(x) + (s if self.scale == 1.0 else self.scale * s))

    return Residual()


def _Parallel(branches, merge, torch):  # noqa: N802 (a module factory)
    class Parallel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.branches = torch.nn.ModuleList(branches)

        def forward(self, x):
            ys = [b(x) for b in self.branches]
            if merge == "add":
                out = ys[0]
                for y in ys[1:]:
                    out = out + y
                return out
            return torch.cat(ys, dim=1)

    return Parallel()
