"""Pooling layers: max / average / L2 over space or over depth, and global pooling."""

from __future__ import annotations

from typing import Any

from cnncli import arith
from cnncli.layers.base import (
    RF,
    Context,
    Kept,
    Layer,
    Node,
    Param,
    Shape,
    boolean,
    choice,
    fmt_pair,
    nonneg_pair,
    pos_pair,
    size_lines,
    warn_dropped,
)
from cnncli.layers.conv import spatial_input
from cnncli.layers.registry import register

_FORMULA = {"max": "max", "avg": "mean", "l2": "sqrt(sum x^2)"}


@register
class Pool(Layer):
    doc = "Pooling over windows of space (H x W) or of depth (channels); no parameters."
    type = "pool"
    params_spec = (
        Param("type", choice("max", "avg", "l2"), "max", "max, average or L2-norm pooling"),
        Param("size", pos_pair, 2, "window F (or [Fh, Fw]); over depth: channels per window"),
        Param("stride", pos_pair, None, "step S (default: the window size)"),
        Param("padding", nonneg_pair, 0, "zeros (-inf for max) added on each side"),
        Param("ceil", boolean, False, "ceil instead of floor in the output size (keeps edges)"),
        Param("over", choice("space", "depth"), "space", "pool over space or across channels"),
    )

    def __init__(self, name: str, cfg: dict[str, Any], *, line: int | None, path: str) -> None:
        if cfg.get("stride") is None:
            cfg["stride"] = cfg["size"]
        super().__init__(name, cfg, line=line, path=path)

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        h, w, c = spatial_input(self, in_shape)
        if self.over == "depth":
            return self._resolve_depth(in_shape, ctx)
        out, lines, pending = [], [], []
        for i, (axis, size) in enumerate((("H", h), ("W", w))):
            f, s, p = self.size[i], self.stride[i], self.padding[i]
            if 2 * p > f:
                raise self.error(f"padding {p} must be at most half the window ({f})")
            if size + 2 * p < f:
                raise self.error(
                    f"window {f} is larger than the padded input {axis}: "
                    f"{size} + 2*{p} = {size + 2 * p} < {f}"
                )
            o = arith.pool_output_size(size, f, s, p, self.ceil)
            rnd = "ceil" if self.ceil else "floor"
            lines.append(f"{axis}2 = {rnd}(({size} + 2*{p} - {f})/{s}) + 1 = {o}")
            dropped = arith.conv_dropped(size, f, s, p)
            if dropped and not self.ceil:
                pending.append((axis, size, p, f, s, dropped))
            out.append(o)
        lines = size_lines(lines)
        warn_dropped(ctx, self, pending, lines)
        lines.append(
            f"y = {_FORMULA[self.mode]} over each {self.size[0]}x{self.size[1]} window; "
            "no parameters"
        )
        return Node(self.path, self, in_shape, (out[0], out[1], c), explain=lines)

    def _resolve_depth(self, in_shape: Shape, ctx: Context) -> Node:
        h, w, c = in_shape
        f, s = self.size[0], self.stride[0]
        if self.size[0] != self.size[1] or self.stride[0] != self.stride[1]:
            raise self.error("pooling over depth takes a single integer size and stride")
        if self.padding != (0, 0) or self.ceil:
            raise self.error("pooling over depth supports no padding and no ceil mode")
        if c < f:
            raise self.error(f"window of {f} channels is larger than the {c} input channels")
        o = (c - f) // s + 1
        if (c - f) % s:
            ctx.warn(
                self,
                f"({c} - {f}) is not divisible by stride {s}: "
                f"the last {(c - f) % s} channels are dropped",
            )
        lines = [
            f"C2 = floor(({c} - {f})/{s}) + 1 = {o}",
            f"y = {_FORMULA[self.mode]} over {f} neighbouring channels; no parameters",
        ]
        return Node(self.path, self, in_shape, (h, w, o), explain=lines)

    def describe_parts(self) -> list[str]:
        parts = [f"{self.mode} {self.size[0]}x{self.size[1]}/{fmt_pair(self.stride)}"]
        if self.padding != (0, 0):
            parts.append(f"pad {fmt_pair(self.padding)}")
        if self.ceil:
            parts.append("ceil")
        if self.over == "depth":
            parts.append("over depth")
        return parts

    def receptive(self, rf: RF | None) -> RF | None:
        if rf is None or self.over == "depth":
            return rf
        return rf.then(self.size, self.stride)

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        from cnncli.ops import pool

        if self.over == "depth":
            return pool.depth_pool_forward(x, self.mode, self.size[0], self.stride[0])
        return pool.pool2d_forward(
            x,
            self.mode,
            self.size,
            self.stride,
            self.padding,
            self.ceil,
            need_argmax=bool(getattr(ctx, "training", True)),
        )

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """max: the winners' indices, one per output (int32; over depth int8 when the
        window is under 128 channels); avg: nothing; l2: x and y."""
        h, w, c = node.out_shape
        if self.mode == "max":
            idx = 1 if self.over == "depth" and self.size[0] < 128 else 4
            return Kept(per_image=h * w * c * idx)
        if self.mode == "l2":
            return Kept(input=True, output=True)
        return Kept()

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        from cnncli.ops import pool

        if self.over == "depth":
            return pool.depth_pool_backward(dy, cache)
        return pool.pool2d_backward(dy, cache)


@register
class GlobalPool(Layer):
    doc = "Global pooling: one value per channel (the whole H x W map), giving a vector."
    type = "global_pool"
    params_spec = (Param("type", choice("avg", "max"), "avg", "average or max over H x W"),)

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        h, w, c = spatial_input(self, in_shape)
        return Node(
            self.path,
            self,
            in_shape,
            (c,),
            explain=[f"y_c = {_FORMULA[self.mode]} over {h}x{w}; {c} values, no parameters"],
        )

    def describe_parts(self) -> list[str]:
        return [self.mode]

    def receptive(self, rf: RF | None) -> RF | None:
        return None  # every output sees the whole input

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        from cnncli.ops import pool

        return pool.global_pool_forward(x, self.mode)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """max: the winner of each channel (int64, NumPy's argmax); avg: nothing."""
        return Kept(per_image=8 * node.out_shape[0]) if self.mode == "max" else Kept()

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        from cnncli.ops import pool

        return pool.global_pool_backward(dy, cache)
