"""Depthwise convs (groups == input channels; MobileNet's 3x3 layers): direct kernels
vectorised along W (``_depthwise_kernels``). A grouped GEMM would multiply 1 x 9 by 9 x P
matrices, one per channel: far below the machine's rate."""

from __future__ import annotations

import numpy as np

from cnncli.ops.conv.common import act_inplace
from cnncli.ops.conv.geometry import ConvGeometry
from cnncli.ops.options import EngineOptions


def _args(g: ConvGeometry, c: int, k: int):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    return k // c, kh, kw, sh, sw, ph, pw, dh, dw


def _plane(g: ConvGeometry, part: int, dtype) -> np.ndarray:
    from cnncli.ops import _threads

    (h, w), (ph, pw), sw = g.in_hw, g.padding, g.stride[1]
    e = (w + 2 * pw + sw - 1) // sw
    return _threads.workspace("dw.plane", part, (h + 2 * ph) * sw * e, dtype)


def forward(x, w, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    from cnncli.ops.conv import _depthwise_kernels as kern

    c, k = x.shape[1], w.shape[0]
    kern.depthwise_forward(x, w, bias, *_args(g, c, k), lo, hi - lo, _plane(g, part, x.dtype), y)
    act_inplace(y[lo:hi], act)


def input_grad(dz, w, g: ConvGeometry, dx, lo: int, hi: int, part: int,
               opts: EngineOptions) -> None:
    from cnncli.ops.conv import _depthwise_kernels as kern

    c, k = dx.shape[1], w.shape[0]
    kern.depthwise_input_grad(dz, w, *_args(g, c, k), lo, hi - lo, _plane(g, part, dz.dtype),
                              dx)


def weight_grad(x, dz, g: ConvGeometry, lo: int, hi: int, part: int,
                opts: EngineOptions) -> np.ndarray:
    from cnncli.ops.conv import _depthwise_kernels as kern

    c, k = x.shape[1], dz.shape[1]
    (kh, kw) = g.kernel
    acc = np.zeros((k, kh * kw), dtype=np.float64)
    kern.depthwise_weight_grad(x, dz, *_args(g, c, k), lo, hi - lo, _plane(g, part, x.dtype),
                               acc)
    return acc.astype(x.dtype)
