"""Small stride-1 convs (LeNet's C3): per-image im2col and one batched ``np.matmul``.

OpenBLAS multiplies such small matrices without packing, about twice as fast as one wide
GEMM over the chunk, and the product lands in NCHW directly.
"""

from __future__ import annotations

import numpy as np

from cnncli.ops.conv.common import act_inplace
from cnncli.ops.conv.geometry import ConvGeometry
from cnncli.ops.conv.im2col import chunk_images
from cnncli.ops.options import EngineOptions


def workspaces(g: ConvGeometry, n: int, m: int, c: int, k: int, itemsize: int,
               opts: EngineOptions, *, backward: bool = False,
               need_dw: bool = False) -> dict[str, int]:
    """Workspace tag -> elements that a part of ``m`` images (of ``n``) asks for: the
    per-image column matrices of a chunk and, for the weight gradient, their products."""
    r, p = c // g.groups * g.kernel[0] * g.kernel[1], g.out_hw[0] * g.out_hw[1]
    mb = min(chunk_images(n, r, p, itemsize, opts.chunk_bytes), m)
    sizes = {"conv.img": mb * r * p}
    if backward and need_dw:
        sizes["conv.dwt"] = mb * r * k
    return sizes


def forward(x, w, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    from cnncli.ops import _kernels as kern
    from cnncli.ops import _threads

    n = x.shape[0]
    k = w.shape[0]
    w2 = w.reshape(k, -1)
    (kh, kw), (ph, pw), (dh, dw) = g.kernel, g.padding, g.dilation
    ho, wo = g.out_hw
    r, p = w2.shape[1], ho * wo
    b2 = bias.reshape(k, 1) if bias.shape[0] == k else None
    nb = chunk_images(n, r, p, x.itemsize, opts.chunk_bytes)
    sizes = workspaces(g, n, hi - lo, x.shape[1], k, x.itemsize, opts)
    buf = _threads.workspace("conv.img", part, sizes["conv.img"], x.dtype)
    for n0 in range(lo, hi, nb):
        m = min(nb, hi - n0)
        cols = buf[: m * r * p].reshape(m, r, p)
        kern.im2col_img(x, n0, m, kh, kw, ph, pw, dh, dw, ho, wo, cols)
        yp = y[n0:n0 + m].reshape(m, k, p)
        np.matmul(w2, cols, out=yp)
        if b2 is not None:
            yp += b2
        act_inplace(yp, act)


def backward(x, dz, w, g: ConvGeometry, dx, lo: int, hi: int, part: int,
             opts: EngineOptions, *, need_dx: bool, need_dw: bool) -> np.ndarray | None:
    """Images lo..hi-1 of dz (a part-local array or the full one, indexed from ``lo``):
    dW^T = sum_n cols[n] @ dz[n]^T (one batched matmul, then a sum over the part's images
    in a fixed order) and dx = col2im(W^T @ dz[n])."""
    from cnncli.ops import _kernels as kern
    from cnncli.ops import _threads

    n, k = (x if x is not None else dx).shape[0], w.shape[0]
    (kh, kw), (ph, pw), (dh, dwl) = g.kernel, g.padding, g.dilation
    ho, wo = g.out_hw
    w2t = w.reshape(k, -1).T
    r, p = w2t.shape[0], ho * wo
    nb = chunk_images(n, r, p, dz.itemsize, opts.chunk_bytes)
    sizes = workspaces(g, n, hi - lo, w.shape[1] * g.groups, k, dz.itemsize, opts,
                       backward=True, need_dw=need_dw)
    buf = _threads.workspace("conv.img", part, sizes["conv.img"], dz.dtype)
    dwt_buf = (_threads.workspace("conv.dwt", part, sizes["conv.dwt"], dz.dtype) if need_dw
               else None)
    dwp = None
    for n0 in range(lo, hi, nb):
        m = min(nb, hi - n0)
        cols = buf[: m * r * p].reshape(m, r, p)
        dzp = dz[n0 - lo:n0 - lo + m].reshape(m, k, p)
        if need_dw:
            kern.im2col_img(x, n0, m, kh, kw, ph, pw, dh, dwl, ho, wo, cols)
            dwt = dwt_buf[: m * r * k].reshape(m, r, k)
            np.matmul(cols, dzp.transpose(0, 2, 1), out=dwt)
            if dwp is None:
                dwp = dwt.sum(axis=0)
            else:
                dwp += dwt.sum(axis=0)
        if need_dx:
            np.matmul(w2t, dzp, out=cols)
            kern.col2im_img(cols, n0, m, kh, kw, ph, pw, dh, dwl, ho, wo, dx)
    return dwp.T if need_dw else None
