"""Which kernel path a convolution takes, per direction: the choice the plan makes once.

A conv has three products (forward, input gradient, weight gradient) and each may take
its own path:

=========  =================================================================================
dense      the kernel covers the whole input: one GEMM with the flattened images
pointwise  1x1 kernel (any stride): GEMMs on NCHW data, no im2col
depthwise  groups == input channels: direct kernels vectorised along W
direct     stride 1 and few output channels (or, for dW, few taps): direct loops
batched    small stride-1 layers: per-image im2col and one batched matmul
winograd   float32 3x3 stride-1 pad-1 with enough channels and tiles: F(2x2, 3x3)
im2col     everything else: chunked im2col + GEMM (groups as a batched GEMM)
=========  =================================================================================

``choose`` applies the cost rules below (measured on the networks the README names);
``candidates`` lists every path that can run a layer, for autotuning. Before any of this,
kernel taps that only ever read padding are cut away (``geometry.crop_taps``), so a 3x3
conv on a 1x1 map is planned as the 1x1 conv it is.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from cnncli.ops.conv.geometry import (
    ConvGeometry,
    TapCrop,
    crop_taps,
    is_dense,
    is_depthwise,
    is_pointwise,
)
from cnncli.ops.options import EngineOptions

PATHS = ("dense", "pointwise", "depthwise", "direct", "batched", "winograd", "im2col")


class ConvAlgo(NamedTuple):
    """The paths of one conv's forward pass, input gradient and weight gradient, and the
    tap crop they run on (None: the whole kernel)."""

    fwd: str
    dx: str
    dw: str
    crop: TapCrop | None = None

    def describe(self) -> str:
        """'winograd', or 'direct / im2col / direct' (forward / dx / dW) when they differ,
        plus the crop: 'pointwise (3x3 -> 1x1 taps)'."""
        paths = {self.fwd, self.dx, self.dw}
        text = self.fwd if len(paths) == 1 else f"{self.fwd} / {self.dx} / {self.dw}"
        if self.crop is not None:
            kh, kw = self.crop.geometry.kernel
            text += f" (live taps {kh}x{kw})"
        return text


def _winograd_shape(g: ConvGeometry) -> bool:
    return (g.kernel == (3, 3) and g.stride == (1, 1) and g.padding == (1, 1)
            and g.dilation == (1, 1) and g.groups == 1 and g.in_hw == g.out_hw)


def _tiles(g: ConvGeometry) -> int:
    return ((g.out_hw[0] + 1) // 2) * ((g.out_hw[1] + 1) // 2)


def supports(path: str, direction: str, g: ConvGeometry, c: int, k: int, dtype) -> bool:
    """Whether ``path`` can compute ``direction`` (fwd, dx or dw) of this conv at all."""
    s1g1 = g.stride == (1, 1) and g.groups == 1
    if path == "dense":
        return is_dense(g)
    if path == "pointwise":
        return is_pointwise(g) or is_dense(g)
    if path == "depthwise":
        return is_depthwise(g, c, k)
    if path == "direct":
        return s1g1 and direction in ("fwd", "dw")
    if path == "batched":
        return s1g1
    if path == "winograd":
        return _winograd_shape(g)
    return path == "im2col"


def choose(g: ConvGeometry, c: int, k: int, dtype, opts: EngineOptions) -> ConvAlgo:
    """The paths the cost rules pick for a conv of input channels c, output channels k."""
    crop = crop_taps(g) if opts.crop_taps else None
    eg = crop.geometry if crop is not None else g
    fwd, dx, dw = _rules(eg, c, k, np.dtype(dtype), opts)
    return ConvAlgo(fwd, dx, dw, crop)


def _rules(g: ConvGeometry, c: int, k: int, dtype, opts: EngineOptions) -> tuple[str, str, str]:
    if is_dense(g):
        return "dense", "dense", "dense"
    if is_pointwise(g):
        return "pointwise", "pointwise", "pointwise"
    if opts.depthwise and is_depthwise(g, c, k):
        return "depthwise", "depthwise", "depthwise"
    s1g1 = g.stride == (1, 1) and g.groups == 1
    (kh, kw), (ho, wo) = g.kernel, g.out_hw
    taps = c * kh * kw
    # batched before direct: where both apply (LeNet's C1) they run at the same speed, and
    # the batched kernels are the ones the next small conv (C3) compiles anyway: on an empty
    # Numba cache that is two kernels (about 1.4 s) fewer to compile before the first batch.
    if s1g1 and taps * ho * wo <= opts.batched_max_cols and k * taps <= opts.batched_max_cols:
        return "batched", "batched", "batched"
    if s1g1 and k <= opts.direct_max_channels:
        dw = "direct"
        dx = "winograd" if _winograd_ok(g, k, c, dtype, opts, opts.winograd_dx) else "im2col"
        return "direct", dx, dw
    dw_direct = s1g1 and taps <= opts.direct_max_taps
    fwd = "winograd" if _winograd_ok(g, c, k, dtype, opts, opts.winograd) else "im2col"
    dx = "winograd" if _winograd_ok(g, k, c, dtype, opts, opts.winograd_dx) else "im2col"
    if dw_direct:
        dw = "direct"
    else:
        dw = ("winograd" if _winograd_ok(g, c, k, dtype, opts, opts.winograd_dw)
              and _tiles(g) >= opts.winograd_dw_min_tiles else "im2col")
    return fwd, dx, dw


def _winograd_ok(g: ConvGeometry, c: int, k: int, dtype, opts: EngineOptions,
                 switch: bool) -> bool:
    return (switch and dtype == np.float32 and _winograd_shape(g)
            and min(c, k) >= opts.winograd_min_channels
            and _tiles(g) >= opts.winograd_min_tiles)


def candidates(g: ConvGeometry, c: int, k: int, dtype, opts: EngineOptions) -> list[ConvAlgo]:
    """Every combination of paths that can run this conv (the autotuner times them).
    Winograd stays float32-only and behind its switches."""
    crop = crop_taps(g) if opts.crop_taps else None
    eg = crop.geometry if crop is not None else g
    dtype = np.dtype(dtype)

    def ok(path: str, direction: str) -> bool:
        if not supports(path, direction, eg, c, k, dtype):
            return False
        if path == "winograd":
            switch = {"fwd": opts.winograd, "dx": opts.winograd_dx,
                      "dw": opts.winograd_dw}[direction]
            cc, kk = (k, c) if direction == "dx" else (c, k)
            return switch and dtype == np.float32 and min(cc, kk) >= opts.winograd_min_channels
        if path == "depthwise":
            return opts.depthwise
        return True

    per = {d: [p for p in PATHS if ok(p, d)] for d in ("fwd", "dx", "dw")}
    out = [ConvAlgo(f, x, w, crop) for f, x, w in itertools.product(per["fwd"], per["dx"],
                                                                  per["dw"])]
    best = choose(g, c, k, dtype, opts)
    out.sort(key=lambda a: a != best)  # the rules' choice first
    return out
