"""Pooling: spatial (max, average, L2), across channels ("depth"), and global.

Spatial pooling follows PyTorch exactly:

* output size ``floor((H + 2p - k) / s) + 1``; with ``ceil_mode`` the division rounds up,
  minus one when the last window would start inside the right padding;
* **max**: padding acts as -inf; the first maximum in row-major window order wins ties and
  receives the whole upstream gradient; the winners are kept from the forward pass;
* **avg**: ``count_include_pad=True``: divide by ``kh*kw``, except that windows hanging
  past the padded input (ceil_mode) divide by the part inside the padded input;
* **l2**: ``y = sqrt(sum over the window of x**2)`` (torch ``lp_pool2d`` with norm 2: no
  1/k**2); padding contributes zeros; backward ``dx += dy * x / y`` (no gradient if y == 0).
  Torch has no padding for lp_pool2d, and with ceil_mode it rescales a partial window by
  k*k / (elements inside), an artefact of computing it through avg_pool2d; here a partial
  window is simply the norm of what it covers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnncli import arith
from cnncli.errors import ShapeMismatchError
from cnncli.ops import _threads
from cnncli.ops.planes import plane_dims, plane_elements

Pair = tuple[int, int]
POOL_KINDS: tuple[str, ...] = ("max", "avg", "l2")
GLOBAL_POOL_KINDS: tuple[str, ...] = ("avg", "max")
#: Pooling splits the batch over the worker threads only in parts of at least this many
#: images (below that the thread hand-off costs more than it saves).
_MIN_PART = 8


class PoolCache(NamedTuple):
    """``argmax`` (max: int32 index h*W + w of the winner in the unpadded plane, shape of
    y); ``x`` and ``y`` (l2 only; references, not copies). Unused fields are None."""

    kind: str
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    dtype: np.dtype
    kernel: Pair
    stride: Pair
    padding: Pair
    argmax: np.ndarray | None
    x: np.ndarray | None
    y: np.ndarray | None


class DepthPoolCache(NamedTuple):
    """``offset`` (max: int8 position of the winning channel inside its window, so the
    winner of output channel o is ``o*stride + offset``); ``x``, ``y`` (l2 only)."""

    kind: str
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    dtype: np.dtype
    kernel: int
    stride: int
    offset: np.ndarray | None
    x: np.ndarray | None
    y: np.ndarray | None


class GlobalPoolCache(NamedTuple):
    """``argmax`` (max: index h*W + w of the winner per (n, c), int64 [N, C])."""

    kind: str
    x_shape: tuple[int, ...]
    dtype: np.dtype
    argmax: np.ndarray | None


# ---------------------------------------------------------------------------------------
# shape rule
# ---------------------------------------------------------------------------------------


def pool_output_size(
    size: int, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> int:
    """Output length of one spatial axis, as PyTorch computes it.

    ``floor((size + 2p - k) / s) + 1``, or with ``ceil_mode`` ``ceil(...) + 1`` minus one
    when the last window would start in the right padding (``(out-1)*s >= size + p``).
    PyTorch also requires ``p <= k // 2`` so that no window lies wholly in the padding.
    The rule itself is ``cnncli.arith``'s (shared with the shape calculator); this adds the
    checks.
    """
    if kernel < 1 or stride < 1 or padding < 0:
        raise ShapeMismatchError(
            f"pooling needs kernel, stride >= 1 and padding >= 0; got kernel={kernel}, "
            f"stride={stride}, padding={padding}"
        )
    if padding > kernel // 2:
        raise ShapeMismatchError(
            f"pooling padding={padding} must be at most half the kernel ({kernel} // 2)"
        )
    span = size + 2 * padding - kernel
    if span < 0:
        raise ShapeMismatchError(
            f"pooling kernel={kernel} is larger than the padded input {size + 2 * padding} "
            f"(size={size}, padding={padding})"
        )
    return arith.pool_output_size(size, kernel, stride, padding, bool(ceil_mode))


def _pair(v, name: str) -> Pair:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ShapeMismatchError(f"{name} must be an int or a pair (h, w); got {v!r}") from None
    return int(a), int(b)


def _check_x(x, ndim: int, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != ndim:
        raise ShapeMismatchError(
            f"{what} expects x with {ndim} dims [N, C, H, W]; got shape {np.shape(x)}"
        )
    if x.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"{what} expects float32 or float64 x; got {x.dtype}")
    return np.ascontiguousarray(x)


def _check_dy(dy, shape: tuple, dtype, what: str) -> np.ndarray:
    if not isinstance(dy, np.ndarray) or dy.shape != tuple(shape):
        raise ShapeMismatchError(f"{what}: dy must have shape {tuple(shape)}; got {np.shape(dy)}")
    if dy.dtype != dtype:
        raise ShapeMismatchError(f"{what}: dy is {dy.dtype} but the forward pass ran in {dtype}")
    return np.ascontiguousarray(dy)


def _check_kind(kind: str, kinds: tuple[str, ...], what: str) -> None:
    if kind not in kinds:
        raise ShapeMismatchError(f"{what}: kind must be one of {kinds}; got {kind!r}")


# ---------------------------------------------------------------------------------------
# 2-D pooling
# ---------------------------------------------------------------------------------------


def pool2d_forward(
    x: np.ndarray,
    kind: str,
    kernel: int | Pair,
    stride: int | Pair,
    padding: int | Pair = (0, 0),
    ceil_mode: bool = False,
    *,
    need_argmax: bool = True,
) -> tuple[np.ndarray, PoolCache]:
    """y [N, C, Ho, Wo] = pool(x [N, C, H, W]) with ``kind`` in max | avg | l2.

    ``need_argmax=False`` (inference) lets 2x2/2 max pooling skip the winners' indices
    (kern.maxpool2x2_values); the cache then keeps x and pool2d_backward finds them
    again if it is called after all."""
    from cnncli.ops import _kernels as kern

    _check_kind(kind, POOL_KINDS, "pool2d")
    x = _check_x(x, 4, "pool2d")
    (kh, kw), (sh, sw) = _pair(kernel, "kernel"), _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    n, c, h, w = x.shape
    ho = pool_output_size(h, kh, sh, ph, ceil_mode)
    wo = pool_output_size(w, kw, sw, pw, ceil_mode)
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = keep_x = keep_y = None
    two_by_two = _is_2x2(kh, kw, sh, sw, ph, pw, h, w, ho, wo)
    if kind == "max" and two_by_two and not need_argmax:
        keep_x = x

        def part(lo, hi, _):
            kern.maxpool2x2_values(x[lo:hi], ho, wo, y[lo:hi])
    elif kind == "max" and two_by_two:
        argmax = np.empty((n, c, ho, wo), dtype=np.int32)

        def part(lo, hi, _):
            kern.maxpool2x2_forward(x[lo:hi], ho, wo, y[lo:hi], argmax[lo:hi])
    elif kind == "max":
        argmax = np.empty((n, c, ho, wo) if need_argmax else (1,), dtype=np.int32)
        keep_x = None if need_argmax else x

        def part(lo, hi, p):
            _max_rows(x[lo:hi], (kh, kw), (sh, sw), (ph, pw), y[lo:hi],
                      argmax[lo:hi] if need_argmax else None, p)
    elif kind == "avg":

        def part(lo, hi, _):
            if two_by_two:
                kern.avgpool2x2_forward(x[lo:hi], ho, wo, y[lo:hi])
            else:
                kern.avgpool2d_forward(x[lo:hi], kh, kw, sh, sw, ph, pw, ho, wo, y[lo:hi])
    else:

        def part(lo, hi, _):
            kern.l2pool2d_forward(x[lo:hi], kh, kw, sh, sw, ph, pw, ho, wo, y[lo:hi])

        keep_x, keep_y = x, y
    _threads.over_batch(part, n, _MIN_PART, work=8 * x.size)
    cache = PoolCache(
        kind, x.shape, y.shape, x.dtype, (kh, kw), (sh, sw), (ph, pw), argmax, keep_x, keep_y
    )
    return y, cache


def pool2d_backward(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """dx [N, C, H, W]; overlapping windows accumulate."""
    from cnncli.ops import _kernels as kern

    kind, x_shape, y_shape, dtype, (kh, kw), (sh, sw), (ph, pw), argmax, x, y = cache
    dy = _check_dy(dy, y_shape, dtype, "pool2d_backward")
    dx = np.empty(x_shape, dtype=dtype)
    h, w = x_shape[2:]
    two_by_two = _is_2x2(kh, kw, sh, sw, ph, pw, h, w, *y_shape[2:])
    again = kind == "max" and (argmax is None or argmax.shape != y_shape)
    if again:  # the forward pass ran with need_argmax=False: find the winners now
        argmax = np.empty(y_shape, dtype=np.int32)

    def part(lo, hi, p):
        if again and two_by_two:
            kern.maxpool2x2_forward(x[lo:hi], *y_shape[2:],
                                    np.empty((hi - lo, *y_shape[1:]), dtype=dtype), argmax[lo:hi])
        elif again:  # in this part's own workspace: parts run at once
            _max_rows(x[lo:hi], (kh, kw), (sh, sw), (ph, pw),
                      np.empty((hi - lo, *y_shape[1:]), dtype=dtype), argmax[lo:hi], p)
        if kind == "max":
            kern.maxpool2d_backward(dy[lo:hi], argmax[lo:hi], dx[lo:hi])
        elif kind == "avg":
            if two_by_two:
                kern.avgpool2x2_backward(dy[lo:hi], dx[lo:hi])
            else:
                kern.avgpool2d_backward(dy[lo:hi], kh, kw, sh, sw, ph, pw, dx[lo:hi])
        else:
            kern.l2pool2d_backward(dy[lo:hi], x[lo:hi], y[lo:hi], kh, kw, sh, sw, ph, pw,
                                   dx[lo:hi])

    _threads.over_batch(part, x_shape[0], _MIN_PART, work=8 * dx.size)
    return dx


def max_rows_workspaces(in_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
                        out_hw: Pair) -> dict[str, int]:
    """Workspace tag -> elements of _max_rows for one part (any number of images)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    rq, e = plane_dims(*in_hw, kh, kw, sh, sw, ph, pw, *out_hw)
    return {"pool.plane": plane_elements(sh, sw, rq, e)}


def uses_max_rows(kind: str, in_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
                  out_hw: Pair) -> bool:
    """Whether a pooling's training forward runs _max_rows (max, not the 2x2 kernels)."""
    return kind == "max" and not _is_2x2(*kernel, *stride, *padding, *in_hw, *out_hw)


def _max_rows(x, kernel: Pair, stride: Pair, padding: Pair, y, argmax, part: int) -> None:
    """y (and the winners into argmax, unless None) by kern.maxpool2d_planes, on -inf
    padded phase planes large enough for the windows that ceil mode lets hang past the
    input."""
    from cnncli.ops import _kernels as kern

    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h, w = x.shape[2:]
    ho, wo = y.shape[2:]
    rq, e = plane_dims(h, w, kh, kw, sh, sw, ph, pw, ho, wo)
    sizes = max_rows_workspaces((h, w), kernel, stride, padding, (ho, wo))
    plane = _threads.workspace("pool.plane", part, sizes["pool.plane"], x.dtype)
    want = argmax is not None
    kern.maxpool2d_planes(x, kh, kw, sh, sw, ph, pw, ho, wo, rq, e, plane, want, y,
                          argmax if want else np.empty(1, dtype=np.int32))


def _is_2x2(kh, kw, sh, sw, ph, pw, h, w, ho, wo) -> bool:
    """2x2 windows at stride 2, unpadded, every window complete: the vectorised kernels."""
    return (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0) and 2 * ho <= h and 2 * wo <= w


# ---------------------------------------------------------------------------------------
# pooling across channels
# ---------------------------------------------------------------------------------------


def depth_output_size(channels: int, kernel: int, stride: int) -> int:
    """``floor((C - k) / s) + 1``; trailing channels that don't fill a window are dropped."""
    if kernel < 1 or stride < 1 or channels < kernel:
        raise ShapeMismatchError(
            f"depth pooling needs 1 <= kernel <= channels and stride >= 1; got "
            f"channels={channels}, kernel={kernel}, stride={stride}"
        )
    return (channels - kernel) // stride + 1


def depth_pool_forward(
    x: np.ndarray, kind: str, kernel: int, stride: int
) -> tuple[np.ndarray, DepthPoolCache]:
    """y [N, C_out, H, W] pools channels ``[o*s, o*s + k)`` of x [N, C, H, W] at each pixel.

    With ``kernel == stride`` and max this is maxout. Ties go to the lowest channel.
    One vectorised pass per window offset (k of them), no per-pixel loops.
    """
    _check_kind(kind, POOL_KINDS, "depth_pool")
    x = _check_x(x, 4, "depth_pool")
    k, s = int(kernel), int(stride)
    c_out = depth_output_size(x.shape[1], k, s)
    stop = s * (c_out - 1) + 1
    taps = [x[:, u : u + stop : s] for u in range(k)]  # each [N, C_out, H, W], views
    offset = keep_x = keep_y = None
    if kind == "max":
        y = taps[0].copy()
        offset = np.zeros(y.shape, dtype=np.int8 if k < 128 else np.int32)
        for u in range(1, k):
            better = taps[u] > y  # strict: the first (lowest) channel wins ties
            np.copyto(y, taps[u], where=better)
            offset[better] = u
    elif kind == "avg":
        y = taps[0].copy()
        for u in range(1, k):
            y += taps[u]
        y /= k
    else:
        y = np.square(taps[0])
        for u in range(1, k):
            y += np.square(taps[u])
        np.sqrt(y, out=y)
        keep_x, keep_y = x, y
    cache = DepthPoolCache(kind, x.shape, y.shape, x.dtype, k, s, offset, keep_x, keep_y)
    return y, cache


def depth_pool_backward(dy: np.ndarray, cache: DepthPoolCache) -> np.ndarray:
    """dx [N, C, H, W]; overlapping windows (stride < kernel) accumulate."""
    kind, x_shape, y_shape, dtype, k, s, offset, x, y = cache
    dy = _check_dy(dy, y_shape, dtype, "depth_pool_backward")
    dx = np.zeros(x_shape, dtype=dtype)
    stop = s * (y_shape[1] - 1) + 1
    if kind == "l2":
        safe = np.where(y == 0, 1, y)
        g = np.where(y == 0, 0, dy / safe)
    for u in range(k):
        sl = dx[:, u : u + stop : s]
        if kind == "max":
            sl += np.where(offset == u, dy, 0)
        elif kind == "avg":
            sl += dy / k
        else:
            sl += g * x[:, u : u + stop : s]
    return dx


# ---------------------------------------------------------------------------------------
# global pooling
# ---------------------------------------------------------------------------------------


def global_pool_forward(x: np.ndarray, kind: str) -> tuple[np.ndarray, GlobalPoolCache]:
    """y [N, C] (flat: the 1x1 spatial dims are dropped) = mean or max over H and W."""
    _check_kind(kind, GLOBAL_POOL_KINDS, "global_pool")
    x = _check_x(x, 4, "global_pool")
    n, c, h, w = x.shape
    x3 = x.reshape(n, c, h * w)
    argmax = None
    if kind == "avg":
        y = x3.mean(axis=2)
    else:
        argmax = x3.argmax(axis=2)  # first maximum wins ties
        y = np.take_along_axis(x3, argmax[:, :, None], axis=2)[:, :, 0]
    return y, GlobalPoolCache(kind, x.shape, x.dtype, argmax)


def global_pool_backward(dy: np.ndarray, cache: GlobalPoolCache) -> np.ndarray:
    """dx [N, C, H, W]: avg spreads dy/(H*W) over the plane, max routes dy to the winner."""
    kind, (n, c, h, w), dtype, argmax = cache
    dy = _check_dy(dy, (n, c), dtype, "global_pool_backward")
    if kind == "avg":
        dx = np.empty((n, c, h, w), dtype=dtype)
        dx[...] = (dy / (h * w))[:, :, None, None]
        return dx
    dx = np.zeros((n, c, h * w), dtype=dtype)
    np.put_along_axis(dx, argmax[:, :, None], dy[:, :, None], axis=2)
    return dx.reshape(n, c, h, w)
