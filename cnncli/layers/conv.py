"""Convolution and transposed convolution layers."""

from __future__ import annotations

from typing import Any, NamedTuple

from cnncli import arith
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
    conv_padding,
    fmt_pair,
    nonneg_pair,
    pos_int,
    pos_pair,
    size_lines,
    warn_dropped,
)
from cnncli.layers.init import init_weight, zeros
from cnncli.layers.registry import register


class _PooledCache(NamedTuple):
    """Cache of Conv.forward_pooled: the fused op's cache and the run context."""

    op: Any
    ctx: Any


def fmt_shape(shape: Shape) -> str:
    return "x".join(str(s) for s in shape)


def spatial_input(layer: Layer, in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise layer.error(
            f"needs a feature map (H x W x C) but receives a vector of {in_shape[0]} units"
        )
    return in_shape  # type: ignore[return-value]


class _ConvBase(Layer):
    grad_options = True
    def check_groups(self, channels: int) -> None:
        g, k = self.groups, self.filters
        if channels % g or k % g:
            raise self.error(
                f"groups={g} must divide both input channels ({channels}) and filters ({k})"
            )

    def describe_parts(self) -> list[str]:
        (kh, kw), cfg = self.kernel, self.cfg
        pad = cfg["padding"]
        parts = [
            f"{kh}x{kw}/{fmt_pair(self.stride)}",
            f"pad {pad if isinstance(pad, str) else fmt_pair(pad)}",
        ]
        if self.dilation != (1, 1):
            parts.append(f"dil {fmt_pair(self.dilation)}")
        if self.groups != 1:
            parts.append(f"groups {self.groups}")
        return parts

    def forward_post(self, node: Node, y: Any, ctx: Any) -> tuple[Any, Any]:
        """Apply the fused activation; the cache remembers which (if any) was applied."""
        act = active(self.cfg.get("activation"), node, ctx)
        if act is None:
            return y, (None, None)
        y, cache = act_forward(act, y)
        return y, (act, cache)

    def backward_pre(self, dy: Any, act_cache: Any) -> Any:
        act, inner = act_cache
        return dy if act is None else act_backward(act, dy, inner)


@register
class Conv(_ConvBase):
    doc = "2-D convolution (cross-correlation), as im2col + matrix multiplication."
    type = "conv"
    params_spec = (
        Param("filters", pos_int, doc="number of filters K (output channels)"),
        Param("kernel", pos_pair, doc="filter size F (or [Fh, Fw])"),
        Param("stride", pos_pair, 1, "step S between applications"),
        Param(
            "padding",
            conv_padding,
            "valid",
            "zeros added on each side: valid = 0, same = half = (F-1)/2 (odd F), full = F-1",
        ),
        Param("dilation", pos_pair, 1, "spacing D between kernel taps (extent D*(F-1)+1)"),
        Param("groups", pos_int, 1, "channel groups (groups = channels: depthwise)"),
        Param("bias", boolean, True, "add a learned bias per filter"),
        Param("activation", activation_param, None, "activation applied to the output"),
    )

    def __init__(self, name: str, cfg: dict[str, Any], *, line: int | None, path: str) -> None:
        super().__init__(name, cfg, line=line, path=path)
        self.pad = self._padding()

    def _padding(self) -> tuple[int, int]:
        p = self.padding
        if p == "valid":
            return (0, 0)
        keff = [arith.effective_kernel(k, d) for k, d in zip(self.kernel, self.dilation)]
        if p == "same":
            if any(k % 2 == 0 for k in keff):
                raise self.error(
                    f"padding 'same' needs an odd kernel extent (F' = D*(F-1)+1 = "
                    f"{fmt_shape(tuple(keff))}); give padding as an integer instead"
                )
            return (keff[0] - 1) // 2, (keff[1] - 1) // 2
        if p == "full":
            return keff[0] - 1, keff[1] - 1
        return p

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        h, w, c = spatial_input(self, in_shape)
        k, g = self.filters, self.groups
        self.check_groups(c)
        out, lines, pending = [], [], []
        for axis, size in (("H", h), ("W", w)):
            i = 0 if axis == "H" else 1
            f, s, p, d = self.kernel[i], self.stride[i], self.pad[i], self.dilation[i]
            keff = arith.effective_kernel(f, d)
            fs = f"{f}" if d == 1 else f"({d}*({f}-1)+1)"
            if size + 2 * p < keff:
                raise self.error(
                    f"kernel {keff} is larger than the padded input {axis}: "
                    f"{size} + 2*{p} = {size + 2 * p} < {keff}"
                )
            o = arith.conv_output_size(size, f, s, p, d)
            dropped = arith.conv_dropped(size, f, s, p, d)
            if dropped:
                pending.append((axis, size, p, keff, s, dropped))
            out.append(o)
            lines.append(f"{axis}2 = floor(({size} + 2*{p} - {fs})/{s}) + 1 = {o}")
        lines = size_lines(lines)
        warn_dropped(ctx, self, pending, lines)
        cg = c // g
        kh, kw = self.kernel
        params = {"weight": (k, cg, kh, kw)}
        nparams = kh * kw * cg * k
        pline = f"params = {kh}*{kw}*{cg}*{k}"
        if self.bias:
            params["bias"] = (k,)
            nparams += k
            pline += f" + {k}"
        pline += f" = {nparams:,}" + (f" (D/groups = {c}/{g} = {cg})" if g > 1 else "")
        out_shape = (out[0], out[1], k)
        macs = out[0] * out[1] * k * kh * kw * cg
        lines.append(pline)
        lines.append(f"MACs = {out[0]}*{out[1]}*{k} outputs * {kh}*{kw}*{cg} = {macs:,}")
        if self.cfg["activation"] is not None:
            lines.append(f"activation: {describe(self.cfg['activation'])}")
        return Node(self.path, self, in_shape, out_shape, params, macs=macs, explain=lines)

    def receptive(self, rf: RF | None) -> RF | None:
        if rf is None:
            return None
        keff = tuple(arith.effective_kernel(k, d) for k, d in zip(self.kernel, self.dilation))
        return rf.then(keff, self.stride)

    def init(self, node: Node, rng: Any, dtype: Any, nonlinearity: str | None = None) -> dict:
        k, cg, kh, kw = node.params["weight"]
        state = {
            "weight": init_weight(
                rng,
                node.params["weight"],
                cg * kh * kw,
                k * kh * kw // self.groups,
                nonlinearity,
                dtype,
            )
        }
        if "bias" in node.params:
            state["bias"] = zeros(node.params["bias"], dtype)
        return state

    def algo(self, node: Node, dtype: Any, options: Any) -> Any:
        """The kernel paths the cost rules pick for this node (ops.conv.choose)."""
        from cnncli.ops import conv

        h, w, c = node.in_shape
        g = conv.geometry((h, w), node.params["weight"], self.stride, self.pad,
                          self.dilation, self.groups)
        return conv.choose(g, c, self.filters, dtype, options)

    def forward(self, node: Node, x: Any, state: dict, ctx: Any, algo: Any = None
                ) -> tuple[Any, Any]:
        from cnncli.ops import conv

        act = active(self.cfg.get("activation"), node, ctx)
        fused = act[0] if act is not None and act[0] in conv.FUSED_ACTIVATIONS else None
        z, cache = conv.conv2d_forward(
            x,
            state["weight"],
            state.get("bias"),
            self.stride,
            self.pad,
            self.dilation,
            self.groups,
            act=fused,
            algo=algo,
            options=getattr(ctx, "options", None),
            shared=getattr(ctx, "shared", None),
        )
        if fused is not None:  # applied in the conv's output pass
            y, act_cache = z, ("fused", fused)
        else:
            y, act_cache = self.forward_post(node, z, ctx)
        # The engine's run context says, at backward time, whether this node's input
        # gradient is wanted (not for the network's first layer during training).
        return y, (cache, act_cache, ctx, y)

    def folded(self, node: Node, state: dict, bn: Node, bn_state: dict, algo: Any,
               shared: Any = None) -> tuple:
        """(W*s, beta + (b - mean)*s, s, 1/sqrt(var + eps)) of forward_folded, prepared once
        into ``shared`` (``("fold", id(w))``) while the weights stay the same."""
        import numpy as np

        w = state["weight"]

        def fold() -> tuple:
            inv = 1.0 / np.sqrt(bn_state["running_var"].astype(np.float64) + bn.layer.eps)
            s = bn_state["weight"].astype(np.float64) * inv
            shift = bn_state["bias"] - bn_state["running_mean"] * s
            if "bias" in state:
                shift = shift + state["bias"] * s
            crop = algo.crop  # fold only the live taps (a 3x3 conv on a 1x1 map: 1 of 9)
            live = w if crop is None else w[:, :, crop.u0:crop.u1, crop.v0:crop.v1]
            scaled = live * s.astype(w.dtype).reshape(-1, 1, 1, 1)
            return np.ascontiguousarray(scaled), shift.astype(w.dtype), s, inv

        return fold() if shared is None else shared.get(("fold", id(w)), fold)

    def forward_folded(self, node: Node, x: Any, state: dict, ctx: Any, bn: Node,
                       bn_state: dict, act: str | None, algo: Any = None) -> tuple[Any, Any]:
        """Evaluation: this conv and the batchnorm ``bn`` after it as one conv, weights
        w * s and bias beta + (b - mean) * s with s = gamma / sqrt(var + eps) per filter
        (the running statistics: constants at evaluation), ``act`` in the output pass."""
        from cnncli.ops import conv

        w = state["weight"]
        if algo is None:
            algo = self.algo(node, w.dtype, getattr(ctx, "options", None))
        crop = algo.crop
        shared = getattr(ctx, "shared", None)
        wf, bf, s, inv = self.folded(node, state, bn, bn_state, algo, shared)
        g = crop.geometry if crop is not None else None
        stride, pad, dil = ((g.stride, g.padding, g.dilation) if g is not None
                            else (self.stride, self.pad, self.dilation))
        y, cache = conv.conv2d_forward(x, wf, bf, stride, pad, dil, self.groups, act=act,
                                       algo=algo._replace(crop=None),
                                       options=getattr(ctx, "options", None), shared=shared)
        return y, (cache, s, inv, act, y, ctx, crop)

    def backward_folded(self, node: Node, dy: Any, cache: Any, state: dict, bn_state: dict,
                        grads: dict, bn_grads: dict) -> Any:
        """The gradients of forward_folded for both layers: with W' = W*s and b' = beta
        + (b - mean)*s, dW = dW'*s, db = db'*s, dbeta = db' and dgamma = inv * (sum
        dW' * W + db' * (b - mean))."""
        import numpy as np

        from cnncli.ops import conv

        op_cache, s, inv, act, y, ctx, crop = cache
        need_dx = getattr(ctx, "skip_input_grad", None) != node.path
        dx, dwf, dbf = conv.conv2d_backward(dy, op_cache, need_dx=need_dx,
                                            act=(act, y) if act else None,
                                            shared=getattr(ctx, "shared", None))
        w = state["weight"]
        dtype = w.dtype
        if crop is not None:  # the cut taps read only padding: no gradient
            dwf = conv.uncrop_grad(dwf, w.shape, crop)
        grads["weight"] = (dwf * s.reshape(-1, 1, 1, 1)).astype(dtype)
        b = state["bias"].astype(np.float64) if "bias" in state else 0.0
        if "bias" in state:
            grads["bias"] = (dbf * s).astype(dtype)
        ds = (dwf.astype(np.float64) * w).reshape(w.shape[0], -1).sum(axis=1) + dbf * (
            b - bn_state["running_mean"])
        bn_grads["weight"] = (ds * inv).astype(dtype)
        bn_grads["bias"] = dbf.astype(dtype)
        return dx

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """x (ConvCache) and y (the layer's cache, for a fused activation's derivative),
        plus the pre-activation copy an activation keeps when y does not tell its branch,
        and the kernel cut to its live taps (kept from the forward for the backward)."""
        from cnncli.ops.options import DEFAULT

        a = act_kept(self.cfg.get("activation"), node, node.out_shape, itemsize, logits)
        crop = self.algo(node, "float32", DEFAULT).crop
        fixed = 0
        if crop is not None:
            kh, kw = crop.geometry.kernel
            k, cg = node.params["weight"][:2]
            fixed = k * cg * kh * kw * itemsize
        return Kept(input=True, output=True, per_image=a.per_image, fixed=fixed)

    def workspaces(self, node: Node, algo: Any, batch: int, itemsize: int, options: Any, *,
                   need_dx: bool = True, logits: bool = False,
                   pooled: bool = False) -> dict[str, int]:
        """Workspace tag -> the most elements its training forward and backward on the
        paths ``algo`` ask for, for ``batch`` images in one part (ops.conv.conv_workspaces);
        ``pooled``: run with the max pooling after it (forward_pooled)."""
        from cnncli.ops import conv

        h, w, c = node.in_shape
        g = conv.geometry((h, w), node.params["weight"], self.stride, self.pad,
                          self.dilation, self.groups)
        act = self.cfg.get("activation")
        if logits and act is not None and act[0] == "softmax":
            act = None
        fused = act[0] if act is not None and act[0] in conv.FUSED_ACTIVATIONS else None
        return conv.conv_workspaces(g, batch, c, self.filters, algo, options, itemsize,
                                    act=fused, need_dx=need_dx, pooled=pooled)

    def kept_pooled(self, node: Node, pool: Node, itemsize: int) -> Kept:
        """forward_pooled: x, the pooled output and one uint8 winner per pooled value."""
        h, w, k = pool.out_shape
        return Kept(input=True, output=True, per_image=h * w * k)

    def fuses_pool(self, node: Node, pool: Node, dtype: Any, options: Any = None) -> bool:
        """Whether this conv, its ReLU and the ``pool`` node right after it can run as one
        op (ops.conv.conv2d_relu_maxpool2_*, a plan step pairs them): a 2x2 stride-2 max
        pooling after a conv that takes the float32 Winograd path with an even output."""
        from cnncli.ops import conv

        act, pl = self.cfg.get("activation"), pool.layer
        if act is None or act[0] != "relu" or act[1] or pool.type != "pool":
            return False
        if (pl.mode, pl.over, pl.size, pl.stride, pl.padding) != (
                "max", "space", (2, 2), (2, 2), (0, 0)):
            return False
        h, w, c = node.in_shape
        return conv.fuses_relu_maxpool2((c, h, w), node.params["weight"], self.stride,
                                        self.pad, self.dilation, self.groups, dtype, options)

    def forward_pooled(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        """Forward through this conv, its ReLU and the max pooling after it (fuses_pool).
        The winners are kept in evaluation too (a uint8 per output): a backward pass may
        follow there (saliency, Grad-CAM, gradcheck in eval mode), and without the
        full-size activation they could not be found again."""
        from cnncli.ops import conv

        y, cache = conv.conv2d_relu_maxpool2_forward(
            x, state["weight"], state.get("bias"), argmax=True,
            options=getattr(ctx, "options", None), shared=getattr(ctx, "shared", None))
        return y, _PooledCache(cache, ctx)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict, *,
                 param_grads: bool = True, need_dx: bool = True) -> Any:
        """``param_grads=False`` (frozen): only dx, the dW/db paths never run."""
        from cnncli.ops import conv

        if isinstance(cache, _PooledCache):  # dy is the pooled gradient (forward_pooled)
            need_dx = need_dx and getattr(cache.ctx, "skip_input_grad", None) != node.path
            dx, dw, db = conv.conv2d_relu_maxpool2_backward(
                dy, cache.op, need_dx=need_dx, shared=getattr(cache.ctx, "shared", None),
                need_dw=param_grads)
            _store(grads, dw, db)
            return dx
        conv_cache, act_cache, ctx, y = cache
        need_dx = need_dx and getattr(ctx, "skip_input_grad", None) != node.path
        shared = getattr(ctx, "shared", None)
        # a run that can take a cropped gradient (Model.backward puts it back) gets one
        crops = getattr(ctx, "grad_crops", None)
        crop = conv_cache.algo.crop if crops is not None and param_grads else None
        if act_cache[0] == "fused":
            dx, dw, db = conv.conv2d_backward(
                dy, conv_cache, need_dx=need_dx, act=(act_cache[1], y), shared=shared,
                need_dw=param_grads, uncrop=crop is None)
        else:
            dz = self.backward_pre(dy, act_cache)
            dx, dw, db = conv.conv2d_backward(dz, conv_cache, need_dx=need_dx, shared=shared,
                                              need_dw=param_grads, uncrop=crop is None)
        if crop is not None:
            crops[f"{node.path}.weight"] = (conv_cache.w.shape, crop)
        _store(grads, dw, db)
        return dx


def _store(grads: dict, dw: Any, db: Any) -> None:
    """A conv's weight and bias gradients into ``grads`` (none when it is frozen)."""
    if dw is not None:
        grads["weight"] = dw
    if db is not None:
        grads["bias"] = db


@register
class Deconv(_ConvBase):
    doc = "Transposed convolution (the adjoint of conv): upsamples by the stride."
    type = "deconv"
    params_spec = (
        Param("filters", pos_int, doc="number of output channels"),
        Param("kernel", pos_pair, doc="filter size F (or [Fh, Fw])"),
        Param("stride", pos_pair, 1, "upsampling factor S"),
        Param("padding", nonneg_pair, 0, "rows/columns cropped from each side of the output"),
        Param("output_padding", nonneg_pair, 0, "extra rows/columns kept at the bottom/right"),
        Param("dilation", pos_pair, 1, "spacing D between kernel taps"),
        Param("groups", pos_int, 1, "channel groups"),
        Param("bias", boolean, True, "add a learned bias per output channel"),
        Param("activation", activation_param, None, "activation applied to the output"),
    )

    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        h, w, c = spatial_input(self, in_shape)
        k, g = self.filters, self.groups
        self.check_groups(c)
        out, lines = [], []
        for i, (axis, size) in enumerate((("H", h), ("W", w))):
            f, s, p = self.kernel[i], self.stride[i], self.padding[i]
            op, d = self.output_padding[i], self.dilation[i]
            if op >= s and op >= d:
                raise self.error(
                    f"output_padding {op} must be smaller than the stride ({s}) "
                    f"or the dilation ({d})"
                )
            o = arith.deconv_output_size(size, f, s, p, op, d)
            if o <= 0:
                raise self.error(
                    f"output {axis} would be ({size}-1)*{s} - 2*{p} + {d}*({f}-1) + {op} + 1 = {o}"
                )
            out.append(o)
            lines.append(f"{axis}2 = ({size}-1)*{s} - 2*{p} + {d}*({f}-1) + {op} + 1 = {o}")
        lines = size_lines(lines)
        kh, kw = self.kernel
        kg = k // g
        params = {"weight": (c, kg, kh, kw)}
        nparams = kh * kw * kg * c
        pline = f"params = {kh}*{kw}*{c}*{kg}"
        if self.bias:
            params["bias"] = (k,)
            nparams += k
            pline += f" + {k}"
        lines.append(pline + f" = {nparams:,}")
        macs = h * w * c * kh * kw * kg
        lines.append(f"MACs = {h}*{w}*{c} inputs * {kh}*{kw}*{kg} = {macs:,}")
        return Node(
            self.path, self, in_shape, (out[0], out[1], k), params, macs=macs, explain=lines
        )

    def receptive(self, rf: RF | None) -> RF | None:
        if rf is None:
            return None
        # Each output sees ceil(F'/S) neighbouring inputs; outputs are S times denser.
        span = tuple(
            -(-arith.effective_kernel(k, d) // s)
            for k, d, s in zip(self.kernel, self.dilation, self.stride)
        )
        grown = rf.then(span, (1, 1))
        return RF(grown.size, (rf.jump[0] / self.stride[0], rf.jump[1] / self.stride[1]))

    def init(self, node: Node, rng: Any, dtype: Any, nonlinearity: str | None = None) -> dict:
        c, kg, kh, kw = node.params["weight"]
        fan_in = c // self.groups * kh * kw
        state = {
            "weight": init_weight(
                rng, node.params["weight"], fan_in, kg * kh * kw, nonlinearity, dtype
            )
        }
        if "bias" in node.params:
            state["bias"] = zeros(node.params["bias"], dtype)
        return state

    def forward(self, node: Node, x: Any, state: dict, ctx: Any) -> tuple[Any, Any]:
        from cnncli.ops import conv

        z, cache = conv.conv_transpose2d_forward(
            x,
            state["weight"],
            state.get("bias"),
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
            self.groups,
            options=getattr(ctx, "options", None),
        )
        y, act_cache = self.forward_post(node, z, ctx)
        return y, (cache, act_cache)

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """x (ConvTransposeCache) and what its activation keeps."""
        a = act_kept(self.cfg.get("activation"), node, node.out_shape, itemsize, logits)
        return Kept(input=True, output=a.output, per_image=a.per_image)

    def backward(self, node: Node, dy: Any, cache: Any, state: dict, grads: dict, *,
                 param_grads: bool = True, need_dx: bool = True) -> Any:
        from cnncli.ops import conv

        conv_cache, act_cache = cache
        dz = self.backward_pre(dy, act_cache)
        dx, dw, db = conv.conv_transpose2d_backward(dz, conv_cache, need_dx=need_dx,
                                                    need_dw=param_grads)
        _store(grads, dw, db)
        return dx
