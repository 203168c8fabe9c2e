"""conv2d + ReLU + 2x2 max pooling in one pass (a plan step pairs such layers).

Where the conv takes the Winograd path with an even output size, every 2x2 Winograd
output tile is exactly one pooling window: the pooling happens in the output transform
(kern.winograd_output_pool) and the full-size activation is never written. The backward
pass spreads the pooled gradient to the winners where the pooled value is positive
(kern.relu_maxpool2_backward), part by part, straight into the Winograd gradients.
Bit-identical to the three ops run one after the other.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnncli.errors import ShapeMismatchError
from cnncli.ops.conv.algo import ConvAlgo, choose
from cnncli.ops.conv.geometry import ConvCache, check_arrays, check_dy, geometry
from cnncli.ops.options import DEFAULT, EngineOptions


class ConvPoolCache(NamedTuple):
    """What conv2d_relu_maxpool2_backward needs: the conv's cache, the pooled output and
    each window's winner (0..3, row-major)."""

    conv: ConvCache
    y: np.ndarray
    idx: np.ndarray


_ALL_WINOGRAD = ConvAlgo("winograd", "winograd", "winograd")


def fuses_relu_maxpool2(in_chw: tuple[int, int, int], w_shape: tuple, stride, padding,
                        dilation, groups: int, dtype,
                        options: EngineOptions | None = None) -> bool:
    """Whether a conv with ReLU followed by a 2x2 stride-2 max pooling (no padding) can run
    as conv2d_relu_maxpool2_forward: the conv takes the Winograd path in all three
    directions and its output size is even."""
    opts = options if options is not None else DEFAULT
    c, h, wd = in_chw
    g = geometry((h, wd), tuple(w_shape), stride, padding, dilation, groups)
    algo = choose(g, c, int(w_shape[0]), np.dtype(dtype), opts)
    return (opts.fuse_relu_maxpool and algo == _ALL_WINOGRAD
            and g.out_hw[0] % 2 == 0 and g.out_hw[1] % 2 == 0)


def conv2d_relu_maxpool2_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *,
                                 argmax: bool = True, options: EngineOptions | None = None,
                                 shared=None) -> tuple[np.ndarray, ConvPoolCache]:
    """y [N, K, H/2, W/2] = maxpool2x2(ReLU(conv2d(x, w, stride 1, padding 1) + b)) where
    fuses_relu_maxpool2 holds: bit-identical to the three ops run one after the other,
    without writing or re-reading the full-size activation. ``argmax=False`` (inference)
    skips recording the winners; the backward pass then cannot run."""
    from cnncli.ops import _threads
    from cnncli.ops.conv import _prepared, wino_entry
    from cnncli.ops.conv.winograd import winograd_conv

    opts = options if options is not None else DEFAULT
    x, w = check_arrays(x, w, b, "conv2d_relu_maxpool2")
    n, c, h, wd = x.shape
    k = w.shape[0]
    if not fuses_relu_maxpool2((c, h, wd), w.shape, 1, 1, 1, 1, x.dtype, opts):
        raise ShapeMismatchError(
            f"conv2d_relu_maxpool2: x {x.shape}, w {w.shape} ({x.dtype}) is not a float32 "
            "3x3 stride-1 pad-1 conv on the Winograd path with an even size")
    if b is not None and b.shape != (k,):
        raise ShapeMismatchError(f"conv2d_relu_maxpool2: b must have shape ({k},); "
                                 f"got {b.shape}")
    g = geometry((h, wd), w.shape, 1, 1, 1, 1)
    y = np.empty((n, k, h // 2, wd // 2), dtype=x.dtype)
    idx = np.empty(y.shape if argmax else (0,), dtype=np.uint8)
    u = _prepared(shared, *wino_entry(w))
    bias = b if b is not None else np.empty(0, dtype=x.dtype)
    xf = x.reshape(-1)
    per = c * h * wd

    def wino(lo: int, hi: int, part: int) -> None:
        winograd_conv(xf[lo * per:], u, bias, True, y, lo, hi - lo, (per, h * wd, wd), part,
                      pool_idx=idx, chunk_bytes=opts.winograd_chunk_bytes)

    _threads.over_batch(wino, n, work=n * k * h * wd * c * 9)
    return y, ConvPoolCache(ConvCache(x, w, b is not None, g, _ALL_WINOGRAD, opts), y, idx)


def conv2d_relu_maxpool2_backward(dy: np.ndarray, cache: ConvPoolCache, *,
                                  need_dx: bool = True, shared=None, need_dw: bool = True
                                  ) -> tuple[np.ndarray | None, np.ndarray | None,
                                             np.ndarray | None]:
    """(dx, dw, db) for L = sum(y * dy), y from conv2d_relu_maxpool2_forward
    (``need_dw=False``: dw = db = None, only dx is computed)."""
    from cnncli.ops import _kernels as kern
    from cnncli.ops import _threads
    from cnncli.ops.conv import run_backward

    x, w, has_bias, g, algo, opts = cache.conv
    dy = check_dy(dy, cache.y.shape, x.dtype, "conv2d_relu_maxpool2_backward")
    if cache.idx.shape != cache.y.shape:
        raise ShapeMismatchError("conv2d_relu_maxpool2_backward: the forward pass ran with "
                                 "argmax=False (inference)")
    k, (ho, wo) = w.shape[0], g.out_hw

    def dz_of(lo: int, hi: int, part: int) -> np.ndarray:
        dz = _threads.workspace("wino.dz", part, (hi - lo) * k * ho * wo,
                                dy.dtype).reshape(hi - lo, k, ho, wo)
        kern.relu_maxpool2_backward(dy, cache.y, cache.idx, lo, hi - lo, dz)
        return dz

    return run_backward(x, w, g, algo, opts, dy, need_dx=need_dx, has_bias=has_bias,
                        dz_of=dz_of, shared=shared, need_dw=need_dw)
