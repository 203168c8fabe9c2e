"""Numba kernels of the depthwise path (groups == input channels, K = M * C).

Each input channel is copied once into zero-padded phase planes (``_plane_kernels``), so
that every kernel tap is one long unit-stride loop over the wide output (or, for the input
gradient, a scatter-add into the planes; for the weight gradient a dot product), for
stride 1 and 2 alike. Conventions as in ``cnncli.ops._kernels`` (flat views, uint64
indices, serial, nogil).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba import uint64 as _u

from cnncli.ops._plane_kernels import (
    plane_fill,
    plane_set,
    plane_unfill,
    rows_to_wide,
    tap_offset,
    wide_to_rows,
)

_OPTS = {"cache": True, "nogil": True}


@njit(fastmath={"contract"}, **_OPTS)
def depthwise_forward(x, w, b, M, kh, kw, sh, sw, ph, pw, dh, dw, Rq, E, n0, m, pf, y):
    """y[n0:n0+m] = depthwise conv of x[n0:n0+m] (+ b[k] when b has K entries). ``pf``
    holds the phase planes (sh*sw*Rq*E + E values, see _plane_kernels.plane_dims)."""
    _, C, H, W = x.shape
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    xf, yf, wf = x.reshape(-1), y.reshape(-1), w.reshape(-1)
    has_b = b.shape[0] == K
    zero = np.zeros(1, dtype=y.dtype)[0]
    Q = Ho * E
    wide = np.empty(Q, dtype=y.dtype)
    plane_set(pf, pf.size, zero)
    for n in range(n0, n0 + m):
        for c in range(C):
            plane_fill(xf, (n * C + c) * H * W, H, W, ph, pw, sh, sw, Rq, E, pf)
            for mm in range(M):
                k = c * M + mm
                bk = b[k] if has_b else zero
                for q in range(Q):
                    wide[q] = bk
                for u in range(kh):
                    for v in range(kw):
                        wt = wf[_u((k * kh + u) * kw + v)]
                        off = tap_offset(u * dh, v * dw, sh, sw, Rq, E)
                        for q in range(Q):
                            wide[q] += wt * pf[_u(off + q)]
                wide_to_rows(wide, Ho, Wo, E, yf, (n * K + k) * Ho * Wo)


@njit(fastmath={"contract"}, **_OPTS)
def depthwise_input_grad(dz, w, M, kh, kw, sh, sw, ph, pw, dh, dw, Rq, E, n0, m, pf, dx):
    """dx[n0:n0+m] = the adjoint of depthwise_forward applied to dz (the part's images,
    dz[0] being image n0): each tap adds w * dz to a run of the planes."""
    _, C, H, W = dx.shape
    K, Ho, Wo = dz.shape[1], dz.shape[2], dz.shape[3]
    gf, df, wf = dz.reshape(-1), dx.reshape(-1), w.reshape(-1)
    zero = np.zeros(1, dtype=dx.dtype)[0]
    Q = Ho * E
    wide = np.empty(Q, dtype=dz.dtype)
    for n in range(m):
        for c in range(C):
            plane_set(pf, pf.size, zero)
            for mm in range(M):
                k = c * M + mm
                rows_to_wide(gf, (n * K + k) * Ho * Wo, Ho, Wo, E, wide, zero)
                for u in range(kh):
                    for v in range(kw):
                        wt = wf[_u((k * kh + u) * kw + v)]
                        off = tap_offset(u * dh, v * dw, sh, sw, Rq, E)
                        for q in range(Q):
                            pf[_u(off + q)] += wt * wide[q]
            plane_unfill(pf, H, W, ph, pw, sh, sw, Rq, E, df, ((n0 + n) * C + c) * H * W)


@njit(fastmath={"reassoc", "contract"}, **_OPTS)
def depthwise_weight_grad(x, dz, M, kh, kw, sh, sw, ph, pw, dh, dw, Rq, E, n0, m, pf, acc):
    """acc[k, u*kw + v] += sum over the part's images and pixels of dz[n, k, i, j] *
    xpad[n0 + n, c, i*sh + u*dh, j*sw + v*dw] (acc float64 [K, kh*kw]; each channel's dot
    product is summed in the working dtype, the channels in float64)."""
    _, C, H, W = x.shape
    K, Ho, Wo = dz.shape[1], dz.shape[2], dz.shape[3]
    xf, gf = x.reshape(-1), dz.reshape(-1)
    zero = np.zeros(1, dtype=dz.dtype)[0]
    Q = Ho * E
    wide = np.empty(Q, dtype=dz.dtype)
    plane_set(pf, pf.size, zero)
    for n in range(m):
        for c in range(C):
            plane_fill(xf, ((n0 + n) * C + c) * H * W, H, W, ph, pw, sh, sw, Rq, E, pf)
            for mm in range(M):
                k = c * M + mm
                rows_to_wide(gf, (n * K + k) * Ho * Wo, Ho, Wo, E, wide, zero)
                for u in range(kh):
                    for v in range(kw):
                        off = tap_offset(u * dh, v * dw, sh, sw, Rq, E)
                        s = zero
                        for q in range(Q):
                            s += wide[q] * pf[_u(off + q)]
                        acc[k, u * kw + v] += s


# ---------------------------------------------------------------------------------------
# channel-last variants: each image is transposed to [H, W, C] and every (pixel, tap) is
# one loop over the channels (long where maps are small and channels many: MobileNet's
# late stages, where a loop along W has 2-8 iterations).
# ---------------------------------------------------------------------------------------


@njit(inline="always")
def _to_cl(src, base, C, P, dst):
    """dst[p*C + c] = src[base + c*P + p]: one image [C, P] to [P, C]."""
    for c in range(C):
        for p in range(P):
            dst[_u(p * C + c)] = src[_u(base + c * P + p)]


@njit(inline="always")
def _from_cl(src, C, P, dst, base):
    """The inverse of _to_cl."""
    for c in range(C):
        for p in range(P):
            dst[_u(base + c * P + p)] = src[_u(p * C + c)]


@njit(fastmath={"contract"}, **_OPTS)
def depthwise_forward_cl(x, wt, b, M, kh, kw, sh, sw, ph, pw, dh, dw, n0, m, xt, yt, y):
    """As depthwise_forward, channel-last. ``wt`` is [kh*kw, K] (taps major); xt, yt are
    scratch of H*W*C and Ho*Wo*K values."""
    _, C, H, W = x.shape
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    xf, yf, wf = x.reshape(-1), y.reshape(-1), wt.reshape(-1)
    has_b = b.shape[0] == K
    zero = np.zeros(1, dtype=y.dtype)[0]
    for n in range(n0, n0 + m):
        _to_cl(xf, n * C * H * W, C, H * W, xt)
        for i in range(Ho):
            for j in range(Wo):
                d = (i * Wo + j) * K
                for k in range(K):
                    yt[_u(d + k)] = b[k] if has_b else zero
                for u in range(kh):
                    hh = i * sh + u * dh - ph
                    if hh < 0 or hh >= H:
                        continue
                    for v in range(kw):
                        ww = j * sw + v * dw - pw
                        if ww < 0 or ww >= W:
                            continue
                        s = (hh * W + ww) * C
                        t = (u * kw + v) * K
                        if M == 1:
                            for k in range(K):
                                yt[_u(d + k)] += wf[_u(t + k)] * xt[_u(s + k)]
                        else:
                            for k in range(K):
                                yt[_u(d + k)] += wf[_u(t + k)] * xt[_u(s + k // M)]
        _from_cl(yt, K, Ho * Wo, yf, n * K * Ho * Wo)


@njit(fastmath={"contract"}, **_OPTS)
def depthwise_input_grad_cl(dz, wt, M, kh, kw, sh, sw, ph, pw, dh, dw, n0, m, gt, dt, dx):
    """As depthwise_input_grad, channel-last (gt: Ho*Wo*K, dt: H*W*C scratch)."""
    _, C, H, W = dx.shape
    K, Ho, Wo = dz.shape[1], dz.shape[2], dz.shape[3]
    gf, df, wf = dz.reshape(-1), dx.reshape(-1), wt.reshape(-1)
    zero = np.zeros(1, dtype=dx.dtype)[0]
    for n in range(m):
        _to_cl(gf, n * K * Ho * Wo, K, Ho * Wo, gt)
        for q in range(H * W * C):
            dt[_u(q)] = zero
        for i in range(Ho):
            for j in range(Wo):
                g0 = (i * Wo + j) * K
                for u in range(kh):
                    hh = i * sh + u * dh - ph
                    if hh < 0 or hh >= H:
                        continue
                    for v in range(kw):
                        ww = j * sw + v * dw - pw
                        if ww < 0 or ww >= W:
                            continue
                        s = (hh * W + ww) * C
                        t = (u * kw + v) * K
                        if M == 1:
                            for k in range(K):
                                dt[_u(s + k)] += wf[_u(t + k)] * gt[_u(g0 + k)]
                        else:
                            for k in range(K):
                                dt[_u(s + k // M)] += wf[_u(t + k)] * gt[_u(g0 + k)]
        _from_cl(dt, C, H * W, df, (n0 + n) * C * H * W)


@njit(fastmath={"reassoc", "contract"}, **_OPTS)
def depthwise_weight_grad_cl(x, dz, M, kh, kw, sh, sw, ph, pw, dh, dw, n0, m, xt, gt, acc,
                             acc64):
    """acc64 [kh*kw, K] (float64) += the part's weight gradient, channel-last: per image,
    acc [kh*kw, K] (working dtype) collects the sums, then is added in float64."""
    _, C, H, W = x.shape
    K, Ho, Wo = dz.shape[1], dz.shape[2], dz.shape[3]
    xf, gf, af = x.reshape(-1), dz.reshape(-1), acc.reshape(-1)
    zero = np.zeros(1, dtype=dz.dtype)[0]
    T = kh * kw
    for n in range(m):
        _to_cl(xf, (n0 + n) * C * H * W, C, H * W, xt)
        _to_cl(gf, n * K * Ho * Wo, K, Ho * Wo, gt)
        for q in range(T * K):
            af[_u(q)] = zero
        for i in range(Ho):
            for j in range(Wo):
                g0 = (i * Wo + j) * K
                for u in range(kh):
                    hh = i * sh + u * dh - ph
                    if hh < 0 or hh >= H:
                        continue
                    for v in range(kw):
                        ww = j * sw + v * dw - pw
                        if ww < 0 or ww >= W:
                            continue
                        s = (hh * W + ww) * C
                        t = (u * kw + v) * K
                        if M == 1:
                            for k in range(K):
                                af[_u(t + k)] += gt[_u(g0 + k)] * xt[_u(s + k)]
                        else:
                            for k in range(K):
                                af[_u(t + k)] += gt[_u(g0 + k)] * xt[_u(s + k // M)]
        for t in range(T):
            for k in range(K):
                acc64[t, k] += af[_u(t * K + k)]
