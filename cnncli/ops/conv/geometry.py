"""Conv geometry: the shape rules, argument checks and caches shared by every kernel path.

Shapes are NCHW for activations and OIHW ``[K, C/groups, kh, kw]`` for conv2d weights.
This is a cross-correlation (the kernel is not flipped), as in every framework:

    y[n,k,i,j] = b[k] + sum_{c,u,v} w[k,c,u,v] * xpad[n, g(k)*Cg + c, i*sh + u*dh, j*sw + v*dw]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from cnncli import arith
from cnncli.errors import ShapeMismatchError

Pair = tuple[int, int]


class ConvGeometry(NamedTuple):
    """Everything about a conv2d except the arrays. ``in_hw`` is the (unpadded) input size
    and ``out_hw`` the output size of the *conv2d* direction."""

    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    in_hw: Pair
    out_hw: Pair


class ConvCache(NamedTuple):
    """What conv2d_backward needs: the input (a reference, not a copy), the weights, the
    geometry and the kernel paths the forward pass chose (the backward keeps them).
    Columns are recomputed chunk by chunk in the backward pass."""

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    geometry: ConvGeometry
    algo: Any = None
    options: Any = None


class ConvTransposeCache(NamedTuple):
    """What conv_transpose2d_backward needs: input and weights (references), the geometry
    of the adjoint conv2d (whose input is this layer's output) and its kernel paths."""

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    geometry: ConvGeometry
    algo: Any = None
    options: Any = None


# ---------------------------------------------------------------------------------------
# shape rules (pure integer functions, shared with the layer registry)
# ---------------------------------------------------------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``.

    The rule itself is ``cnncli.arith``'s (shared with the shape calculator); this adds the
    checks. Rows and columns that the stride does not reach are dropped (floor). Raises
    ShapeMismatchError when the (dilated) kernel does not fit in the padded input.
    """
    if kernel < 1 or stride < 1 or dilation < 1 or padding < 0:
        raise ShapeMismatchError(
            f"conv needs kernel, stride, dilation >= 1 and padding >= 0; got kernel={kernel}, "
            f"stride={stride}, dilation={dilation}, padding={padding}"
        )
    span = arith.effective_kernel(kernel, dilation)
    if size + 2 * padding < span:
        raise ShapeMismatchError(
            f"conv kernel spans {span} (kernel={kernel}, dilation={dilation}) but the padded "
            f"input is only {size + 2 * padding} (size={size}, padding={padding})"
        )
    return arith.conv_output_size(size, kernel, stride, padding, dilation)


def deconv_output_size(
    size: int,
    kernel: int,
    stride: int,
    padding: int,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """``(size-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1``.

    As in PyTorch, ``output_padding`` must be smaller than the stride or the dilation (it
    only picks one of the input sizes that a strided conv2d maps to ``size``).
    """
    if kernel < 1 or stride < 1 or dilation < 1 or padding < 0 or output_padding < 0:
        raise ShapeMismatchError(
            f"conv_transpose needs kernel, stride, dilation >= 1 and padding, output_padding "
            f">= 0; got kernel={kernel}, stride={stride}, dilation={dilation}, "
            f"padding={padding}, output_padding={output_padding}"
        )
    if output_padding >= stride and output_padding >= dilation:
        raise ShapeMismatchError(
            f"conv_transpose output_padding={output_padding} must be smaller than the stride "
            f"({stride}) or the dilation ({dilation})"
        )
    out = arith.deconv_output_size(size, kernel, stride, padding, output_padding, dilation)
    if out < 1:
        raise ShapeMismatchError(
            f"conv_transpose output size would be {out} (size={size}, kernel={kernel}, "
            f"stride={stride}, padding={padding}, output_padding={output_padding}, "
            f"dilation={dilation})"
        )
    return out


# ---------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------


def pair(v, name: str) -> Pair:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ShapeMismatchError(f"{name} must be an int or a pair (h, w); got {v!r}") from None
    return int(a), int(b)


def check_arrays(x, w, b, what: str):
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ShapeMismatchError(
            f"{what} expects x with 4 dims [N, C, H, W]; got shape {np.shape(x)}"
        )
    if x.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"{what} expects float32 or float64 x; got {x.dtype}")
    if not isinstance(w, np.ndarray) or w.ndim != 4:
        raise ShapeMismatchError(f"{what} expects w with 4 dims; got shape {np.shape(w)}")
    if w.dtype != x.dtype:
        raise ShapeMismatchError(f"{what}: w is {w.dtype} but x is {x.dtype}")
    if b is not None and (not isinstance(b, np.ndarray) or b.dtype != x.dtype):
        raise ShapeMismatchError(
            f"{what}: b must be a {x.dtype} array; got {getattr(b, 'dtype', type(b))}"
        )
    return np.ascontiguousarray(x), np.ascontiguousarray(w)


def check_dy(dy, expected: tuple, dtype, what: str):
    if not isinstance(dy, np.ndarray) or dy.shape != tuple(expected):
        raise ShapeMismatchError(
            f"{what}: dy must have shape {tuple(expected)}; got {np.shape(dy)}"
        )
    if dy.dtype != dtype:
        raise ShapeMismatchError(f"{what}: dy is {dy.dtype} but the forward pass ran in {dtype}")
    return np.ascontiguousarray(dy)


def geometry(x_hw: Pair, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    """The geometry of conv2d(x of spatial size x_hw, w of shape w_shape), checked."""
    kh, kw = int(w_shape[2]), int(w_shape[3])
    s, p, d = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if int(groups) < 1:
        raise ShapeMismatchError(f"groups must be >= 1; got {groups}")
    ho = conv_output_size(x_hw[0], kh, s[0], p[0], d[0])
    wo = conv_output_size(x_hw[1], kw, s[1], p[1], d[1])
    return ConvGeometry((kh, kw), s, p, d, int(groups), x_hw, (ho, wo))


# ---------------------------------------------------------------------------------------
# predicates on the geometry
# ---------------------------------------------------------------------------------------


def is_pointwise(g: ConvGeometry) -> bool:
    """1x1 kernel, no padding or groups, every output reading one input pixel: a GEMM
    per image on NCHW data (after subsampling when the stride is above 1). The sizes can
    differ for the adjoint of a transposed conv with output_padding."""
    return (g.kernel == (1, 1) and g.padding == (0, 0) and g.groups == 1
            and (g.stride == (1, 1) and g.in_hw == g.out_hw
                 or g.stride != (1, 1) and _subsample_fits(g)))


def _subsample_fits(g: ConvGeometry) -> bool:
    (sh, sw), (h, w), (ho, wo) = g.stride, g.in_hw, g.out_hw
    return (ho - 1) * sh < h and (wo - 1) * sw < w


def is_dense(g: ConvGeometry) -> bool:
    """The kernel covers the whole unpadded input exactly once: a fully connected layer."""
    return (
        g.kernel == g.in_hw
        and g.padding == (0, 0)
        and g.groups == 1
        and (g.dilation == (1, 1) or g.kernel == (1, 1))
    )


def is_depthwise(g: ConvGeometry, c: int, k: int) -> bool:
    """One input channel per group (groups == C), each giving K/C output channels."""
    return g.groups == c and g.groups > 1 and k % c == 0


# ---------------------------------------------------------------------------------------
# kernel taps that only ever read padding
# ---------------------------------------------------------------------------------------


class TapCrop(NamedTuple):
    """The kernel rows [u0, u1) and columns [v0, v1) that read the input at least once,
    and the geometry of the conv with only those taps (same output, less padding)."""

    u0: int
    u1: int
    v0: int
    v1: int
    geometry: ConvGeometry


def _live_taps(size: int, k: int, s: int, p: int, d: int, out: int) -> tuple[int, int]:
    """Taps [t0, t1) of one axis that some output reads inside [0, size)."""
    live = [u for u in range(k) if any(0 <= i * s + u * d - p < size for i in range(out))]
    return (live[0], live[-1] + 1) if live else (0, k)


def crop_taps(g: ConvGeometry) -> TapCrop | None:
    """The smaller conv that computes the same output when some kernel taps read only
    zero padding (a 3x3 pad-1 conv on a 1x1 map is a 1x1 conv), or None. Taken only when
    the cropped conv keeps symmetric padding and the same output size."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    u0, u1 = _live_taps(h, kh, sh, ph, dh, ho)
    v0, v1 = _live_taps(w, kw, sw, pw, dw, wo)
    if (u0, u1, v0, v1) == (0, kh, 0, kw):
        return None
    nph, npw = ph - u0 * dh, pw - v0 * dw
    if nph < 0 or npw < 0:
        return None
    nk = (u1 - u0, v1 - v0)
    if (arith.conv_output_size(h, nk[0], sh, nph, dh) != ho
            or arith.conv_output_size(w, nk[1], sw, npw, dw) != wo):
        return None
    if h + 2 * nph < arith.effective_kernel(nk[0], dh) or w + 2 * npw < arith.effective_kernel(
            nk[1], dw):
        return None
    d = (dh if nk[0] > 1 else 1, dw if nk[1] > 1 else 1)
    return TapCrop(u0, u1, v0, v1, ConvGeometry(nk, g.stride, (nph, npw), d, g.groups,
                                                g.in_hw, g.out_hw))
