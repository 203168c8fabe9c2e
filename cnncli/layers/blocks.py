"""Blocks that contain other layers: residual, parallel (inception), repeat and sequential.

A block's children are layer lists parsed by the spec loader (``build``). Shapes flow
through them with :func:`resolve_sequence`; the engine runs them through ``ctx.run`` /
``ctx.unrun`` so that a block never needs to know how its children are stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cnncli.layers.activation import (
    act_backward,
    act_forward,
    act_kept,
    activation_param,
    describe,
)
from cnncli.layers.base import (
    RF,
    Context,
    Kept,
    Layer,
    Node,
    Param,
    Shape,
    choice,
    number,
    pos_int,
)
from cnncli.layers.registry import register

Builder = Callable[..., list[Layer]]


def layer_list(name: str, v: Any) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValueError(f"'{name}' must be a list of layers, got {type(v).__name__}")
    return v


layer_list.kind = "list of layers"  # type: ignore[attr-defined]


def branch_list(name: str, v: Any) -> list:
    if not isinstance(v, list) or not v or not all(isinstance(b, list) or b is None for b in v):
        raise ValueError(f"'{name}' must be a non-empty list of layer lists, e.g. [[...], [...]]")
    return [b or [] for b in v]


branch_list.kind = "list of layer lists"  # type: ignore[attr-defined]


def resolve_sequence(
    layers: list[Layer], in_shape: Shape, rf: RF | None, ctx: Context
) -> tuple[list[Node], Shape, RF | None]:
    """Shapes, counts and receptive fields through a list of layers, in order."""
    nodes = []
    shape = in_shape
    for layer in layers:
        if layer.is_block:
            node = layer.resolve_block(shape, rf, ctx)
        else:
            node = layer.resolve(shape, ctx)
            node.rf = layer.receptive(rf)
        nodes.append(node)
        shape, rf = node.out_shape, node.rf
    return nodes, shape, rf


def _fmt(shape: Shape) -> str:
    return "x".join(str(s) for s in shape)


def _merge_rf(rfs: list[RF | None]) -> RF | None:
    if any(r is None for r in rfs):
        return None
    return RF(
        (max(r.size[0] for r in rfs), max(r.size[1] for r in rfs)),
        (max(r.jump[0] for r in rfs), max(r.jump[1] for r in rfs)),
    )


class Block(Layer):
    is_block = True
    has_row = True
    children: dict[str, list[Layer]]

    def build(self, build: Builder) -> None:
        raise NotImplementedError

    def resolve_block(self, in_shape: Shape, rf: RF | None, ctx: Context) -> Node:
        raise NotImplementedError

    # Blocks get the engine context instead of a gradient dict: their children's
    # gradients are stored under the children's own names by ``ctx.unrun``.
    def backward(self, node: Node, dy: Any, cache: Any, state: dict, ctx: Any) -> Any:  # type: ignore[override]
        raise NotImplementedError


@register
class Residual(Block):
    doc = "Residual block H(x) = act(F(x) + scale*shortcut(x)); an empty shortcut is the identity."
    type = "residual"
    params_spec = (
        Param("body", layer_list, doc="the layers of F(x)"),
        Param("shortcut", layer_list, [], "layers of the shortcut (empty: identity x)"),
        Param("scale", number, 1.0, "lambda, the weight of the shortcut"),
        Param("activation", activation_param, "relu", "activation after the sum (or none)"),
    )

    def describe_parts(self) -> list[str]:
        return [f"add, scale {self.scale:g}"]

    def build(self, build: Builder) -> None:
        self.children = {
            "body": build(self.body, self.path, self.line),
            "shortcut": build(self.shortcut, f"{self.path}.shortcut", self.line),
        }

    def resolve_block(self, in_shape: Shape, rf: RF | None, ctx: Context) -> Node:
        body, out_b, rf_b = resolve_sequence(self.children["body"], in_shape, rf, ctx)
        short, out_s, rf_s = resolve_sequence(self.children["shortcut"], in_shape, rf, ctx)
        if out_b != out_s:
            what = "identity shortcut" if not short else "shortcut"
            raise self.error(
                f"cannot add: body gives {_fmt(out_b)} but the {what} gives {_fmt(out_s)}"
                + (
                    "; add a projection shortcut (e.g. a 1x1 conv with the body's stride)"
                    if not short
                    else ""
                )
            )
        lines = [
            f"H(x) = {describe(self.cfg['activation'])}(F(x) + {self.scale:g}*"
            f"{'x' if not short else 'shortcut(x)'}); {_fmt(out_b)}"
        ]
        node = Node(
            self.path,
            self,
            in_shape,
            out_b,
            explain=lines,
            children={"body": body, "shortcut": short},
        )
        node.rf = _merge_rf([rf_b, rf_s])
        return node

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        yb, cb = ctx.run(node.children["body"], x)
        ys, cs = ctx.run(node.children["shortcut"], x)
        act = self.cfg["activation"]
        opts = getattr(ctx, "options", None)
        if (act is not None and act[0] == "relu" and opts is not None and opts.fuse_add_act
                and yb.shape == ys.shape and yb.dtype == ys.dtype):
            import numpy as np

            from cnncli.ops import _kernels as kern

            y = np.empty_like(yb)
            kern.add_relu(np.ascontiguousarray(yb).reshape(-1),
                          np.ascontiguousarray(ys).reshape(-1), yb.dtype.type(self.scale),
                          y.reshape(-1))
            return y, (cb, cs, ("add+relu", y))
        s = yb + ys if self.scale == 1.0 else yb + self.scale * ys
        if act is None:
            return s, (cb, cs, None)
        y, ca = act_forward(act, s)
        return y, (cb, cs, ca)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """Beyond its children: what the activation after the sum keeps (ReLU: the output,
        fused with the add or not)."""
        return act_kept(self.cfg["activation"], node, node.out_shape, itemsize, logits)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, ctx: Any) -> Any:
        cb, cs, ca = cache
        act = self.cfg["activation"]
        if isinstance(ca, tuple) and ca[0] == "add+relu":
            import numpy as np

            from cnncli.ops import _kernels as kern

            y = ca[1]
            ds = np.empty_like(y)
            kern.relu_backward(np.ascontiguousarray(dy).reshape(-1), y.reshape(-1),
                               ds.reshape(-1))
        else:
            ds = dy if act is None else act_backward(act, dy, ca)
        dx = ctx.unrun(node.children["body"], ds, cb)
        ds_short = ds if self.scale == 1.0 else self.scale * ds
        return dx + ctx.unrun(node.children["shortcut"], ds_short, cs)


@register
class Parallel(Block):
    doc = (
        "Branches applied to the same input, merged by channel concatenation or addition "
        "(Inception); an empty branch is the identity."
    )
    type = "parallel"
    params_spec = (
        Param("branches", branch_list, doc="a list of layer lists"),
        Param("merge", choice("concat", "add"), "concat", "concat along channels, or add"),
    )

    def describe_parts(self) -> list[str]:
        return [self.merge]

    def build(self, build: Builder) -> None:
        self.children = {
            f"branch{i + 1}": build(b, f"{self.path}.branch{i + 1}", self.line)
            for i, b in enumerate(self.branches)
        }

    def resolve_block(self, in_shape: Shape, rf: RF | None, ctx: Context) -> Node:
        children, outs, rfs = {}, [], []
        for key, layers in self.children.items():
            nodes, out, r = resolve_sequence(layers, in_shape, rf, ctx)
            children[key] = nodes
            outs.append(out)
            rfs.append(r)
        shapes = ", ".join(_fmt(o) for o in outs)
        if self.merge == "add":
            if len(set(outs)) != 1:
                raise self.error(f"cannot add branches of different shapes: {shapes}")
            out_shape = outs[0]
            lines = [f"y = sum of {len(outs)} branches, each {_fmt(out_shape)}"]
        else:
            if any(len(o) != 3 for o in outs) or len({o[:2] for o in outs}) != 1:
                raise self.error(f"concat needs branches with the same H x W; got {shapes}")
            c = sum(o[2] for o in outs)
            out_shape = (outs[0][0], outs[0][1], c)
            lines = [f"C = {' + '.join(str(o[2]) for o in outs)} = {c} (concat along channels)"]
        node = Node(self.path, self, in_shape, out_shape, explain=lines, children=children)
        node.rf = _merge_rf(rfs)
        return node

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        import numpy as np

        ys, caches = [], []
        for nodes in node.children.values():
            y, c = ctx.run(nodes, x)
            ys.append(y)
            caches.append(c)
        if self.merge == "add":
            out = ys[0].copy()
            for y in ys[1:]:
                out += y
            return out, (caches, None)
        sizes = [y.shape[1] for y in ys]
        return np.concatenate(ys, axis=1), (caches, sizes)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, ctx: Any) -> Any:
        import numpy as np

        caches, sizes = cache
        parts = [dy] * len(caches) if sizes is None else np.split(dy, np.cumsum(sizes)[:-1], axis=1)
        dx = None
        for nodes, part, c in zip(node.children.values(), parts, caches):
            d = ctx.unrun(nodes, part, c)
            dx = d if dx is None else dx + d
        return dx


class _Sequence(Block):
    has_row = False

    def resolve_block(self, in_shape: Shape, rf: RF | None, ctx: Context) -> Node:
        nodes, out, rf_out = resolve_sequence(self.children["layers"], in_shape, rf, ctx)
        node = Node(self.path, self, in_shape, out, children={"layers": nodes})
        node.rf = rf_out
        return node

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        return ctx.run(node.children["layers"], x)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, ctx: Any) -> Any:
        return ctx.unrun(node.children["layers"], dy, cache)


@register
class Repeat(_Sequence):
    doc = (
        "The same layers repeated N times (fresh weights each time); copies are named "
        "<name>.0, <name>.1, ..."
    )
    type = "repeat"
    params_spec = (
        Param("times", pos_int, doc="number of copies"),
        Param("layers", layer_list, doc="the layers of one copy"),
    )

    def build(self, build: Builder) -> None:
        layers: list[Layer] = []
        single = len(self.cfg["layers"]) == 1
        for i in range(self.times):
            if single:  # one layer per copy: the copy itself is <name>.<i>
                layers += build(self.cfg["layers"], self.path, self.line, single_name=str(i))
            else:
                layers += build(self.cfg["layers"], f"{self.path}.{i}", self.line)
        self.children = {"layers": layers}


@register
class Sequential(_Sequence):
    doc = "A named group of layers (e.g. a ResNet stage), shown as <name>.<layer>."
    type = "sequential"
    params_spec = (Param("layers", layer_list, doc="the layers, in order"),)

    def build(self, build: Builder) -> None:
        self.children = {"layers": build(self.cfg["layers"], self.path, self.line)}
