"""Activation functions, usable as layers (``- relu``) or fused (``activation: relu``)."""

from __future__ import annotations

from typing import Any

from cnncli.layers.base import Context, Kept, Layer, Node, Param, Shape, number, pos_number, suggest
from cnncli.layers.registry import register

#: name -> {hyperparameter: default}. The single list of activations the spec accepts.
ACTIVATIONS: dict[str, dict[str, float]] = {
    "relu": {},
    "relu6": {},
    "leaky_relu": {"slope": 0.01},
    "sigmoid": {},
    "tanh": {},
    "elu": {"alpha": 1.0},
    "softmax": {},
}

_FORMULAS = {
    "relu": "max(0, x)",
    "relu6": "min(max(0, x), 6)",
    "leaky_relu": "x if x > 0 else slope*x",
    "sigmoid": "1 / (1 + exp(-x))",
    "tanh": "tanh(x)",
    "elu": "x if x > 0 else alpha*(exp(x) - 1)",
    "softmax": "exp(x_i) / sum_j exp(x_j), over channels",
}

Activation = tuple[str, dict[str, float]]


def activation_param(name: str, v: Any) -> Activation | None:
    """Normalise ``relu`` / ``{leaky_relu: {slope: 0.2}}`` / ``none`` to (name, params)."""
    if v is None or (isinstance(v, str) and v.lower() in ("none", "linear", "identity")):
        return None
    hp: dict[str, Any] = {}
    if isinstance(v, dict) and len(v) == 1:
        ((v, hp),) = v.items()
        hp = dict(hp or {})
    if not isinstance(v, str) or v.lower() not in ACTIVATIONS:
        raise ValueError(
            f"'{name}' must be one of {', '.join(ACTIVATIONS)} or none; got {v!r}"
            + suggest(str(v), ACTIVATIONS)
        )
    v = v.lower()
    defaults = ACTIVATIONS[v]
    for key in hp:
        if key not in defaults:
            raise ValueError(f"activation {v} has no parameter {key!r}" + suggest(key, defaults))
    return v, {k: number(k, hp.get(k, d)) for k, d in defaults.items()}


activation_param.kind = "activation name or none"  # type: ignore[attr-defined]


def describe(act: Activation | None) -> str:
    if act is None:
        return "none"
    name, hp = act
    return name + "".join(f"({k}={v:g})" for k, v in hp.items())


def active(act: Activation | None, node: Any, ctx: Any) -> Activation | None:
    """The activation to apply, or None where the engine wants logits from this node.

    A network ending in softmax is trained with the fused softmax cross-entropy, so the
    engine asks for the pre-softmax values of that last node (``ctx.logits_of``).
    """
    if act is not None and act[0] == "softmax" and getattr(ctx, "logits_of", None) == node.path:
        return None
    return act


def act_keeps(act: Activation | None) -> str | None:
    """What ops.activations keeps for the derivative: 'y' (a reference to the output),
    'x' (a copy of the input: leaky_relu with a negative slope, elu with alpha <= 0, where
    y does not tell the branch) or None (no activation)."""
    if act is None:
        return None
    name, hp = act
    if (name == "leaky_relu" and hp.get("slope", 0.01) < 0) or (
            name == "elu" and hp.get("alpha", 1.0) <= 0):
        return "x"
    return "y"


def act_forward(act: Activation, x: Any) -> tuple[Any, Any]:
    from cnncli.ops import activations

    return activations.forward(act[0], x, **act[1])


def act_backward(act: Activation, dy: Any, cache: Any) -> Any:
    from cnncli.ops import activations

    return activations.backward(act[0], dy, cache)


class ActivationLayer(Layer):
    """An activation applied element-wise (softmax: across channels)."""

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        act = self.activation()
        return Node(
            self.path,
            self,
            in_shape,
            in_shape,
            explain=[
                f"y = {_FORMULAS[self.type]}; shape unchanged ({_fmt(in_shape)})"
                + (f"; {describe(act)}" if act[1] else "")
            ],
        )

    def activation(self) -> Activation:
        return self.type, {k: float(self.cfg[k]) for k in ACTIVATIONS[self.type]}

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        act = active(self.activation(), node, ctx)
        if act is None:
            return x, (None, None)
        y, cache = act_forward(act, x)
        return y, (act, cache)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        act, inner = cache
        return dy if act is None else act_backward(act, dy, inner)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        if logits and self.type == "softmax":
            return Kept(alias=True)  # returns x itself
        if act_keeps(self.activation()) == "x":
            return Kept(per_image=_values(node.in_shape) * itemsize)
        return Kept(output=True)


def _values(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def act_kept(act: Activation | None, node: Any, out_shape: Shape, itemsize: int,
             logits: bool) -> Kept:
    """Kept for a layer's own ``activation:`` (conv, deconv, dense, residual): the output,
    a copy of the pre-activation values, or nothing (none; a softmax skipped as logits)."""
    if logits and act is not None and act[0] == "softmax":
        act = None
    keeps = act_keeps(act)
    if keeps == "x":
        return Kept(per_image=_values(out_shape) * itemsize)
    return Kept(output=keeps == "y")


def _fmt(shape: Shape) -> str:
    return "x".join(str(s) for s in shape)


def _make(act_name: str, hp: dict[str, float]) -> type[Layer]:
    params = tuple(
        Param(k, number if k != "alpha" else pos_number, d, f"{k} of {act_name}")
        for k, d in hp.items()
    )
    cls = type(
        f"{act_name.title().replace('_', '')}Layer",
        (ActivationLayer,),
        {"type": act_name, "doc": f"Activation: y = {_FORMULAS[act_name]}.", "params_spec": params},
    )
    return register(cls)


for _name, _hp in ACTIVATIONS.items():
    _make(_name, _hp)
