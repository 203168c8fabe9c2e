"""Phase-plane sizes of the plane kernels (``_plane_kernels``), without Numba: the pooling
and depthwise paths size their workspaces with it, and so does the training-memory
estimate (cnncli/memory.py), which must not import Numba."""

from __future__ import annotations


def plane_dims(h: int, w: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
               ho: int, wo: int) -> tuple[int, int]:
    """(Rq, E): rows and columns of each phase plane, with room for the wide output's
    reads past the last real column (one spare row)."""
    e = max(wo + (kw - 1) // sw, -(-(w + 2 * pw) // sw))
    rq = max(ho + (kh - 1) // sh, -(-(h + 2 * ph) // sh)) + 1
    return rq, e


def plane_elements(sh: int, sw: int, rq: int, e: int) -> int:
    """Elements of the phase-plane workspace: sh*sw planes of Rq x E, plus one spare row."""
    return sh * sw * rq * e + e
