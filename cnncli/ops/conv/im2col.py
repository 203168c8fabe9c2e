"""The general path: im2col + one BLAS GEMM per group, chunk by chunk.

The column matrix holds one row per weight tap (c, u, v) and one column per output pixel
(n, i, j), so the forward pass is ``W[K, C*kh*kw] @ cols`` and the backward pass is the two
transposed products ``dW = dY @ cols.T`` and ``dcols = W.T @ dY`` followed by col2im (the
scatter-add that the lecture notes describe as convolving with the flipped filter).

The batch is processed in chunks whose column matrix fits in the L2 cache; the chunk's
columns are rebuilt in the backward pass instead of being stored (which would take
C*kh*kw times the memory of the input). Stride-1 layers use the "wide" layout: im2col on
a zero-padded copy with rows ``Wp`` wide, so every tap row is one contiguous copy (the
extra columns are computed and dropped). Every function here works on images lo..hi-1
with the workspaces of one part (the caller splits the batch over threads).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from cnncli.ops.conv.common import act_inplace
from cnncli.ops.conv.geometry import ConvGeometry
from cnncli.ops.options import EngineOptions


class Layout(NamedTuple):
    """How one chunk is laid out: ``wide`` (stride 1: contiguous im2col on a zero-padded
    copy, GEMM rows ``wr = Wp`` wide) or strided im2col (``wr = Wo``)."""

    wide: bool
    padded: bool
    nb: int
    wr: int
    rows: int  # C*kh*kw


#: The wide layout computes Wp - Wo extra columns per row: taken only where that costs at
#: most this share of the GEMM (small maps, ResNet's late stages, use strided im2col).
_WIDE_WASTE = 0.25
#: A chunk's GEMMs get at least this many columns where the part has the images: the
#: weight gradient's [rows, K] output is written once per chunk.
_MIN_COLUMNS = 256


def layout(g: ConvGeometry, n: int, c: int, itemsize: int, opts: EngineOptions) -> Layout:
    (kh, kw), (ph, pw) = g.kernel, g.padding
    wp = g.in_hw[1] + 2 * pw
    wide = g.stride == (1, 1) and wp <= (1 + _WIDE_WASTE) * g.out_hw[1]
    wr = wp if wide else g.out_hw[1]
    r = c * kh * kw
    return Layout(wide, wide and (ph > 0 or pw > 0),
                  chunk_images(n, r, g.out_hw[0] * wr, itemsize, opts.chunk_bytes), wr, r)


def chunk_images(n: int, rows: int, pixels: int, itemsize: int, target: int) -> int:
    """Images per chunk so that a [rows, images*pixels] matrix is about ``target`` bytes,
    but with at least _MIN_COLUMNS columns (pixels of all its images) where n allows."""
    per_image = max(1, rows * pixels * itemsize)
    nb = max(1, target // per_image, -(-_MIN_COLUMNS // max(1, pixels)))
    return int(min(n, nb))


def _sizes(lay: Layout, g: ConvGeometry, c: int, k: int, nb: int) -> dict[str, int]:
    """Elements of each workspace a part uses for chunks of ``nb`` images (forward and
    backward alike): the column matrix, the GEMM rows and, for the padded wide layout,
    the zero-padded copy of a chunk."""
    q = g.out_hw[0] * lay.wr
    sizes = {"conv.cols": lay.rows * nb * q, "conv.rows": k * nb * q}
    if lay.padded:
        (h, w), (ph, pw) = g.in_hw, g.padding
        sizes["conv.pad"] = nb * c * (h + 2 * ph) * (w + 2 * pw)
    return sizes


def workspaces(g: ConvGeometry, n: int, m: int, c: int, k: int, itemsize: int,
               opts: EngineOptions) -> dict[str, int]:
    """Workspace tag -> elements that a part of ``m`` images (of a batch of ``n``) asks for
    on this path, in either direction (the training-memory estimate reads this too)."""
    lay = layout(g, n, c, itemsize, opts)
    return _sizes(lay, g, c, k, min(lay.nb, m))


def _buffers(lay: Layout, g: ConvGeometry, c: int, k: int, nb: int, part: int, dtype):
    """(cols, rows, padded copy or None) workspaces of one part."""
    from cnncli.ops import _threads

    sizes = _sizes(lay, g, c, k, nb)
    pad = sizes.get("conv.pad")
    return (_threads.workspace("conv.cols", part, sizes["conv.cols"], dtype),
            _threads.workspace("conv.rows", part, sizes["conv.rows"], dtype),
            None if pad is None else _threads.workspace("conv.pad", part, pad, dtype))


#: Output maps of at most this many pixels (8x8) build their columns from a tap table:
#: 2-3x faster there (c256 on 2x2 maps: 0.30 -> 0.10 ms per part); even at 16x16
#: the loop kernels are as fast.
_TABLE_PIXELS = 64


@functools.lru_cache(maxsize=256)
def tap_table(g: ConvGeometry) -> np.ndarray:
    """[kh*kw, Ho*Wo] int64: the input pixel (i*W + j) that each tap of each output pixel
    reads, -1 where it reads padding (im2col_table / col2im_table)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    tab = np.full((kh * kw, ho * wo), -1, dtype=np.int64)
    for u in range(kh):
        for v in range(kw):
            for i in range(ho):
                ih = i * sh + u * dh - ph
                for j in range(wo):
                    iw = j * sw + v * dw - pw
                    if 0 <= ih < h and 0 <= iw < w:
                        tab[u * kw + v, i * wo + j] = ih * w + iw
    return tab


def _tabled(g: ConvGeometry, lay: Layout) -> bool:
    return not lay.wide and g.out_hw[0] * g.out_hw[1] <= _TABLE_PIXELS


def fill_cols(kern, x, n0, m, g: ConvGeometry, lay: Layout, cols, pad_buf) -> None:
    """cols <- im2col of images n0..n0+m-1 of x, in the layout ``lay``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    ho, wo = g.out_hw
    if _tabled(g, lay):
        kern.im2col_table(x, n0, m, tap_table(g), cols)
    elif not lay.wide:
        kern.im2col(x, n0, m, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
    elif lay.padded:
        c, (h, w) = x.shape[1], g.in_hw
        xp = pad_buf[: m * c * (h + 2 * ph) * (w + 2 * pw)].reshape(m, c, h + 2 * ph, -1)
        kern.pad_chunk(x, n0, m, ph, pw, xp)
        kern.im2col_wide(xp, 0, m, kh, kw, dh, dw, ho, cols)
    else:
        kern.im2col_wide(x, n0, m, kh, kw, dh, dw, ho, cols)


def scatter_cols(kern, cols, n0, m, g: ConvGeometry, lay: Layout, dx, pad_buf) -> None:
    """Images n0..n0+m-1 of dx <- col2im(cols) (the adjoint of fill_cols)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    ho, wo = g.out_hw
    if _tabled(g, lay):
        kern.col2im_table(cols, n0, m, tap_table(g), dx)
    elif not lay.wide:
        kern.col2im(cols, n0, m, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, dx)
    elif lay.padded:
        c, (h, w) = dx.shape[1], g.in_hw
        dxp = pad_buf[: m * c * (h + 2 * ph) * (w + 2 * pw)].reshape(m, c, h + 2 * ph, -1)
        kern.col2im_wide(cols, 0, m, kh, kw, dh, dw, ho, dxp)
        kern.crop_chunk(dxp, m, ph, pw, n0, dx)
    else:
        kern.col2im_wide(cols, n0, m, kh, kw, dh, dw, ho, dx)


def forward(x, w, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    """y[lo:hi] = act(conv2d(x[lo:hi], w) + b): im2col, GEMM, then one pass that adds the
    bias (ReLU fused) while laying the rows out as NCHW."""
    from cnncli.ops import _kernels as kern

    n, c = x.shape[:2]
    k = w.shape[0]
    groups = g.groups
    lay = layout(g, n, c, x.itemsize, opts)
    q = g.out_hw[0] * lay.wr
    w2 = w.reshape(k, -1)
    wg = w2.reshape(groups, k // groups, -1)
    nb = min(lay.nb, hi - lo)
    cols_buf, rows_buf, pad_buf = _buffers(lay, g, c, k, nb, part, x.dtype)
    for n0 in range(lo, hi, nb):
        m = min(nb, hi - n0)
        ln = m * q
        cols = cols_buf[: lay.rows * ln].reshape(lay.rows, ln)
        fill_cols(kern, x, n0, m, g, lay, cols, pad_buf)
        rows = rows_buf[: k * ln].reshape(k, ln)
        if groups == 1:
            np.matmul(w2, cols, out=rows)
        else:
            np.matmul(wg, cols.reshape(groups, -1, ln), out=rows.reshape(groups, -1, ln))
        kern.rows_to_nchw(rows, bias, act == "relu", n0, m, lay.wr, y)
        if act not in (None, "relu"):
            act_inplace(y[n0:n0 + m], act)


#: Codes of the activations that kern.nchw_to_rows_act differentiates.
ACT_CODES = {"relu": 1, "tanh": 2}


def backward(x, dy, w, g: ConvGeometry, dx, lo: int, hi: int, part: int,
             opts: EngineOptions, *, need_dx: bool, need_dw: bool,
             act_y: tuple | None = None, db: np.ndarray | None = None) -> np.ndarray | None:
    """Images lo..hi-1: dx[lo:hi] = col2im(W^T @ dY) (need_dx) and the part's dW [K,
    C/groups*kh*kw] = dY @ cols^T (need_dw, returned), sharing one layout pass of dY per
    chunk. ``dy`` holds the part's images only (index 0 is image lo); x and dx are whole.
    ``act_y=(name, y)`` (y also the part's only): dy is the gradient of y = act(z), and
    the derivative is applied in that layout pass (kern.nchw_to_rows_act), which also
    adds dz's channel sums to ``db`` (float64 [K]) when db has K entries."""
    from cnncli.ops import _kernels as kern

    n, k = x.shape[0] if x is not None else dx.shape[0], dy.shape[1]
    c = w.shape[1] * g.groups
    groups = g.groups
    lay = layout(g, n, c, dy.itemsize, opts)
    r, q = lay.rows, g.out_hw[0] * lay.wr
    kg, rg = k // groups, r // groups
    wg = w.reshape(groups, kg, rg)
    nb = min(lay.nb, hi - lo)
    cols_buf, rows_buf, pad_buf = _buffers(lay, g, c, k, nb, part, dy.dtype)
    dbv = db if db is not None else np.empty(0, dtype=np.float64)
    if need_dw:
        # dW = dY @ cols^T in its final [K, rows] layout (a transposed copy of a large
        # weight gradient costs more than the GEMM orientation saves)
        dwg = np.empty((groups, kg, rg), dtype=dy.dtype)
        dw_tmp = np.empty_like(dwg) if nb < hi - lo else None
    for n0 in range(lo, hi, nb):
        m = min(nb, hi - n0)
        ln = m * q
        dyt = rows_buf[: k * ln].reshape(k, ln)
        if act_y is None:
            kern.nchw_to_rows(dy, n0 - lo, m, lay.wr, dyt)
        else:
            kern.nchw_to_rows_act(dy, act_y[1], ACT_CODES[act_y[0]], n0 - lo, m, lay.wr, dyt,
                                  dbv)
        dyg = dyt.reshape(groups, kg, ln)
        cols = cols_buf[: r * ln].reshape(r, ln)
        if need_dw:
            fill_cols(kern, x, n0, m, g, lay, cols, pad_buf)
            np.matmul(dyg, cols.reshape(groups, rg, ln).transpose(0, 2, 1),
                      out=dwg if n0 == lo else dw_tmp)
            if n0 != lo:
                dwg += dw_tmp
        if need_dx:
            np.matmul(wg.transpose(0, 2, 1), dyg, out=cols.reshape(groups, rg, ln))
            scatter_cols(kern, cols, n0, m, g, lay, dx, pad_buf)
    return dwg.reshape(k, rg) if need_dw else None
