"""Numba kernels behind the fast ops (imported lazily by the functions that need them).

Every kernel is a plain loop nest over contiguous NCHW arrays, compiled once per dtype and
cached on disk (``cache=True``), and releases the GIL (``nogil``).

* Arrays are indexed through flat 1-D views with ``uint64`` indices. Numba has to allow
  negative (wrap-around) indices for signed ones, which makes the address non-affine, and
  LLVM then emits AVX-512 gathers and scatters that run far slower than plain loads.
* The kernels are serial on purpose. They run between OpenBLAS GEMMs, whose worker
  threads keep spinning for a while after each call; Numba's ``parallel=True`` (OpenMP
  layer) then fights them for the cores, and a conv+pool step measured ~20x slower than
  with serial kernels on a 2-core machine. The GEMMs use both cores.
* Comparisons that must not branch (max pooling) use ``|`` instead of ``or``, so that
  LLVM can turn them into selects.

Geometry arguments follow conv/pool: ``sh, sw`` stride, ``ph, pw`` padding (zeros for conv,
excluded for pooling), ``dh, dw`` dilation, ``Ho, Wo`` output size.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba import uint64 as _u

from cnncli.ops._plane_kernels import plane_fill, plane_set, tap_offset, wide_to_rows

_OPTS = {"cache": True, "nogil": True}


@njit(inline="always")
def _col_range(v, dw, pw, sw, W, Wo):
    """For kernel column v: offset ``off`` into the input row and the output columns
    ``[j0, j1)`` whose tap ``j*sw + off`` lies inside ``[0, W)``."""
    off = v * dw - pw
    j0 = 0
    if off < 0:
        j0 = min(Wo, (-off + sw - 1) // sw)
    lim = W - 1 - off
    j1 = min(Wo, lim // sw + 1) if lim >= 0 else 0
    if j0 > j1:
        j0 = j1
    return off, j0, j1


# ---------------------------------------------------------------------------------------
# im2col / col2im. Column matrix layout: cols[(c*kh + u)*kw + v, n*Ho*Wo + i*Wo + j],
# i.e. [C*kh*kw, nb*Ho*Wo] for a chunk of nb images starting at image n0.
# ---------------------------------------------------------------------------------------


@njit(**_OPTS)
def im2col(x, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, cols):
    """cols <- the column matrix of images n0..n0+nb-1 (taps outer, images inner: each
    tap's row of cols is written in order, and no index is divided per element)."""
    N, C, H, W = x.shape
    P = Ho * Wo
    L = nb * P
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    for c in range(C):
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                off, j0, j1 = _col_range(v, dw, pw, sw, W, Wo)
                for n in range(nb):
                    xbase = ((n0 + n) * C + c) * H * W
                    for i in range(Ho):
                        ih = i * sh + u * dh - ph
                        d = r * L + n * P + i * Wo
                        if ih < 0 or ih >= H:
                            for j in range(Wo):
                                cf[_u(d + j)] = 0
                            continue
                        for j in range(j0):
                            cf[_u(d + j)] = 0
                        s0 = xbase + ih * W + off
                        if sw == 1:
                            for j in range(j0, j1):
                                cf[_u(d + j)] = xf[_u(s0 + j)]
                        else:
                            for j in range(j0, j1):
                                cf[_u(d + j)] = xf[_u(s0 + j * sw)]
                        for j in range(j1, Wo):
                            cf[_u(d + j)] = 0


@njit(**_OPTS)
def col2im(cols, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, dx):
    """Adjoint of im2col: overwrite images n0..n0+nb-1 of dx with the scattered sums."""
    N, C, H, W = dx.shape
    P = Ho * Wo
    L = nb * P
    dxf = dx.reshape(-1)
    cf = cols.reshape(-1)
    for t in range(nb * C):
        n = t // C
        c = t - n * C
        xbase = ((n0 + n) * C + c) * H * W
        for q in range(H * W):
            dxf[_u(xbase + q)] = 0
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                off, j0, j1 = _col_range(v, dw, pw, sw, W, Wo)
                for i in range(Ho):
                    ih = i * sh + u * dh - ph
                    if ih < 0 or ih >= H:
                        continue
                    d = r * L + n * P + i * Wo
                    s0 = xbase + ih * W + off
                    if sw == 1:
                        for j in range(j0, j1):
                            dxf[_u(s0 + j)] += cf[_u(d + j)]
                    else:
                        for j in range(j0, j1):
                            dxf[_u(s0 + j * sw)] += cf[_u(d + j)]


@njit(**_OPTS)
def im2col_table(x, n0, nb, tab, cols):
    """im2col for small output maps, from ``tab[tap, p]``: the input pixel (i*W + j) that
    tap ``tap`` of output pixel p reads, or -1 for padding. With 2x2 or 4x4 outputs the
    loops of ``im2col`` run two to four iterations each, and their set-up was the cost."""
    N, C, H, W = x.shape
    T, P = tab.shape
    L = nb * P
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    zero = np.zeros(1, dtype=cols.dtype)[0]
    for c in range(C):
        for t in range(T):
            d0 = (c * T + t) * L
            for n in range(nb):
                xb = ((n0 + n) * C + c) * H * W
                d = d0 + n * P
                for p in range(P):
                    q = tab[t, p]
                    cf[_u(d + p)] = xf[_u(xb + q)] if q >= 0 else zero


@njit(**_OPTS)
def col2im_table(cols, n0, nb, tab, dx):
    """Adjoint of im2col_table: overwrite images n0..n0+nb-1 of dx with the scattered sums."""
    N, C, H, W = dx.shape
    T, P = tab.shape
    L = nb * P
    dxf = dx.reshape(-1)
    cf = cols.reshape(-1)
    for n in range(nb):
        for c in range(C):
            xb = ((n0 + n) * C + c) * H * W
            for q in range(H * W):
                dxf[_u(xb + q)] = 0
            for t in range(T):
                d = (c * T + t) * L + n * P
                for p in range(P):
                    q = tab[t, p]
                    if q >= 0:
                        dxf[_u(xb + q)] += cf[_u(d + p)]


@njit(**_OPTS)
def rows_to_nchw(rows, b, relu, n0, nb, wr, y):
    """y[n0+n, k, i, j] = rows[k, (n*Ho + i)*wr + j] (+ b[k] when b has K entries) for
    j < Wo: the GEMM output back to NCHW, dropping the ``wr - Wo`` wide columns. With
    ``relu`` negative values become 0 (NaN passes, as in np.maximum)."""
    N, K, Ho, Wo = y.shape
    L = nb * Ho * wr
    rf = rows.reshape(-1)
    yf = y.reshape(-1)
    has_b = b.shape[0] == K
    for t in range(nb * K):
        n = t // K
        k = t - n * K
        bk = b[k] if has_b else 0
        for i in range(Ho):
            src = k * L + (n * Ho + i) * wr
            dst = (((n0 + n) * K + k) * Ho + i) * Wo
            if relu:
                for j in range(Wo):
                    v = rf[_u(src + j)] + bk
                    yf[_u(dst + j)] = 0 if v < 0 else v
            else:
                for j in range(Wo):
                    yf[_u(dst + j)] = rf[_u(src + j)] + bk


@njit(**_OPTS)
def nchw_to_rows(y, n0, nb, wr, rows):
    """The inverse of rows_to_nchw; the wide columns j >= Wo are set to zero."""
    N, K, Ho, Wo = y.shape
    L = nb * Ho * wr
    rf = rows.reshape(-1)
    yf = y.reshape(-1)
    for t in range(nb * K):
        n = t // K
        k = t - n * K
        for i in range(Ho):
            dst = k * L + (n * Ho + i) * wr
            src = (((n0 + n) * K + k) * Ho + i) * Wo
            for j in range(Wo):
                rf[_u(dst + j)] = yf[_u(src + j)]
            for j in range(Wo, wr):
                rf[_u(dst + j)] = 0


@njit(fastmath={"reassoc"}, **_OPTS)
def nchw_to_rows_act(dy, y, act, n0, nb, wr, rows, db):
    """nchw_to_rows of the pre-activation gradient dz = dy * act'(y) (act 1: ReLU,
    dz = dy where y > 0; 2: tanh, dz = dy * (1 - y^2)) in one pass, instead of an
    activation-derivative pass over dy and then a copy. When db has K entries (float64)
    it accumulates dz summed over each channel, in row order."""
    N, K, Ho, Wo = dy.shape
    L = nb * Ho * wr
    rf = rows.reshape(-1)
    df = dy.reshape(-1)
    yf = y.reshape(-1)
    has_b = db.shape[0] == K
    for t in range(nb * K):
        n = t // K
        k = t - n * K
        s = 0.0
        for i in range(Ho):
            dst = k * L + (n * Ho + i) * wr
            src = (((n0 + n) * K + k) * Ho + i) * Wo
            if act == 1:
                for j in range(Wo):
                    g = df[_u(src + j)] if yf[_u(src + j)] > 0 else 0
                    rf[_u(dst + j)] = g
                    s += g
            else:
                for j in range(Wo):
                    yv = yf[_u(src + j)]
                    g = df[_u(src + j)] * (1 - yv * yv)
                    rf[_u(dst + j)] = g
                    s += g
            for j in range(Wo, wr):
                rf[_u(dst + j)] = 0
        if has_b:
            db[k] += s


# ---------------------------------------------------------------------------------------
# "Wide" im2col for stride 1. On a zero-padded input of width Wp, output pixel (i, j) and
# tap (u, v) read xp[i + u*dh, j + v*dw]; flattening (i, j) over the full padded width
# (j < Wp instead of j < Wo) turns each column-matrix row into ONE contiguous copy of
# Ho*Wp values starting at offset u*dh*Wp + v*dw. The extra Wp - Wo "wide" columns are
# garbage that the GEMM carries along and rows_to_nchw drops; in the backward pass they
# are zero in dY, so they add nothing to dW or dx.
# ---------------------------------------------------------------------------------------


@njit(**_OPTS)
def pad_chunk(x, n0, nb, ph, pw, xp):
    """xp[n] = x[n0 + n] with ph/pw zero rows/columns on each side, n < nb."""
    N, C, H, W = x.shape
    Hp, Wp = xp.shape[2], xp.shape[3]
    xf = x.reshape(-1)
    pf = xp.reshape(-1)
    for t in range(nb * C):
        src = (n0 * C + t) * H * W
        dst = t * Hp * Wp
        for q in range(ph * Wp):
            pf[_u(dst + q)] = 0
        for h in range(H):
            row = dst + (h + ph) * Wp
            for q in range(pw):
                pf[_u(row + q)] = 0
            for q in range(W):
                pf[_u(row + pw + q)] = xf[_u(src + h * W + q)]
            for q in range(pw + W, Wp):
                pf[_u(row + q)] = 0
        for q in range((ph + H) * Wp, Hp * Wp):
            pf[_u(dst + q)] = 0


@njit(**_OPTS)
def crop_chunk(dxp, nb, ph, pw, n0, dx):
    """dx[n0 + n] = dxp[n, :, ph:ph+H, pw:pw+W], n < nb: the inverse of pad_chunk."""
    N, C, H, W = dx.shape
    Hp, Wp = dxp.shape[2], dxp.shape[3]
    df = dx.reshape(-1)
    pf = dxp.reshape(-1)
    for t in range(nb * C):
        dst = (n0 * C + t) * H * W
        src = t * Hp * Wp + ph * Wp + pw
        for h in range(H):
            for q in range(W):
                df[_u(dst + h * W + q)] = pf[_u(src + h * Wp + q)]


@njit(**_OPTS)
def im2col_wide(xp, n0, nb, kh, kw, dh, dw, Ho, cols):
    """cols[(c*kh + u)*kw + v, n*Ho*Wp + q] = xp_flat[n0 + n, c, u*dh*Wp + v*dw + q]."""
    N, C, Hp, Wp = xp.shape
    Q = Ho * Wp
    L = nb * Q
    plane = Hp * Wp
    xf = xp.reshape(-1)
    cf = cols.reshape(-1)
    for c in range(C):
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                off = u * dh * Wp + v * dw
                ln = min(Q, plane - off)  # the last wide columns would run off the plane
                for n in range(nb):
                    s0 = ((n0 + n) * C + c) * plane + off
                    d = r * L + n * Q
                    for q in range(ln):
                        cf[_u(d + q)] = xf[_u(s0 + q)]
                    for q in range(ln, Q):
                        cf[_u(d + q)] = 0


@njit(**_OPTS)
def col2im_wide(cols, n0, nb, kh, kw, dh, dw, Ho, dxp):
    """Adjoint of im2col_wide: overwrite images n0..n0+nb-1 of dxp with the sums."""
    N, C, Hp, Wp = dxp.shape
    Q = Ho * Wp
    L = nb * Q
    plane = Hp * Wp
    df = dxp.reshape(-1)
    cf = cols.reshape(-1)
    for t in range(nb * C):
        n = t // C
        c = t - n * C
        base = ((n0 + n) * C + c) * plane
        for q in range(plane):
            df[_u(base + q)] = 0
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                off = u * dh * Wp + v * dw
                ln = min(Q, plane - off)
                s0 = r * L + n * Q
                d = base + off
                for q in range(ln):
                    df[_u(d + q)] += cf[_u(s0 + q)]


# ---------------------------------------------------------------------------------------
# Per-image im2col for stride 1: cols[n, (c*kh + u)*kw + v, i*Wo + j] (one [R, Ho*Wo]
# matrix per image). Small layers (LeNet's C3: R = 150, Ho*Wo = 100) then run ONE batched
# np.matmul per part, W[K, R] @ cols[n] -> y[n] already in NCHW: OpenBLAS's small-matrix
# kernels (no packing) run these at about twice the rate of one wide GEMM, and no wide
# columns or rows_to_nchw/nchw_to_rows copies are needed.
# ---------------------------------------------------------------------------------------


@njit(**_OPTS)
def im2col_img(x, n0, nb, kh, kw, ph, pw, dh, dw, Ho, Wo, cols):
    """cols[n, (c*kh + u)*kw + v, i*Wo + j] = xpad[n0 + n, c, i + u*dh, j + v*dw], n < nb."""
    N, C, H, W = x.shape
    R = C * kh * kw
    P = Ho * Wo
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    if ph == 0 and pw == 0:  # no bounds to check: plain row copies (a third faster)
        for n in range(nb):
            for c in range(C):
                xb = ((n0 + n) * C + c) * H * W
                for u in range(kh):
                    for v in range(kw):
                        d0 = (n * R + (c * kh + u) * kw + v) * P
                        s0 = xb + u * dh * W + v * dw
                        for i in range(Ho):
                            for j in range(Wo):
                                cf[_u(d0 + i * Wo + j)] = xf[_u(s0 + i * W + j)]
        return
    for n in range(nb):
        for c in range(C):
            xb = ((n0 + n) * C + c) * H * W
            for u in range(kh):
                for v in range(kw):
                    off, j0, j1 = _col_range(v, dw, pw, 1, W, Wo)
                    d0 = (n * R + (c * kh + u) * kw + v) * P
                    for i in range(Ho):
                        ih = i + u * dh - ph
                        d = d0 + i * Wo
                        if ih < 0 or ih >= H:
                            for j in range(Wo):
                                cf[_u(d + j)] = 0
                        else:
                            for j in range(j0):
                                cf[_u(d + j)] = 0
                            s0 = xb + ih * W + off
                            for j in range(j0, j1):
                                cf[_u(d + j)] = xf[_u(s0 + j)]
                            for j in range(j1, Wo):
                                cf[_u(d + j)] = 0


@njit(**_OPTS)
def col2im_img(cols, n0, nb, kh, kw, ph, pw, dh, dw, Ho, Wo, dx):
    """Adjoint of im2col_img: overwrite images n0..n0+nb-1 of dx with the scattered sums."""
    N, C, H, W = dx.shape
    R = C * kh * kw
    P = Ho * Wo
    df = dx.reshape(-1)
    cf = cols.reshape(-1)
    for n in range(nb):
        for c in range(C):
            xb = ((n0 + n) * C + c) * H * W
            for q in range(H * W):
                df[_u(xb + q)] = 0
            if ph == 0 and pw == 0:
                for u in range(kh):
                    for v in range(kw):
                        d0 = (n * R + (c * kh + u) * kw + v) * P
                        s0 = xb + u * dh * W + v * dw
                        for i in range(Ho):
                            for j in range(Wo):
                                df[_u(s0 + i * W + j)] += cf[_u(d0 + i * Wo + j)]
                continue
            for u in range(kh):
                for v in range(kw):
                    off, j0, j1 = _col_range(v, dw, pw, 1, W, Wo)
                    d0 = (n * R + (c * kh + u) * kw + v) * P
                    for i in range(Ho):
                        ih = i + u * dh - ph
                        if ih < 0 or ih >= H:
                            continue
                        d = d0 + i * Wo
                        s0 = xb + ih * W + off
                        for j in range(j0, j1):
                            df[_u(s0 + j)] += cf[_u(d + j)]


# ---------------------------------------------------------------------------------------
# Direct convolution (stride 1, no groups) for layers with few output channels, where a
# GEMM with M = K rows runs far below peak (LeNet's first layer: K = 6). Same wide layout
# as above. The weight gradient computes four output channels per pass over the image,
# with weights packed as wpk[kb, r, e] = w[4*kb + e, r] (zero beyond K).
# ---------------------------------------------------------------------------------------


@njit(inline="always")
def _pad_image(xf, base, C, H, W, ph, pw, pf):
    """pf[c, ph:ph+H, pw:pw+W] = x image at flat offset base; zeros elsewhere."""
    Hp, Wp = H + 2 * ph, W + 2 * pw
    for q in range(C * Hp * Wp):
        pf[_u(q)] = 0
    for c in range(C):
        for h in range(H):
            src = base + (c * H + h) * W
            dst = (c * Hp + h + ph) * Wp + pw
            for q in range(W):
                pf[_u(dst + q)] = xf[_u(src + q)]


@njit(fastmath={"contract"}, **_OPTS)
def direct_conv_forward(x, w2, b, kh, kw, ph, pw, dh, dw, Ho, Wo, y):
    """y = conv2d(x, w) + b at stride 1, one image and output channel at a time: each tap
    adds a scaled contiguous run of the zero-padded image to a wide accumulator row."""
    N, C, H, W = x.shape
    K, R = w2.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    plane = Hp * Wp
    Q = Ho * Wp
    acc = np.empty(Q, dtype=y.dtype)
    xp = np.empty(C * plane, dtype=x.dtype)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    wf = w2.reshape(-1)
    has_b = b.shape[0] == K
    for n in range(N):
        _pad_image(xf, n * C * H * W, C, H, W, ph, pw, xp)
        for k in range(K):
            for t in range(Q):
                acc[_u(t)] = 0
            for r in range(R):
                c = r // (kh * kw)
                u = (r // kw) % kh
                v = r % kw
                wt = wf[_u(k * R + r)]
                rel = u * dh * Wp + v * dw
                off = c * plane + rel
                for t in range(min(Q, plane - rel)):
                    acc[_u(t)] += wt * xp[_u(off + t)]
            bk = b[k] if has_b else 0
            for i in range(Ho):
                dst = ((n * K + k) * Ho + i) * Wo
                for j in range(Wo):
                    yf[_u(dst + j)] = acc[_u(i * Wp + j)] + bk


@njit(fastmath={"reassoc", "contract"}, **_OPTS)
def direct_conv_weight_grad(x, dy, kh, kw, ph, pw, dh, dw, dwpk):
    """dwpk[kb, r, e] = sum over n, i, j of dy[n, 4*kb + e, i, j] * xpad[n, c, i + u*dh, j + v*dw]
    (stride 1), as dot products over the wide rows of one image at a time."""
    N, C, H, W = x.shape
    K, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    Kb, R = dwpk.shape[0], dwpk.shape[1]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    plane = Hp * Wp
    Q = Ho * Wp
    xp = np.empty(C * plane, dtype=x.dtype)
    dyw = np.zeros(4 * Kb * Q, dtype=dy.dtype)  # wide columns and channels >= K stay 0
    zero = np.zeros(1, dtype=dwpk.dtype)
    xf = x.reshape(-1)
    df = dy.reshape(-1)
    gf = dwpk.reshape(-1)
    for q in range(gf.size):
        gf[_u(q)] = 0
    for n in range(N):
        _pad_image(xf, n * C * H * W, C, H, W, ph, pw, xp)
        for k in range(K):
            for i in range(Ho):
                src = ((n * K + k) * Ho + i) * Wo
                dst = k * Q + i * Wp
                for j in range(Wo):
                    dyw[_u(dst + j)] = df[_u(src + j)]
        for kb in range(Kb):
            d0 = 4 * kb * Q
            for r in range(R):
                c = r // (kh * kw)
                u = (r // kw) % kh
                v = r % kw
                rel = u * dh * Wp + v * dw
                off = c * plane + rel
                s0 = s1 = s2 = s3 = zero[0]
                for q in range(min(Q, plane - rel)):
                    xv = xp[_u(off + q)]
                    s0 += dyw[_u(d0 + q)] * xv
                    s1 += dyw[_u(d0 + Q + q)] * xv
                    s2 += dyw[_u(d0 + 2 * Q + q)] * xv
                    s3 += dyw[_u(d0 + 3 * Q + q)] * xv
                gb = (kb * R + r) * 4
                gf[_u(gb)] += s0
                gf[_u(gb + 1)] += s1
                gf[_u(gb + 2)] += s2
                gf[_u(gb + 3)] += s3


# ---------------------------------------------------------------------------------------
# 2-D pooling. Windows are clipped to the input; see pool.py for the semantics.
# ---------------------------------------------------------------------------------------


@njit(inline="always")
def _window(i, s, p, k, size):
    """Unclipped start, end clipped to the padded input (for avg divisors), and the
    window clipped to [0, size)."""
    start = i * s - p
    end_pad = min(start + k, size + p)
    lo = max(start, 0)
    hi = min(start + k, size)
    return start, end_pad, lo, hi


@njit(**_OPTS)
def maxpool2d_forward(x, kh, kw, sh, sw, ph, pw, Ho, Wo, y, argmax):
    """First maximum in row-major window order wins (strict ``>``); NaN propagates as in
    PyTorch. ``argmax`` holds h*W + w within the unpadded plane."""
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    af = argmax.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        yb = t * Ho * Wo
        for i in range(Ho):
            _, _, h0, h1 = _window(i, sh, ph, kh, H)
            for j in range(Wo):
                _, _, w0, w1 = _window(j, sw, pw, kw, W)
                best = -np.inf
                bi = h0 * W + w0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        val = xf[_u(xb + h * W + w)]
                        if (val > best) | (val != val):  # bitwise: no branch
                            best = val
                            bi = h * W + w
                yf[_u(yb + i * Wo + j)] = best
                af[_u(yb + i * Wo + j)] = bi


@njit(**_OPTS)
def maxpool2d_planes(x, kh, kw, sh, sw, ph, pw, Ho, Wo, Rq, E, pf, want, y, argmax):
    """maxpool2d_forward's results (the same winners, ties and NaNs alike) on phase planes
    (``_plane_kernels``): each channel is copied into -inf padded planes, then every
    window tap is one vectorised max over the wide output. ``pf`` holds at least
    sh*sw*Rq*E + E values; ``want`` False skips the winners (inference)."""
    N, C, H, W = x.shape
    xf, yf, af = x.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    ninf = -np.inf
    Q = Ho * E
    best = np.empty(Q, dtype=y.dtype)
    bi = np.empty(Q, dtype=np.int32)
    init = np.empty(Q, dtype=np.int32)
    base = np.empty(Q, dtype=np.int32)
    for i in range(Ho):
        h0 = max(i * sh - ph, 0)
        for j in range(E):
            jj = min(j, Wo - 1)
            init[i * E + j] = h0 * W + max(jj * sw - pw, 0)
            base[i * E + j] = i * sh * W + jj * sw
    plane_set(pf, pf.size, ninf)
    for t in range(N * C):
        plane_fill(xf, t * H * W, H, W, ph, pw, sh, sw, Rq, E, pf)
        for q in range(Q):
            best[q] = ninf
            bi[q] = init[q]
        for u in range(kh):
            for v in range(kw):
                off = tap_offset(u, v, sh, sw, Rq, E)
                toff = (u - ph) * W + v - pw
                for q in range(Q):
                    val = pf[_u(off + q)]
                    take = (val > best[q]) | (val != val)
                    best[q] = val if take else best[q]
                    bi[q] = base[q] + toff if take else bi[q]
        yb = t * Ho * Wo
        wide_to_rows(best, Ho, Wo, E, yf, yb)
        if want:
            wide_to_rows(bi, Ho, Wo, E, af, yb)


@njit(**_OPTS)
def maxpool2d_backward(dy, argmax, dx):
    N, C, H, W = dx.shape
    P = dy.shape[2] * dy.shape[3]
    dyf = dy.reshape(-1)
    af = argmax.reshape(-1)
    dxf = dx.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        for q in range(H * W):
            dxf[_u(xb + q)] = 0
        for p in range(P):
            dxf[_u(xb + af[_u(t * P + p)])] += dyf[_u(t * P + p)]


@njit(**_OPTS)
def avgpool2d_forward(x, kh, kw, sh, sw, ph, pw, Ho, Wo, y):
    """Sum over the clipped window divided by the window size clipped to the padded
    input (count_include_pad=True; ceil-mode overhang is not counted)."""
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        yb = t * Ho * Wo
        for i in range(Ho):
            hs, he, h0, h1 = _window(i, sh, ph, kh, H)
            for j in range(Wo):
                ws, we, w0, w1 = _window(j, sw, pw, kw, W)
                acc = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        acc += xf[_u(xb + h * W + w)]
                yf[_u(yb + i * Wo + j)] = acc / ((he - hs) * (we - ws))


@njit(**_OPTS)
def avgpool2d_backward(dy, kh, kw, sh, sw, ph, pw, dx):
    N, C, H, W = dx.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    dyf = dy.reshape(-1)
    dxf = dx.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        yb = t * Ho * Wo
        for q in range(H * W):
            dxf[_u(xb + q)] = 0
        for i in range(Ho):
            hs, he, h0, h1 = _window(i, sh, ph, kh, H)
            for j in range(Wo):
                ws, we, w0, w1 = _window(j, sw, pw, kw, W)
                g = dyf[_u(yb + i * Wo + j)] / ((he - hs) * (we - ws))
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dxf[_u(xb + h * W + w)] += g


@njit(**_OPTS)
def l2pool2d_forward(x, kh, kw, sh, sw, ph, pw, Ho, Wo, y):
    """y = sqrt(sum of x**2 over the window); padding contributes zeros."""
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        yb = t * Ho * Wo
        for i in range(Ho):
            _, _, h0, h1 = _window(i, sh, ph, kh, H)
            for j in range(Wo):
                _, _, w0, w1 = _window(j, sw, pw, kw, W)
                acc = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = xf[_u(xb + h * W + w)]
                        acc += v * v
                yf[_u(yb + i * Wo + j)] = np.sqrt(acc)


@njit(**_OPTS)
def l2pool2d_backward(dy, x, y, kh, kw, sh, sw, ph, pw, dx):
    """dx += dy * x / y per window; a window with y == 0 passes no gradient."""
    N, C, H, W = dx.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        yb = t * Ho * Wo
        for q in range(H * W):
            dxf[_u(xb + q)] = 0
        for i in range(Ho):
            _, _, h0, h1 = _window(i, sh, ph, kh, H)
            for j in range(Wo):
                _, _, w0, w1 = _window(j, sw, pw, kw, W)
                yv = yf[_u(yb + i * Wo + j)]
                if yv == 0:
                    continue
                g = dyf[_u(yb + i * Wo + j)] / yv
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        q = xb + h * W + w
                        dxf[_u(q)] += g * xf[_u(q)]


# 2x2 windows at stride 2 without padding (the common case): the fixed offsets let LLVM
# vectorise over the output row, which the generic kernels above cannot.


@njit(**_OPTS)
def maxpool2x2_forward(x, Ho, Wo, y, argmax):
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    af = argmax.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        for i in range(Ho):
            r0 = xb + 2 * i * W
            yb = (t * Ho + i) * Wo
            for j in range(Wo):
                p = r0 + 2 * j
                m = xf[_u(p)]
                k = 0
                v = xf[_u(p + 1)]
                if (v > m) | (v != v):
                    m = v
                    k = 1
                v = xf[_u(p + W)]
                if (v > m) | (v != v):
                    m = v
                    k = W
                v = xf[_u(p + W + 1)]
                if (v > m) | (v != v):
                    m = v
                    k = W + 1
                yf[_u(yb + j)] = m
                af[_u(yb + j)] = 2 * i * W + 2 * j + k


@njit(**_OPTS)
def maxpool2x2_values(x, Ho, Wo, y):
    """maxpool2x2_forward without the argmax (inference): the same maxima (NaN wins),
    as selects, about twice as fast."""
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        for i in range(Ho):
            r0 = xb + 2 * i * W
            yb = (t * Ho + i) * Wo
            for j in range(Wo):
                p = r0 + 2 * j
                m = xf[_u(p)]
                v = xf[_u(p + 1)]
                m = v if (v > m) | (v != v) else m
                v = xf[_u(p + W)]
                m = v if (v > m) | (v != v) else m
                v = xf[_u(p + W + 1)]
                m = v if (v > m) | (v != v) else m
                yf[_u(yb + j)] = m


@njit(**_OPTS)
def avgpool2x2_forward(x, Ho, Wo, y):
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        for i in range(Ho):
            r0 = xb + 2 * i * W
            yb = (t * Ho + i) * Wo
            for j in range(Wo):
                p = r0 + 2 * j
                s = xf[_u(p)] + xf[_u(p + 1)] + xf[_u(p + W)] + xf[_u(p + W + 1)]
                yf[_u(yb + j)] = s * 0.25


@njit(**_OPTS)
def avgpool2x2_backward(dy, dx):
    N, C, H, W = dx.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    df = dx.reshape(-1)
    gf = dy.reshape(-1)
    for t in range(N * C):
        xb = t * H * W
        if 2 * Ho != H or 2 * Wo != W:  # odd sizes: the last row/column gets nothing
            for q in range(H * W):
                df[_u(xb + q)] = 0
        for i in range(Ho):
            r0 = xb + 2 * i * W
            yb = (t * Ho + i) * Wo
            for j in range(Wo):
                g = gf[_u(yb + j)] * 0.25
                p = r0 + 2 * j
                df[_u(p)] = g
                df[_u(p + 1)] = g
                df[_u(p + W)] = g
                df[_u(p + W + 1)] = g


# ---------------------------------------------------------------------------------------
# fused activation derivatives: one pass instead of numpy's three (1-D, contiguous)
# ---------------------------------------------------------------------------------------


@njit(**_OPTS)
def relu_backward(dy, y, out):
    for i in range(dy.size):
        out[_u(i)] = dy[_u(i)] if y[_u(i)] > 0 else 0


@njit(**_OPTS)
def relu6_backward(dy, y, out):
    """dy where 0 < y < 6 (zero at both kinks, as PyTorch)."""
    for i in range(dy.size):
        v = y[_u(i)]
        out[_u(i)] = dy[_u(i)] if (v > 0) & (v < 6) else 0


@njit(**_OPTS)
def add_relu(a, b, scale, out):
    """out = max(a + scale * b, 0) (1-D, contiguous): a residual sum and its ReLU."""
    zero = np.zeros(1, dtype=out.dtype)[0]
    for i in range(a.size):
        v = a[_u(i)] + scale * b[_u(i)]
        out[_u(i)] = zero if v < zero else v


@njit(**_OPTS)
def tanh_backward(dy, y, out):
    for i in range(dy.size):
        out[_u(i)] = dy[_u(i)] * (1 - y[_u(i)] * y[_u(i)])


@njit(**_OPTS)
def sigmoid_backward(dy, y, out):
    for i in range(dy.size):
        out[_u(i)] = dy[_u(i)] * (y[_u(i)] * (1 - y[_u(i)]))


# ---------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3) for stride-1, pad-1 3x3 convolutions. The output is cut into 2x2
# tiles; tile t reads a 4x4 input patch d (rows 2ti-1..2ti+2, zero outside) and
#     y_tile = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise over the 4x4 = 16 e)
# so the 16 products over channels are 16 GEMMs  M[e] = U[e] [K, C] @ V[e] [C, tiles]
# (2.25x fewer multiply-adds than im2col). V[e, c, t] and M[e, k, t] are flat with
# t = (n*th + ti)*tw + tj over a chunk of nb images. The 16 matrices lie a padded stride
# apart (CT = C*T + 16, not a multiple of 4 KiB): 16 streams 2^k bytes apart would all
# map to the same L1 cache sets.
# ---------------------------------------------------------------------------------------


@njit(**_OPTS)
def winograd_input(src, n0, nb, ti0, nti, C, H, W, ns, cs, rs, th, tw, plane, V, CT):
    """V <- B^T d B for every channel and tile (tile rows ti0..ti0+nti-1) of images
    n0..n0+nb-1 of ``src`` (flat;
    element (n, c, i, j) at n*ns + c*cs + i*rs + j). ``plane`` is a scratch array of at
    least (2*th + 2) * (2*tw + 2) elements (one zero-padded channel, its even and odd
    columns stored apart). V[e*CT + c*T + t]: CT >= C*T is the stride between the 16
    matrices (padded by the caller so that the 16 store streams do not alias in L1)."""
    Hp, E = 2 * th + 2, tw + 1
    Wp = 2 * E
    T = nb * nti * tw
    i_lo, i_hi = max(0, 2 * ti0 - 1), min(H, 2 * (ti0 + nti) + 1)  # input rows read
    for q in range(Hp * Wp):
        plane[_u(q)] = 0
    for c in range(C):  # c outer: the tiles of one channel are adjacent in each V[e]
        for n in range(nb):
            s0 = (n0 + n) * ns + c * cs
            for i in range(i_lo, i_hi):
                # padded column p = j + 1, stored de-interleaved: even p at p // 2, odd p
                # at E + p // 2, so that the tile loop below reads with unit stride
                row = (i + 1) * Wp
                sr = s0 + i * rs
                # j = 2t -> odd p = 2t + 1, j = 2t + 1 -> even p = 2t + 2: both loads in
                # one loop, which LLVM turns into shuffles (two loops gave gathers)
                for t in range(W // 2):
                    plane[_u(row + E + t)] = src[_u(sr + 2 * t)]
                    plane[_u(row + t + 1)] = src[_u(sr + 2 * t + 1)]
                if W & 1:
                    plane[_u(row + E + W // 2)] = src[_u(sr + W - 1)]
            for ti in range(ti0, ti0 + nti):
                p0 = 2 * ti * Wp
                vb = c * T + (n * nti + ti - ti0) * tw
                for tj in range(tw):
                    p = p0 + tj
                    d00 = plane[_u(p)]
                    d01 = plane[_u(p + E)]
                    d02 = plane[_u(p + 1)]
                    d03 = plane[_u(p + E + 1)]
                    d10 = plane[_u(p + Wp)]
                    d11 = plane[_u(p + Wp + E)]
                    d12 = plane[_u(p + Wp + 1)]
                    d13 = plane[_u(p + Wp + E + 1)]
                    d20 = plane[_u(p + 2 * Wp)]
                    d21 = plane[_u(p + 2 * Wp + E)]
                    d22 = plane[_u(p + 2 * Wp + 1)]
                    d23 = plane[_u(p + 2 * Wp + E + 1)]
                    d30 = plane[_u(p + 3 * Wp)]
                    d31 = plane[_u(p + 3 * Wp + E)]
                    d32 = plane[_u(p + 3 * Wp + 1)]
                    d33 = plane[_u(p + 3 * Wp + E + 1)]
                    # rows: B^T d
                    a0, a1, a2, a3 = d00 - d20, d01 - d21, d02 - d22, d03 - d23
                    b0, b1, b2, b3 = d10 + d20, d11 + d21, d12 + d22, d13 + d23
                    e0, e1, e2, e3 = d20 - d10, d21 - d11, d22 - d12, d23 - d13
                    f0, f1, f2, f3 = d10 - d30, d11 - d31, d12 - d32, d13 - d33
                    o = vb + tj
                    V[_u(o)] = a0 - a2
                    V[_u(o + CT)] = a1 + a2
                    V[_u(o + 2 * CT)] = a2 - a1
                    V[_u(o + 3 * CT)] = a1 - a3
                    V[_u(o + 4 * CT)] = b0 - b2
                    V[_u(o + 5 * CT)] = b1 + b2
                    V[_u(o + 6 * CT)] = b2 - b1
                    V[_u(o + 7 * CT)] = b1 - b3
                    V[_u(o + 8 * CT)] = e0 - e2
                    V[_u(o + 9 * CT)] = e1 + e2
                    V[_u(o + 10 * CT)] = e2 - e1
                    V[_u(o + 11 * CT)] = e1 - e3
                    V[_u(o + 12 * CT)] = f0 - f2
                    V[_u(o + 13 * CT)] = f1 + f2
                    V[_u(o + 14 * CT)] = f2 - f1
                    V[_u(o + 15 * CT)] = f1 - f3


@njit(inline="always")
def _wino_tile(M, o, KT, bk):
    """A^T m A + bk for the tile whose 16 transformed values are M[o + e*KT]."""
    m00 = M[_u(o)]
    m01 = M[_u(o + KT)]
    m02 = M[_u(o + 2 * KT)]
    m03 = M[_u(o + 3 * KT)]
    m10 = M[_u(o + 4 * KT)]
    m11 = M[_u(o + 5 * KT)]
    m12 = M[_u(o + 6 * KT)]
    m13 = M[_u(o + 7 * KT)]
    m20 = M[_u(o + 8 * KT)]
    m21 = M[_u(o + 9 * KT)]
    m22 = M[_u(o + 10 * KT)]
    m23 = M[_u(o + 11 * KT)]
    m30 = M[_u(o + 12 * KT)]
    m31 = M[_u(o + 13 * KT)]
    m32 = M[_u(o + 14 * KT)]
    m33 = M[_u(o + 15 * KT)]
    # A^T m: rows 0 and 1
    r00 = m00 + m10 + m20
    r01 = m01 + m11 + m21
    r02 = m02 + m12 + m22
    r03 = m03 + m13 + m23
    r10 = m10 - m20 - m30
    r11 = m11 - m21 - m31
    r12 = m12 - m22 - m32
    r13 = m13 - m23 - m33
    v00 = r00 + r01 + r02 + bk
    v01 = r01 - r02 - r03 + bk
    v10 = r10 + r11 + r12 + bk
    v11 = r11 - r12 - r13 + bk
    return v00, v01, v10, v11


@njit(**_OPTS)
def winograd_output(M, KT, K, nb, ti0, nti, tw, b, relu, n0, y):
    """y[n0 + n, k] <- A^T M A (+ b[k] when b has K entries; ReLU with ``relu``) for the
    chunk's tiles (tile rows ti0..ti0+nti-1 of its nb images), dropping the tile rows and
    columns beyond Ho, Wo (odd sizes). M[e*KT + k*T + t]: KT >= K*T is the stride between
    the 16 matrices. The loop over full tiles stores unconditionally (so that it
    vectorises); odd sizes get a tail."""
    N, _, Ho, Wo = y.shape
    T = nb * nti * tw
    twf = Wo // 2
    yf = y.reshape(-1)
    has_b = b.shape[0] == K
    zero = np.zeros(1, dtype=M.dtype)[0]
    for k in range(K):  # k outer: the chunk's tiles of one k are adjacent in each M[e]
        bk = b[k] if has_b else zero
        for n in range(nb):
            yb = ((n0 + n) * K + k) * Ho * Wo
            for ti in range(ti0, ti0 + nti):
                mb = k * T + (n * nti + ti - ti0) * tw
                q0 = yb + 2 * ti * Wo
                if 2 * ti + 1 < Ho:
                    for tj in range(twf):
                        v00, v01, v10, v11 = _wino_tile(M, mb + tj, KT, bk)
                        q = q0 + 2 * tj
                        yf[_u(q)] = v00
                        yf[_u(q + 1)] = v01
                        yf[_u(q + Wo)] = v10
                        yf[_u(q + Wo + 1)] = v11
                    if twf < tw:
                        v00, v01, v10, v11 = _wino_tile(M, mb + twf, KT, bk)
                        yf[_u(q0 + 2 * twf)] = v00
                        yf[_u(q0 + 2 * twf + Wo)] = v10
                else:
                    for tj in range(tw):
                        v00, v01, v10, v11 = _wino_tile(M, mb + tj, KT, bk)
                        yf[_u(q0 + 2 * tj)] = v00
                        if 2 * tj + 1 < Wo:
                            yf[_u(q0 + 2 * tj + 1)] = v01
            if relu:  # a separate pass over the (L1-hot) rows, so that it vectorises
                # to selects; zero has y's dtype (an int 0 would unify to float64)
                q1 = yb + min(Ho, 2 * (ti0 + nti)) * Wo
                for q in range(yb + 2 * ti0 * Wo, q1):
                    v = yf[_u(q)]
                    yf[_u(q)] = zero if v < zero else v


@njit(**_OPTS)
def winograd_output_pool(M, KT, K, nb, ti0, nti, tw, b, idx, n0, y):
    """y[n0 + n, k, ti, tj] <- max over the 2x2 output tile (ti, tj) of ReLU(A^T M A + b[k]):
    a 3x3 conv, its ReLU and a 2x2 stride-2 max pooling in one pass, for an even-sized
    output (each Winograd tile is exactly one pooling window). The window's winner (0..3,
    row-major; the first of equal values, as max pooling picks it) goes to ``idx`` (same
    shape as y, uint8) unless idx is empty (inference)."""
    _, _, th_all, tw_all = y.shape
    T = nb * nti * tw
    yf = y.reshape(-1)
    want = idx.size > 0
    xf = idx.reshape(-1)
    has_b = b.shape[0] == K
    zero = np.zeros(1, dtype=M.dtype)[0]
    for k in range(K):  # k outer, as in winograd_output
        bk = b[k] if has_b else zero
        for n in range(nb):
            yb = ((n0 + n) * K + k) * th_all * tw_all
            for ti in range(ti0, ti0 + nti):
                mb = k * T + (n * nti + ti - ti0) * tw
                q0 = yb + ti * tw_all
                for tj in range(tw):
                    v00, v01, v10, v11 = _wino_tile(M, mb + tj, KT, bk)
                    v00 = zero if v00 < zero else v00
                    v01 = zero if v01 < zero else v01
                    v10 = zero if v10 < zero else v10
                    v11 = zero if v11 < zero else v11
                    best, arg = v00, 0
                    if v01 > best:
                        best, arg = v01, 1
                    if v10 > best:
                        best, arg = v10, 2
                    if v11 > best:
                        best, arg = v11, 3
                    yf[_u(q0 + tj)] = best
                    if want:
                        xf[_u(q0 + tj)] = arg


@njit(**_OPTS)
def relu_maxpool2_backward(dy, yp, idx, n0, m, dz):
    """dz[i] <- the gradient of y = maxpool2x2(ReLU(z)) with respect to z, for images
    n0..n0+m-1 of dy/yp/idx ([N, K, H/2, W/2]) into dz [m, K, H, W]: dy goes to the
    window's winner where the pooled value is positive, zero everywhere else. Zeroes dz,
    then one store per window at a computed offset (the gate as a select, not a branch):
    writing all four values per window made LLVM emit scatters, 6x slower."""
    _, K, Hp, Wp = dy.shape
    W = 2 * Wp
    df, yf, xf, zf = dy.reshape(-1), yp.reshape(-1), idx.reshape(-1), dz.reshape(-1)
    zero = np.zeros(1, dtype=dz.dtype)[0]
    for q in range(m * K * Hp * Wp * 4):
        zf[_u(q)] = zero
    for n in range(m):
        for k in range(K):
            s0 = ((n0 + n) * K + k) * Hp * Wp
            d0 = (n * K + k) * Hp * Wp * 4
            for i in range(Hp):
                r0 = d0 + 2 * i * W
                for j in range(Wp):
                    s = s0 + i * Wp + j
                    a = xf[_u(s)]
                    g = df[_u(s)]
                    zf[_u(r0 + 2 * j + (a >> 1) * W + (a & 1))] = g if yf[_u(s)] > zero else zero


@njit(**_OPTS)
def winograd_dy(dz, n0, nb, ti0, nti, K, Ho, Wo, th, tw, DM, KT, db):
    """DM <- A g A^T (4x4) for every 2x2 tile g (tile rows ti0..ti0+nti-1) of images
    n0..n0+nb-1 of ``dz`` (NCHW [N, K, Ho, Wo], zero beyond Ho, Wo): the adjoint of
    winograd_output, for the weight gradient. Stored tile-major, DM[e*KT + t*K + k] with
    t = (n*nti + ti - ti0)*tw + tj (winograd_input's tile order), so that
    dU[e]^T [C, K] = V[e] [C, T] @ DM[e] [T, K] is a plain (NN) GEMM, which OpenBLAS runs
    about 1.5x faster than the [K, T] @ [T, C] (NT) product for these shapes. Channels are
    the inner loop (contiguous stores). When db has K entries, dz's channel sums are added
    to it (float64)."""
    zf = dz.reshape(-1)
    has_db = db.shape[0] == K
    twf, thf = Wo // 2, Ho // 2
    hw = Ho * Wo
    zero = np.zeros(1, dtype=DM.dtype)[0]
    for n in range(nb):
        zb = (n0 + n) * K * hw
        for ti in range(ti0, ti0 + nti):
            full_row = ti < thf
            for tj in range(tw):
                o0 = ((n * nti + ti - ti0) * tw + tj) * K
                q0 = zb + 2 * ti * Wo + 2 * tj
                full = full_row and tj < twf
                for k in range(K):
                    q = q0 + k * hw
                    g00 = zf[_u(q)]
                    if full:
                        g01 = zf[_u(q + 1)]
                        g10 = zf[_u(q + Wo)]
                        g11 = zf[_u(q + Wo + 1)]
                    else:
                        g01 = zf[_u(q + 1)] if tj < twf else zero
                        g10 = zf[_u(q + Wo)] if full_row else zero
                        g11 = zf[_u(q + Wo + 1)] if full else zero
                    if has_db:
                        db[k] += g00 + g01 + g10 + g11
                    s0, s1 = g00 + g10, g01 + g11
                    d0, d1 = g00 - g10, g01 - g11
                    o = o0 + k
                    DM[_u(o)] = g00
                    DM[_u(o + KT)] = g00 + g01
                    DM[_u(o + 2 * KT)] = g00 - g01
                    DM[_u(o + 3 * KT)] = -g01
                    DM[_u(o + 4 * KT)] = s0
                    DM[_u(o + 5 * KT)] = s0 + s1
                    DM[_u(o + 6 * KT)] = s0 - s1
                    DM[_u(o + 7 * KT)] = -s1
                    DM[_u(o + 8 * KT)] = d0
                    DM[_u(o + 9 * KT)] = d0 + d1
                    DM[_u(o + 10 * KT)] = d0 - d1
                    DM[_u(o + 11 * KT)] = -d1
                    DM[_u(o + 12 * KT)] = -g10
                    DM[_u(o + 13 * KT)] = -g10 - g11
                    DM[_u(o + 14 * KT)] = g11 - g10
                    DM[_u(o + 15 * KT)] = g11
