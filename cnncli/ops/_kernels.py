"""Numba kernels behind the fast ops (imported lazily by the functions that need them).

Every kernel is a plain loop nest over NCHW arrays, compiled once per dtype and cached on
disk (``cache=True``). Two conventions keep LLVM's vectoriser happy:

* Arrays are indexed through flat 1-D views with ``uint64`` indices. Numba has to allow
  negative (wrap-around) indices for signed ones, which makes the address non-affine, and
  LLVM then emits AVX-512 gathers and scatters that run far slower than plain loads.
* Work is split over independent output planes (``prange`` over ``(n, c)`` or over
  im2col rows), so no two threads ever write the same element and no atomics are needed.

Geometry arguments follow conv/pool: ``sh, sw`` stride, ``ph, pw`` padding (zeros for conv,
excluded for pooling), ``dh, dw`` dilation, ``Ho, Wo`` output size.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba import uint64 as _u

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
    N, C, H, W = x.shape
    P = Ho * Wo
    L = nb * P
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    for t in range(C * kh * kw * nb):
        r = t // nb
        n = t - r * nb
        c = r // (kh * kw)
        uv = r - c * kh * kw
        u = uv // kw
        v = uv - u * kw
        off, j0, j1 = _col_range(v, dw, pw, sw, W, Wo)
        xbase = ((n0 + n) * C + c) * H * W
        for i in range(Ho):
            ih = i * sh + u * dh - ph
            d = r * L + n * P + i * Wo
            if ih < 0 or ih >= H:
                for j in range(Wo):
                    cf[_u(d + j)] = 0
            else:
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
def rows_to_nchw(rows, b, n0, nb, y):
    """y[n0+n, k, p] = rows[k, n*P + p] (+ b[k] when b has K entries, else nothing)."""
    N, K, Ho, Wo = y.shape
    P = Ho * Wo
    L = nb * P
    rf = rows.reshape(-1)
    yf = y.reshape(-1)
    has_b = b.shape[0] == K
    for t in range(nb * K):
        n = t // K
        k = t - n * K
        bk = b[k] if has_b else 0
        src = k * L + n * P
        dst = ((n0 + n) * K + k) * P
        for p in range(P):
            yf[_u(dst + p)] = rf[_u(src + p)] + bk


@njit(**_OPTS)
def nchw_to_rows(y, n0, nb, rows):
    """rows[k, n*P + p] = y[n0+n, k, p]: the inverse layout change of rows_to_nchw."""
    N, K, Ho, Wo = y.shape
    P = Ho * Wo
    L = nb * P
    rf = rows.reshape(-1)
    yf = y.reshape(-1)
    for t in range(nb * K):
        n = t // K
        k = t - n * K
        dst = k * L + n * P
        src = ((n0 + n) * K + k) * P
        for p in range(P):
            rf[_u(dst + p)] = yf[_u(src + p)]


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
                        if val > best or np.isnan(val):
                            best = val
                            bi = h * W + w
                yf[_u(yb + i * Wo + j)] = best
                af[_u(yb + i * Wo + j)] = bi


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
