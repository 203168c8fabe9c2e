"""Depthwise convs (groups == input channels; MobileNet's 3x3 layers): direct kernels
vectorised along W (``_depthwise_kernels``). A grouped GEMM would multiply 1 x 9 by 9 x P
matrices, one per channel: far below the machine's rate."""

from __future__ import annotations

import numpy as np

from cnncli.ops.conv.common import act_inplace
from cnncli.ops.conv.geometry import ConvGeometry
from cnncli.ops.options import EngineOptions


def _args(g: ConvGeometry, c: int, k: int):
    """The kernels' geometry arguments, phase-plane sizes (Rq, E) included."""
    from cnncli.ops._plane_kernels import plane_dims

    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    rq, e = plane_dims(h, w, dh * (kh - 1) + 1, dw * (kw - 1) + 1, sh, sw, ph, pw, ho, wo)
    return k // c, kh, kw, sh, sw, ph, pw, dh, dw, rq, e


def _plane(g: ConvGeometry, part: int, dtype, args) -> np.ndarray:
    from cnncli.ops import _threads

    sh, sw, rq, e = args[3], args[4], args[9], args[10]
    return _threads.workspace("dw.plane", part, sh * sw * rq * e + e, dtype)


def forward(x, w, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    from cnncli.ops.conv import _depthwise_kernels as kern

    args = _args(g, x.shape[1], w.shape[0])
    kern.depthwise_forward(x, w, bias, *args, lo, hi - lo, _plane(g, part, x.dtype, args), y)
    act_inplace(y[lo:hi], act)


def input_grad(dz, w, g: ConvGeometry, dx, lo: int, hi: int, part: int,
               opts: EngineOptions) -> None:
    from cnncli.ops.conv import _depthwise_kernels as kern

    args = _args(g, dx.shape[1], w.shape[0])
    kern.depthwise_input_grad(dz, w, *args, lo, hi - lo, _plane(g, part, dz.dtype, args), dx)


def weight_grad(x, dz, g: ConvGeometry, lo: int, hi: int, part: int,
                opts: EngineOptions) -> np.ndarray:
    from cnncli.ops.conv import _depthwise_kernels as kern

    c, k = x.shape[1], dz.shape[1]
    (kh, kw) = g.kernel
    acc = np.zeros((k, kh * kw), dtype=np.float64)
    args = _args(g, c, k)
    kern.depthwise_weight_grad(x, dz, *args, lo, hi - lo, _plane(g, part, x.dtype, args), acc)
    return acc.astype(x.dtype)
