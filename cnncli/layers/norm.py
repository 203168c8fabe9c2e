"""Normalisation layers: batch normalisation and local response normalisation."""

from __future__ import annotations

from typing import Any

from cnncli.layers.base import (
    Context,
    Kept,
    Layer,
    Node,
    Param,
    Shape,
    choice,
    fraction,
    pos_int,
    pos_number,
)
from cnncli.layers.conv import spatial_input
from cnncli.layers.init import ones, zeros
from cnncli.layers.registry import register


@register
class BatchNorm(Layer):
    doc = (
        "Batch normalisation: per channel, normalise by the batch statistics in training "
        "and by running estimates at evaluation, then scale and shift."
    )
    type = "batchnorm"
    grad_options = True
    params_spec = (
        Param("momentum", fraction, 0.1, "weight of the new batch in the running estimates"),
        Param("eps", pos_number, 1e-5, "added to the variance before the square root"),
    )

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        c = in_shape[-1]
        lines = [
            "y = gamma*(x - mean)/sqrt(var + eps) + beta, per channel",
            f"params = 2*{c} = {2 * c} (gamma, beta); non-trainable running mean, var: {2 * c}",
        ]
        return Node(
            self.path,
            self,
            in_shape,
            in_shape,
            params={"weight": (c,), "bias": (c,)},
            buffers={"running_mean": (c,), "running_var": (c,)},
            explain=lines,
        )

    def init(self, node: Node, rng: Any, dtype: Any, nonlinearity: str | None = None) -> dict:
        c = node.params["weight"]
        return {
            "weight": ones(c, dtype),
            "bias": zeros(c, dtype),
            "running_mean": zeros(c, dtype),
            "running_var": ones(c, dtype),
        }

    def forward(self, node: Node, x: Any, state: dict, ctx: Any, act: str | None = None
                ) -> tuple[Any, Any]:
        """``act`` (relu, relu6): the activation node after this one, run in the same pass
        (a plan step covers both). In a batch run in parts, the statistics are the whole
        batch's (``ctx.gather``) and the first part updates the running estimates."""
        from cnncli.ops import norm

        # frozen (trainable: false, --freeze): the running statistics, also in training
        training = ctx.training and node.path not in getattr(ctx, "frozen", ())
        y, cache, rm, rv = norm.batchnorm_forward(
            x,
            state["weight"],
            state["bias"],
            state["running_mean"],
            state["running_var"],
            training,
            self.momentum,
            self.eps,
            act=act,
            gather=_gather(ctx, node, "fwd"),
        )
        if training and getattr(ctx, "part", 0) == 0:
            state["running_mean"][...] = rm
            state["running_var"][...] = rv
        return y, (cache, ctx)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """A reference to x (xhat is recomputed in backward) and four per-channel arrays:
        mean, 1/std, scale and shift. A fused ReLU/ReLU6 keeps nothing more."""
        return Kept(input=True, fixed=4 * node.in_shape[-1] * itemsize)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict, *,
                 param_grads: bool = True, need_dx: bool = True) -> Any:
        from cnncli.ops import norm

        op_cache, ctx = cache
        dx, dgamma, dbeta = norm.batchnorm_backward(dy, op_cache, need_grads=param_grads,
                                                    gather=_gather(ctx, node, "bwd"))
        if param_grads:
            grads["weight"] = dgamma
            grads["bias"] = dbeta
        return dx


def _gather(ctx: Any, node: Node, tag: str):
    """The run's gather for this node (None outside the engine or when not split)."""
    gather = getattr(ctx, "gather", None)
    if gather is None or getattr(ctx, "parts", 1) == 1:
        return None
    return lambda key, value: gather((node.path, tag, key), value)


@register
class LRN(Layer):
    doc = (
        "Local response normalisation across channels (AlexNet): "
        "b_c = a_c / (k + alpha*sum of a^2 over n neighbouring channels)^beta."
    )
    type = "lrn"
    params_spec = (
        Param("size", pos_int, 5, "n, the number of neighbouring channels summed"),
        Param("alpha", pos_number, 1e-4, "scale of the sum of squares"),
        Param("beta", pos_number, 0.75, "exponent"),
        Param("k", pos_number, 2.0, "additive constant"),
        Param(
            "convention",
            choice("textbook", "torch"),
            "textbook",
            "textbook (AlexNet paper: alpha*sum) or torch (alpha/n*sum)",
        ),
    )

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        spatial_input(self, in_shape)
        a = "alpha" if self.convention == "textbook" else "alpha/n"
        return Node(
            self.path,
            self,
            in_shape,
            in_shape,
            explain=[
                f"b_c = a_c / ({self.k:g} + {a}*sum_(n={self.size}) a^2)^{self.beta:g}, "
                f"alpha={self.alpha:g}; no parameters"
            ],
        )

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        from cnncli.ops import norm

        return norm.lrn_forward(
            x, self.size, self.alpha, self.beta, self.k, self.convention == "torch"
        )

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """x, and the denominator and its power (each the size of x)."""
        h, w, c = node.in_shape
        return Kept(input=True, per_image=2 * h * w * c * itemsize)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        from cnncli.ops import norm

        return norm.lrn_backward(dy, cache)
