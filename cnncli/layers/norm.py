"""Normalisation layers: batch normalisation and local response normalisation."""

from __future__ import annotations

from typing import Any

from cnncli.layers.base import (
    Context,
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

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        from cnncli.ops import norm

        y, cache, rm, rv = norm.batchnorm_forward(
            x,
            state["weight"],
            state["bias"],
            state["running_mean"],
            state["running_var"],
            ctx.training,
            self.momentum,
            self.eps,
        )
        if ctx.training:
            state["running_mean"][...] = rm
            state["running_var"][...] = rv
        return y, cache

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        from cnncli.ops import norm

        dx, dgamma, dbeta = norm.batchnorm_backward(dy, cache)
        grads["weight"] = dgamma
        grads["bias"] = dbeta
        return dx


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

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict) -> Any:
        from cnncli.ops import norm

        return norm.lrn_backward(dy, cache)
