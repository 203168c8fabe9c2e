"""Depthwise convs (groups == input channels; MobileNet's 3x3 layers): direct kernels
(``_depthwise_kernels``). A grouped GEMM would multiply 1 x 9 by 9 x P matrices, one per
channel: far below the machine's rate. Maps at most _CL_MAX_WO wide run channel-last
(each image transposed, every pixel and tap one loop over the channels); wider ones on
phase planes (every tap one loop along the rows). Measured per layer of MobileNetV2 at
64x64: channel-last 2-14x faster on 8x8 to 2x2 maps, even at 16x16, 2.8x slower at 32x32
with 32 channels."""

from __future__ import annotations

import numpy as np

from cnncli.ops.conv.common import act_inplace
from cnncli.ops.conv.geometry import ConvGeometry
from cnncli.ops.options import EngineOptions
from cnncli.ops.planes import plane_dims, plane_elements

#: Output maps at most this wide take the channel-last kernels.
_CL_MAX_WO = 8


def _cl_args(g: ConvGeometry, c: int, k: int):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    return k // c, kh, kw, sh, sw, ph, pw, dh, dw


def workspaces(g: ConvGeometry, c: int, k: int) -> dict[str, int]:
    """Workspace tag -> elements a part asks for, in every direction: the channel-last
    copies of one image's input and output (narrow maps), else the phase planes."""
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    if wo <= _CL_MAX_WO:
        return {"dw.in": h * w * c, "dw.out": ho * wo * k}
    sh, sw, rq, e = _plane_args(g)
    return {"dw.plane": plane_elements(sh, sw, rq, e)}


def _plane_args(g: ConvGeometry) -> tuple[int, int, int, int]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    rq, e = plane_dims(h, w, dh * (kh - 1) + 1, dw * (kw - 1) + 1, sh, sw, ph, pw, ho, wo)
    return sh, sw, rq, e


def _scratch(g: ConvGeometry, part: int, dtype, c: int, k: int):
    """The channel-last copies of one image's input and output."""
    from cnncli.ops import _threads

    sizes = workspaces(g, c, k)
    return (_threads.workspace("dw.in", part, sizes["dw.in"], dtype),
            _threads.workspace("dw.out", part, sizes["dw.out"], dtype))


def _taps_major(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def _args(g: ConvGeometry, c: int, k: int):
    """The kernels' geometry arguments, phase-plane sizes (Rq, E) included."""
    (kh, kw), (ph, pw), (dh, dw) = g.kernel, g.padding, g.dilation
    sh, sw, rq, e = _plane_args(g)
    return k // c, kh, kw, sh, sw, ph, pw, dh, dw, rq, e


def _plane(g: ConvGeometry, part: int, dtype, args) -> np.ndarray:
    from cnncli.ops import _threads

    sh, sw, rq, e = args[3], args[4], args[9], args[10]
    return _threads.workspace("dw.plane", part, plane_elements(sh, sw, rq, e), dtype)


def forward(x, w, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    from cnncli.ops.conv import _depthwise_kernels as kern

    c, k = x.shape[1], w.shape[0]
    if g.out_hw[1] <= _CL_MAX_WO:
        xt, yt = _scratch(g, part, x.dtype, c, k)
        kern.depthwise_forward_cl(x, _taps_major(w), bias, *_cl_args(g, c, k), lo, hi - lo,
                                  xt, yt, y)
    else:
        args = _args(g, c, k)
        kern.depthwise_forward(x, w, bias, *args, lo, hi - lo, _plane(g, part, x.dtype, args),
                               y)
    act_inplace(y[lo:hi], act)


def input_grad(dz, w, g: ConvGeometry, dx, lo: int, hi: int, part: int,
               opts: EngineOptions) -> None:
    from cnncli.ops.conv import _depthwise_kernels as kern

    c, k = dx.shape[1], w.shape[0]
    if g.out_hw[1] <= _CL_MAX_WO:
        dt, gt = _scratch(g, part, dz.dtype, c, k)
        kern.depthwise_input_grad_cl(dz, _taps_major(w), *_cl_args(g, c, k), lo, hi - lo, gt,
                                     dt, dx)
        return
    args = _args(g, c, k)
    kern.depthwise_input_grad(dz, w, *args, lo, hi - lo, _plane(g, part, dz.dtype, args), dx)


def weight_grad(x, dz, g: ConvGeometry, lo: int, hi: int, part: int,
                opts: EngineOptions) -> np.ndarray:
    from cnncli.ops.conv import _depthwise_kernels as kern

    c, k = x.shape[1], dz.shape[1]
    (kh, kw) = g.kernel
    if g.out_hw[1] <= _CL_MAX_WO:
        xt, gt = _scratch(g, part, x.dtype, c, k)
        acc = np.empty((kh * kw, k), dtype=x.dtype)
        acc64 = np.zeros((kh * kw, k), dtype=np.float64)
        kern.depthwise_weight_grad_cl(x, dz, *_cl_args(g, c, k), lo, hi - lo, xt, gt, acc,
                                      acc64)
        return np.ascontiguousarray(acc64.T).astype(x.dtype)
    acc = np.zeros((k, kh * kw), dtype=np.float64)
    args = _args(g, c, k)
    kern.depthwise_weight_grad(x, dz, *args, lo, hi - lo, _plane(g, part, x.dtype, args), acc)
    return acc.astype(x.dtype)
