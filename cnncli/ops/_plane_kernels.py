"""Phase planes: a padded feature-map channel stored so that every tap of a strided window
reads one long unit-stride run (shared by max pooling and the depthwise convolutions).

The padded channel (``Hp = H + 2*ph`` rows, ``Wp = W + 2*pw`` columns) is split by the
phase of the stride: padded row ``p`` and column ``q`` go to plane ``(p % sh, q % sw)`` at
row ``p // sh`` and column ``q // sw``, each plane ``Rq`` rows of ``E`` columns. The
output is computed "wide", ``E`` columns per row (those past ``Wo`` are dropped), so for
tap (u, v) output ``i*E + j`` reads plane ``(u % sh, v % sw)`` at the constant offset
``(u // sh)*E + v // sw`` from ``i*E + j``: one loop of ``Ho*E`` iterations per tap, which
LLVM vectorises (row-by-row loops of 16 outputs spent their time in loop set-up).
Conventions as in ``cnncli.ops._kernels`` (flat views, uint64 indices, serial, nogil).
"""

from __future__ import annotations

from numba import njit
from numba import uint64 as _u

from cnncli.ops.planes import plane_dims  # noqa: F401 (the kernels' callers import it here)


@njit(inline="always")
def tap_offset(u, v, sh, sw, Rq, E):
    """Where tap (u, v) starts reading, relative to output i*E + j."""
    return ((u % sh) * sw + v % sw) * Rq * E + (u // sh) * E + v // sw


@njit(inline="always")
def plane_fill(xf, base, H, W, ph, pw, sh, sw, Rq, E, pf):
    """The interior of the phase planes <- one channel at xf[base:] (H x W). Phases of
    the columns outer, rows inner, the row's plane and index stepped (no division per
    row: a runtime division costs as much as copying the row)."""
    PE = Rq * E
    for r in range(sw):
        t0 = (pw - r + sw - 1) // sw if pw > r else 0
        t1 = (W + pw - r + sw - 1) // sw
        rp, rr = ph % sh, ph // sh
        for h in range(H):
            d0 = (rp * sw + r) * PE + rr * E
            s0 = base + h * W + r - pw
            for t in range(t0, t1):
                pf[_u(d0 + t)] = xf[_u(s0 + sw * t)]
            rp += 1
            if rp == sh:
                rp = 0
                rr += 1


@njit(inline="always")
def plane_unfill(pf, H, W, ph, pw, sh, sw, Rq, E, df, base):
    """The adjoint of plane_fill: the interior of the phase planes -> df[base:] (H x W)."""
    PE = Rq * E
    for r in range(sw):
        t0 = (pw - r + sw - 1) // sw if pw > r else 0
        t1 = (W + pw - r + sw - 1) // sw
        rp, rr = ph % sh, ph // sh
        for h in range(H):
            d0 = (rp * sw + r) * PE + rr * E
            s0 = base + h * W + r - pw
            for t in range(t0, t1):
                df[_u(s0 + sw * t)] = pf[_u(d0 + t)]
            rp += 1
            if rp == sh:
                rp = 0
                rr += 1


@njit(inline="always")
def plane_set(pf, n, value):
    for q in range(n):
        pf[_u(q)] = value


@njit(inline="always")
def wide_to_rows(wide, Ho, Wo, E, yf, yb):
    """yf[yb + i*Wo + j] = wide[i*E + j] for j < Wo."""
    for i in range(Ho):
        for j in range(Wo):
            yf[_u(yb + i * Wo + j)] = wide[_u(i * E + j)]


@njit(inline="always")
def rows_to_wide(yf, yb, Ho, Wo, E, wide, zero):
    """The inverse of wide_to_rows, the dropped columns set to zero."""
    for i in range(Ho):
        for j in range(Wo):
            wide[_u(i * E + j)] = yf[_u(yb + i * Wo + j)]
        for j in range(Wo, E):
            wide[_u(i * E + j)] = zero
