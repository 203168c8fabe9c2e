"""Direct Numba kernels for stride-1 convs with few output channels (LeNet's C1) and, for
the weight gradient, also for filters with few taps (a 3x3 conv on RGB: 27): a GEMM with
so few rows, or so short a contraction, runs far below peak."""

from __future__ import annotations

import numpy as np

from cnncli.ops.conv.common import act_inplace
from cnncli.ops.conv.geometry import ConvGeometry
from cnncli.ops.options import EngineOptions

#: Images per call of the direct forward kernel (keeps its output cache-hot for the
#: fused activation).
_IMAGES = 8


def forward(x, w, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    from cnncli.ops import _kernels as kern

    k = w.shape[0]
    w2 = w.reshape(k, -1)
    (kh, kw), (ph, pw), (dh, dw) = g.kernel, g.padding, g.dilation
    ho, wo = g.out_hw
    for n0 in range(lo, hi, _IMAGES):
        n1 = min(hi, n0 + _IMAGES)
        kern.direct_conv_forward(x[n0:n1], w2, bias, kh, kw, ph, pw, dh, dw, ho, wo, y[n0:n1])
        act_inplace(y[n0:n1], act)


def weight_grad(x, dz, g: ConvGeometry, lo: int, hi: int, part: int,
                opts: EngineOptions) -> np.ndarray:
    """The part's dW [K, C*kh*kw] from x[lo:hi] and the part's dz."""
    from cnncli.ops import _kernels as kern

    c, k = x.shape[1], dz.shape[1]
    (kh, kw), (ph, pw), (dh, dwl) = g.kernel, g.padding, g.dilation
    dwpk = np.empty((-(-k // 4), c * kh * kw, 4), dtype=dz.dtype)
    kern.direct_conv_weight_grad(x[lo:hi], dz, kh, kw, ph, pw, dh, dwl, dwpk)
    return dwpk.transpose(0, 2, 1).reshape(-1, c * kh * kw)[:k]
