"""Flatten, dense (fully connected) and dropout layers."""

from __future__ import annotations

from math import prod
from typing import Any, NamedTuple

from cnncli.layers.activation import (
    act_backward,
    act_forward,
    act_kept,
    activation_param,
    active,
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
    boolean,
    fraction,
    pos_int,
)
from cnncli.layers.init import init_weight, zeros
from cnncli.layers.registry import register


def _fmt(shape: Shape) -> str:
    return "x".join(str(s) for s in shape)


@register
class Flatten(Layer):
    doc = "Flatten a feature map to a vector in C-major order (as torch.flatten on NCHW)."
    type = "flatten"
    params_spec = ()

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        n = prod(in_shape)
        return Node(
            self.path,
            self,
            in_shape,
            (n,),
            explain=[f"units = {'*'.join(map(str, in_shape))} = {n:,}"],
        )

    def receptive(self, rf: RF | None) -> RF | None:
        return None

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        return dy.reshape(cache)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        return Kept(alias=True)  # a view of x; the cache is its shape


@register
class Dense(Layer):
    doc = (
        "Fully connected layer y = x W^T + b. A feature-map input is flattened implicitly "
        "(C-major, as torch.flatten), with a warning."
    )
    type = "dense"
    grad_options = True
    params_spec = (
        Param("units", pos_int, doc="number of outputs"),
        Param("bias", boolean, True, "add a learned bias per output"),
        Param("activation", activation_param, None, "activation applied to the output"),
    )

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        n_in = prod(in_shape)
        lines = []
        if len(in_shape) == 3:
            if in_shape[:2] != (1, 1):
                ctx.warn(
                    self,
                    f"input {_fmt(in_shape)} is a feature map: flattened implicitly "
                    f"to {n_in:,} units (C-major order); add '- flatten' to say so",
                )
            lines.append(f"flatten {_fmt(in_shape)} -> {n_in:,}")
        u = self.units
        params = {"weight": (u, n_in)}
        pline = f"params = {n_in:,}*{u:,}"
        total = n_in * u
        if self.bias:
            params["bias"] = (u,)
            total += u
            pline += f" + {u:,}"
        lines.append(pline + f" = {total:,}")
        lines.append(f"MACs = {n_in:,}*{u:,} = {n_in * u:,}")
        if self.cfg["activation"] is not None:
            lines.append(f"activation: {describe(self.cfg['activation'])}")
        return Node(self.path, self, in_shape, (u,), params, macs=n_in * u, explain=lines)

    def receptive(self, rf: RF | None) -> RF | None:
        return None

    def init(self, node: Node, rng: Any, dtype: Any, nonlinearity: str | None = None) -> dict:
        u, n_in = node.params["weight"]
        state = {"weight": init_weight(rng, (u, n_in), n_in, u, nonlinearity, dtype)}
        if "bias" in node.params:
            state["bias"] = zeros((u,), dtype)
        return state

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        x2 = x.reshape(x.shape[0], -1)
        if _by_columns(state, ctx):
            return self._forward_columns(node, x, x2, state, ctx)
        z = _times_weights_t(x2, state["weight"])
        if "bias" in state:
            z += state["bias"]
        act = active(self.cfg["activation"], node, ctx)
        act_cache = None
        if act is not None:
            z, act_cache = act_forward(act, z)
        return z, (x2, x.shape, act, act_cache)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """x (as the [N, units] view, for dW) and what the activation keeps. (A batch run
        in parts with a weight of COLUMN_SPLIT_WEIGHTS or more keeps the whole batch's x
        in every part: not counted, the estimate is for one part.)"""
        a = act_kept(self.cfg.get("activation"), node, node.out_shape, itemsize, logits)
        return Kept(input=True, output=a.output, per_image=a.per_image)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict, *,
                 param_grads: bool = True, need_dx: bool = True) -> Any:
        """``param_grads=False`` (frozen) skips dW = dy^T x and db; ``need_dx=False``
        skips dx = dy W (returns None)."""
        if isinstance(cache, _ColumnCache):
            return self._backward_columns(node, dy, cache, state, grads, param_grads)
        x2, shape, act, act_cache = cache
        if act is not None:
            dy = act_backward(act, dy, act_cache)
        if param_grads:
            grads["weight"] = dy.T @ x2
            if "bias" in state:
                grads["bias"] = dy.sum(axis=0)
        return (dy @ state["weight"]).reshape(shape) if need_dx else None

    # -- a batch run in parts, large weights: each part takes a block of the outputs -----
    def _forward_columns(self, node: Node, x: Any, x2: Any, state: dict, ctx: Any):
        """Every part multiplies the whole batch (its inputs gathered) by its block of the
        weight rows, and takes its images' rows of every block: the weights are read once
        per pass instead of once per part (VGG's fc7 is 64 MB)."""
        import numpy as np

        from cnncli.ops import _threads

        xs = np.concatenate(ctx.gather((node.path, "x"), x2))
        c0, c1 = _threads.split(self.units, ctx.parts)[ctx.part]
        block = _times_weights_t(xs, state["weight"][c0:c1])
        if "bias" in state:
            block += state["bias"][c0:c1]
        lo, hi = ctx.lo, ctx.lo + x2.shape[0]
        z = np.concatenate([b[lo:hi] for b in ctx.gather((node.path, "y"), block)], axis=1)
        act = active(self.cfg["activation"], node, ctx)
        act_cache = None
        if act is not None:
            z, act_cache = act_forward(act, z)
        return z, _ColumnCache(xs, x.shape, act, act_cache, ctx, (c0, c1), (lo, hi))

    def _backward_columns(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict,
                          param_grads: bool = True):
        """dW and db: each part its block of rows, over the whole batch, into arrays the
        first part allocates and reports (the others report None, so nothing is summed);
        dx: each part's block's share of dy @ W, the shares added in part order."""
        import numpy as np

        xs, shape, act, act_cache, ctx, (c0, c1), (lo, hi) = cache
        if act is not None:
            dy = act_backward(act, dy, act_cache)
        first = ctx.part == 0
        w = state["weight"]
        mine = (np.empty_like(w), np.empty(w.shape[0], dtype=w.dtype)) if (
            first and param_grads) else None
        got = ctx.gather((node.path, "dy"), (dy, mine))
        dys = np.concatenate([d for d, _ in got])
        dblock = dys[:, c0:c1]
        if param_grads:
            dw, db = got[0][1]
            np.matmul(dblock.T, xs, out=dw[c0:c1])
            grads["weight"] = dw if first else None
            if "bias" in state:
                db[c0:c1] = dblock.sum(axis=0)
                grads["bias"] = db if first else None
        shares = ctx.gather((node.path, "dx"), dblock @ w[c0:c1])
        dx = shares[0][lo:hi].copy()
        for s in shares[1:]:
            dx += s[lo:hi]
        return dx.reshape(shape)


#: Float32 batches smaller than this multiply as (W @ X^T)^T: OpenBLAS runs that
#: orientation 1.3-1.7x faster for few rows (32 x 4096 -> 256: 1.03 -> 0.69 ms, VGG's fc7
#: for 16 images 13.3 -> 8.6 ms on one thread); with many rows and small weights (LeNet's
#: F7 at evaluation, 500 x 84 -> 10) the plain product is faster.
_FEW_ROWS = 128


def _times_weights_t(x2: Any, w: Any) -> Any:
    """x2 @ w.T as a new C-contiguous array, in the faster GEMM orientation."""
    import numpy as np

    if x2.shape[0] < _FEW_ROWS and x2.dtype == np.float32:
        return np.ascontiguousarray(np.matmul(w, x2.T).T)
    return x2 @ w.T


#: Dense layers with at least this many weights (16 MB in float32) split their outputs
#: over the parts of a batch run in parts (below it, reading the weights once per part
#: costs less than the rendezvous: MobileNetV2's 1.3M-weight classifier was slower split).
COLUMN_SPLIT_WEIGHTS = 1 << 22


class _ColumnCache(NamedTuple):
    xs: Any  # the whole batch's inputs, gathered
    shape: tuple
    act: Any
    act_cache: Any
    ctx: Any
    columns: tuple[int, int]
    rows: tuple[int, int]


def _by_columns(state: dict, ctx: Any) -> bool:
    return (getattr(ctx, "parts", 1) > 1 and getattr(ctx, "rendezvous", None) is not None
            and state["weight"].size >= COLUMN_SPLIT_WEIGHTS)


@register
class Dropout(Layer):
    doc = "Inverted dropout: zero a fraction `rate` of units in training, scale the rest."
    type = "dropout"
    params_spec = (Param("rate", fraction, 0.5, "probability of dropping a unit"),)

    def describe_parts(self) -> list[str]:
        return [f"rate {self.rate:g}"]

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        return Node(
            self.path,
            self,
            in_shape,
            in_shape,
            explain=[f"y = x*mask/(1-{self.rate:g}) in training, y = x at evaluation"],
        )

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        """In a batch run in parts, the first part draws the whole batch's mask (the same
        draw as unsplit) and every part takes its rows."""
        from cnncli.ops import dropout

        if not ctx.training or getattr(ctx, "parts", 1) == 1 or self.rate == 0:
            return dropout.dropout_forward(x, self.rate, ctx.rng, ctx.training)
        full = (ctx.n, *x.shape[1:])
        draw = ctx.rng.random(full, dtype=x.dtype) if ctx.part == 0 else None
        mask = ctx.gather((node.path, "mask"), draw)[0][ctx.lo:ctx.lo + x.shape[0]]
        return dropout.dropout_forward(x, self.rate, None, True, mask=mask >= self.rate)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """The scaled mask (x's dtype and shape); rate 0 returns x itself."""
        if self.rate == 0:
            return Kept(alias=True)
        return Kept(per_image=prod(node.in_shape) * itemsize)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        from cnncli.ops import dropout

        return dropout.dropout_backward(dy, cache)
