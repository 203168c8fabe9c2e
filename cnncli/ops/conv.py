"""2-D convolution and transposed convolution: im2col + one BLAS GEMM per group.

Shapes are NCHW for activations and OIHW ``[K, C/groups, kh, kw]`` for conv2d weights.
This is a cross-correlation (the kernel is not flipped), as in every framework:

    y[n,k,i,j] = b[k] + sum_{c,u,v} w[k,c,u,v] * xpad[n, g(k)*Cg + c, i*sh + u*dh, j*sw + v*dw]

The column matrix holds one row per weight tap (c, u, v) and one column per output pixel
(n, i, j), so the forward pass is ``W[K, C*kh*kw] @ cols`` and the backward pass is the two
transposed products ``dW = dY @ cols.T`` and ``dcols = W.T @ dY`` followed by col2im (the
scatter-add that the lecture notes describe as convolving with the flipped filter).

The batch is processed in chunks whose column matrix fits in the L2 cache; the chunk's
columns are rebuilt in the backward pass instead of being stored (which would take
C*kh*kw times the memory of the input), so the cache only keeps a reference to ``x``.
A transposed convolution is the adjoint of conv2d and runs on the same machinery.

float32 3x3 convolutions with stride 1 and padding 1 (and >= 16 channels each way) run
their forward pass and their input gradient by Winograd F(2x2, 3x3) instead (16 GEMMs
over 2x2 output tiles, 2.25x fewer multiply-adds; ``winograd_conv``), and their weight
gradient in the Winograd domain too (``winograd_weight_grad``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnncli import arith
from cnncli.errors import ShapeMismatchError

Pair = tuple[int, int]

#: Target size of one chunk's column matrix; a chunk holds at least one image.
CHUNK_BYTES = 1 << 20

#: Stride-1 convolutions with at most this many output channels skip im2col + GEMM and run
#: a direct Numba kernel: a GEMM with so few rows runs far below peak (LeNet's conv1 has 6).
DIRECT_MAX_CHANNELS = 8
#: Their weight gradient also goes direct when a filter has at most this many taps
#: (C*kh*kw; 27 for a 3x3 conv on RGB): dW = cols @ dY^T is then a skinny GEMM.
DIRECT_MAX_TAPS = 32
#: Other stride-1 convolutions whose per-image column matrix has at most this many entries
#: (C*kh*kw * Ho*Wo; 15,000 for LeNet's C3) run per-image im2col + one batched np.matmul
#: per part: OpenBLAS multiplies such small matrices without packing, about twice as fast
#: as one wide GEMM over the chunk, and the product lands in NCHW directly.
BATCHED_MAX_COLS = 16384
#: Winograd F(2x2, 3x3) (kern.winograd_input/output + 16 GEMMs) for the forward pass
#: (WINOGRAD) and the input gradient (WINOGRAD_DX) of float32 3x3 convs with stride 1,
#: padding 1 and at least WINOGRAD_MIN_CHANNELS input and output channels (tests switch
#: them off for the im2col twins). Not bit-identical to im2col: float32 results agree to
#: about 1e-6 relative. float64 keeps im2col (the golden files), though winograd_conv
#: itself runs either dtype.
WINOGRAD = True
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_DX = True
#: The weight gradient of the same layers in the Winograd domain (winograd_weight_grad):
#: dU[e] = sum over tiles of (A dz A^T)[e] (B^T x B)[e], 16 GEMMs [K, T] @ [T, C], then
#: dW = G^T dU G; False: im2col + GEMM (the twin the tests compare with).
WINOGRAD_DW = True
#: Tiles per chunk of the weight gradient (the 16 GEMMs contract over them; OpenBLAS
#: runs [C, T] @ [T, K] fastest near T = 128 for 32-64 channels).
WINOGRAD_DW_TILES = 128
#: Target size of one chunk's transformed input V [16, C, tiles].
WINOGRAD_CHUNK_BYTES = 1 << 19

#: Apply a fused activation's derivative in the pass that lays dy out for the backward
#: GEMMs (kern.nchw_to_rows_act) where the layer takes that path; False: a separate
#: derivative pass first (the reference twin; tests switch this).
FUSE_ACT_GRAD = True
#: Let the engine run a conv with ReLU and the 2x2 max pooling after it as one op
#: (fuses_relu_maxpool2); False: separate layers (the twin the tests compare with).
FUSE_RELU_MAXPOOL = True
#: The act_y name of that fused pair in _backward_core.
RELU_MAXPOOL2 = "relu+maxpool2"


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
    """What conv2d_backward needs: the input (a reference, not a copy), the weights, and
    the geometry. Columns are recomputed chunk by chunk in the backward pass."""

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    geometry: ConvGeometry


class ConvTransposeCache(NamedTuple):
    """What conv_transpose2d_backward needs: input and weights (references) and the
    geometry of the adjoint conv2d (whose input is this layer's output)."""

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    geometry: ConvGeometry


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


def _pair(v, name: str) -> Pair:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ShapeMismatchError(f"{name} must be an int or a pair (h, w); got {v!r}") from None
    return int(a), int(b)


def _check_arrays(x, w, b, what: str):
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


def _check_dy(dy, expected: tuple, dtype, what: str):
    if not isinstance(dy, np.ndarray) or dy.shape != tuple(expected):
        raise ShapeMismatchError(
            f"{what}: dy must have shape {tuple(expected)}; got {np.shape(dy)}"
        )
    if dy.dtype != dtype:
        raise ShapeMismatchError(f"{what}: dy is {dy.dtype} but the forward pass ran in {dtype}")
    return np.ascontiguousarray(dy)


def _geometry(x_hw: Pair, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    kh, kw = int(w_shape[2]), int(w_shape[3])
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if int(groups) < 1:
        raise ShapeMismatchError(f"groups must be >= 1; got {groups}")
    ho = conv_output_size(x_hw[0], kh, s[0], p[0], d[0])
    wo = conv_output_size(x_hw[1], kw, s[1], p[1], d[1])
    return ConvGeometry((kh, kw), s, p, d, int(groups), x_hw, (ho, wo))


def _chunk(n: int, rows: int, pixels: int, itemsize: int) -> int:
    per_image = max(1, rows * pixels * itemsize)
    return int(min(n, max(1, CHUNK_BYTES // per_image)))


def _is_pointwise(g: ConvGeometry) -> bool:
    """1x1 kernel, stride 1, no padding: one GEMM per image straight on NCHW data. (The
    sizes can differ for the adjoint of a transposed conv with output_padding.)"""
    return (
        g.kernel == (1, 1)
        and g.stride == (1, 1)
        and g.padding == (0, 0)
        and g.groups == 1
        and g.in_hw == g.out_hw
    )


def _is_dense(g: ConvGeometry) -> bool:
    """The kernel covers the whole unpadded input exactly once: a fully connected layer."""
    return (
        g.kernel == g.in_hw
        and g.padding == (0, 0)
        and g.groups == 1
        and (g.dilation == (1, 1) or g.kernel == (1, 1))
    )


# ---------------------------------------------------------------------------------------
# cores shared by conv2d and conv_transpose2d
# ---------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """How the general path lays out one chunk: ``wide`` (stride 1: contiguous im2col on
    a zero-padded copy, GEMM rows ``wr = Wp`` wide) or strided im2col (``wr = Wo``)."""

    wide: bool
    padded: bool
    nb: int
    wr: int
    rows: int  # C*kh*kw


def _plan(g: ConvGeometry, n: int, c: int, itemsize: int) -> _Plan:
    (kh, kw), (ph, pw) = g.kernel, g.padding
    wide = g.stride == (1, 1)
    wr = g.in_hw[1] + 2 * pw if wide else g.out_hw[1]
    r = c * kh * kw
    return _Plan(wide, wide and (ph > 0 or pw > 0), _chunk(n, r, g.out_hw[0] * wr, itemsize), wr, r)


def _padded_buffer(plan: _Plan, g: ConvGeometry, c: int, dtype, nb: int,
                   part: int) -> np.ndarray | None:
    if not plan.padded:
        return None
    from cnncli.ops import _threads

    (h, w), (ph, pw) = g.in_hw, g.padding
    return _threads.workspace("conv.pad", part, nb * c * (h + 2 * ph) * (w + 2 * pw), dtype)


def _fill_cols(kern, x, n0, m, g: ConvGeometry, plan: _Plan, cols, pad_buf) -> None:
    """cols <- im2col of images n0..n0+m-1 of x, in the layout of ``plan``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    ho, wo = g.out_hw
    if not plan.wide:
        kern.im2col(x, n0, m, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
    elif plan.padded:
        c, (h, w) = x.shape[1], g.in_hw
        xp = pad_buf[: m * c * (h + 2 * ph) * (w + 2 * pw)].reshape(m, c, h + 2 * ph, -1)
        kern.pad_chunk(x, n0, m, ph, pw, xp)
        kern.im2col_wide(xp, 0, m, kh, kw, dh, dw, ho, cols)
    else:
        kern.im2col_wide(x, n0, m, kh, kw, dh, dw, ho, cols)


def _scatter_cols(kern, cols, n0, m, g: ConvGeometry, plan: _Plan, dx, pad_buf) -> None:
    """Images n0..n0+m-1 of dx <- col2im(cols) (the adjoint of _fill_cols)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    ho, wo = g.out_hw
    if not plan.wide:
        kern.col2im(cols, n0, m, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, dx)
    elif plan.padded:
        c, (h, w) = dx.shape[1], g.in_hw
        dxp = pad_buf[: m * c * (h + 2 * ph) * (w + 2 * pw)].reshape(m, c, h + 2 * ph, -1)
        kern.col2im_wide(cols, 0, m, kh, kw, dh, dw, ho, dxp)
        kern.crop_chunk(dxp, m, ph, pw, n0, dx)
    else:
        kern.col2im_wide(cols, n0, m, kh, kw, dh, dw, ho, dx)


def _is_direct(g: ConvGeometry, k: int, taps: int | None = None) -> bool:
    """Direct kernels for the forward pass (few output channels) or, given ``taps``, for
    the weight gradient (few output channels or few taps)."""
    if g.stride != (1, 1) or g.groups != 1:
        return False
    return k <= DIRECT_MAX_CHANNELS or (taps is not None and taps <= DIRECT_MAX_TAPS)


def _is_batched(g: ConvGeometry, c: int, k: int) -> bool:
    """Small stride-1 layers that the direct kernel does not take: per-image GEMMs."""
    if g.stride != (1, 1) or g.groups != 1 or k <= DIRECT_MAX_CHANNELS:
        return False
    (kh, kw), (ho, wo) = g.kernel, g.out_hw
    return c * kh * kw * ho * wo <= BATCHED_MAX_COLS


#: Padding (elements) between the 16 Winograd matrices, against L1 set aliasing.
_WINO_SKEW = 16
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def _is_winograd(g: ConvGeometry, c: int, k: int, dtype) -> bool:
    """3x3, stride 1, padding 1, no dilation or groups, same size in and out, float32,
    and enough channels both ways for the 16 GEMMs to pay."""
    return (WINOGRAD and dtype == np.float32 and g.kernel == (3, 3) and g.stride == (1, 1)
            and g.padding == (1, 1) and g.dilation == (1, 1) and g.groups == 1
            and g.in_hw == g.out_hw and min(c, k) >= WINOGRAD_MIN_CHANNELS)


def winograd_weights(w: np.ndarray) -> np.ndarray:
    """U[e, k, c] = (G w[k, c] G^T)[e // 4, e % 4] for w [K, C, 3, 3] (computed in
    float64, returned in w's dtype)."""
    u = np.matmul(np.matmul(_G, w.astype(np.float64)), _G.T)  # [K, C, 4, 4]
    return np.ascontiguousarray(u.transpose(2, 3, 0, 1).reshape(16, w.shape[0], w.shape[1]),
                                dtype=w.dtype)


def winograd_conv(src: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool,
                  y: np.ndarray, n0: int, m: int, strides: tuple[int, int, int],
                  part: int, pool_idx: np.ndarray | None = None) -> None:
    """y[n0:n0+m] <- conv2d(images 0..m-1 of src, stride 1, padding 1) (+ bias, ReLU)
    by Winograd F(2x2, 3x3), given ``u = winograd_weights(w)``. ``src`` is flat, element
    (n, c, i, j) at n*ns + c*cs + i*rs + j for ``strides = (ns, cs, rs)`` (NCHW, or the
    backward pass's row layout); y is NCHW [N, K, H, W]. Runs serially, in chunks, with
    the workspaces of ``part``.

    With ``pool_idx`` (uint8 like y, or empty at inference) the output pass also applies
    ReLU and a 2x2 stride-2 max pooling (kern.winograd_output_pool): y is then
    [N, K, H/2, W/2] for an even H and W, and the windows' winners go to pool_idx."""
    from cnncli.ops import _kernels as kern
    from cnncli.ops import _threads

    k, c = u.shape[1], u.shape[2]
    h, wd = y.shape[2], y.shape[3]
    if pool_idx is not None:
        h, wd = 2 * h, 2 * wd
    th, tw = (h + 1) // 2, (wd + 1) // 2
    tiles = th * tw
    per_image = 16 * c * tiles * y.itemsize
    nb = int(max(1, min(m, WINOGRAD_CHUNK_BYTES // per_image)))
    # an image too large for one chunk is cut into bands of tile rows
    bands = -(-per_image // WINOGRAD_CHUNK_BYTES)
    nti = th if bands <= 1 else max(1, th // bands)
    band = nb * nti * tw
    plane = _threads.workspace("wino.plane", part, (2 * th + 2) * (2 * tw + 2), y.dtype)
    v_buf = _threads.workspace("wino.v", part, 16 * (c * band + _WINO_SKEW), y.dtype)
    m_buf = _threads.workspace("wino.m", part, 16 * (k * band + _WINO_SKEW), y.dtype)
    ns, cs, rs = strides
    for a in range(0, m, nb):
        mb = min(nb, m - a)
        for ti0 in range(0, th, nti):
            nt = min(nti, th - ti0)
            t = mb * nt * tw
            ct, kt = c * t + _WINO_SKEW, k * t + _WINO_SKEW
            v = v_buf[: 16 * ct]
            kern.winograd_input(src, a, mb, ti0, nt, c, h, wd, ns, cs, rs, th, tw, plane, v, ct)
            mm = m_buf[: 16 * kt]
            np.matmul(u, v.reshape(16, ct)[:, : c * t].reshape(16, c, t),
                      out=mm.reshape(16, kt)[:, : k * t].reshape(16, k, t))
            if pool_idx is None:
                kern.winograd_output(mm, kt, k, mb, ti0, nt, tw, bias, relu, n0 + a, y)
            else:
                kern.winograd_output_pool(mm, kt, k, mb, ti0, nt, tw, bias, pool_idx,
                                          n0 + a, y)


def winograd_weight_grad(x: np.ndarray, dz: np.ndarray, part: int,
                         db: np.ndarray | None = None) -> np.ndarray:
    """dW [K, C, 3, 3] of y = conv2d(x, w, stride 1, padding 1) given dz = dL/dy, for
    contiguous x [m, C, H, W] and dz [m, K, H, W], by Winograd F(2x2, 3x3): per chunk of
    about WINOGRAD_DW_TILES tiles (whole images, or bands of tile rows) V = B^T x B
    (kern.winograd_input, [16, C, T]) and DM = A dz A^T (kern.winograd_dy, tile-major
    [16, T, K]), then dU[e]^T += V[e] @ DM[e]; finally dW = G^T dU G (in float64). Adds
    dz's channel sums to ``db`` (float64 [K]) when given. Serial, with the workspaces of
    ``part``."""
    from cnncli.ops import _kernels as kern
    from cnncli.ops import _threads

    m, c, h, wd = x.shape
    k = dz.shape[1]
    th, tw = (h + 1) // 2, (wd + 1) // 2
    tiles = th * tw
    if tiles >= WINOGRAD_DW_TILES:
        nb, nti = 1, max(1, min(th, WINOGRAD_DW_TILES // tw))
    else:
        nb, nti = max(1, min(m, WINOGRAD_DW_TILES // tiles)), th
    band = nb * nti * tw
    plane = _threads.workspace("wino.plane", part, (2 * th + 2) * (2 * tw + 2), x.dtype)
    v_buf = _threads.workspace("wino.v", part, 16 * (c * band + _WINO_SKEW), x.dtype)
    m_buf = _threads.workspace("wino.m", part, 16 * (k * band + _WINO_SKEW), x.dtype)
    dut = np.empty((16, c, k), dtype=x.dtype)
    dut_tmp = np.empty_like(dut)
    dbv = db if db is not None else np.empty(0, dtype=np.float64)
    xf = x.reshape(-1)
    first = True
    for a in range(0, m, nb):
        mb = min(nb, m - a)
        for ti0 in range(0, th, nti):
            nt = min(nti, th - ti0)
            t = mb * nt * tw
            ct, kt = c * t + _WINO_SKEW, k * t + _WINO_SKEW
            v = v_buf[: 16 * ct]
            kern.winograd_input(xf, a, mb, ti0, nt, c, h, wd, c * h * wd, h * wd, wd, th, tw,
                                plane, v, ct)
            dm = m_buf[: 16 * kt]
            kern.winograd_dy(dz, a, mb, ti0, nt, k, h, wd, th, tw, dm, kt, dbv)
            np.matmul(v.reshape(16, ct)[:, : c * t].reshape(16, c, t),
                      dm.reshape(16, kt)[:, : k * t].reshape(16, t, k),
                      out=dut if first else dut_tmp)
            if not first:
                dut += dut_tmp
            first = False
    d4 = dut.astype(np.float64).reshape(4, 4, c, k).transpose(3, 2, 0, 1)
    return np.matmul(np.matmul(_G.T, d4), _G).astype(x.dtype)


#: Activations that conv2d_forward can apply in its output pass (``act=``).
FUSED_ACTIVATIONS = ("relu", "tanh")
#: Images per call of the direct forward kernel (keeps its output cache-hot for the
#: fused activation).
_DIRECT_IMAGES = 8


def _act_inplace(y: np.ndarray, act: str | None) -> None:
    """Apply a fused activation to (a slice of) the output, in place."""
    if act == "tanh":
        np.tanh(y, out=y)
    elif act == "relu":
        np.maximum(y, 0, out=y)


def _forward_core(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: ConvGeometry,
                  act: str | None = None):
    """y = act(conv2d(x, w) + b) for contiguous, validated arrays (act: None, relu, tanh).

    The batch is split over the worker threads (``_threads.over_batch``); each part runs
    its chunks with its own reused workspaces."""
    from cnncli.ops import _threads

    n, c = x.shape[:2]
    k = w.shape[0]
    ho, wo = g.out_hw
    y = np.empty((n, k, ho, wo), dtype=x.dtype)
    w2 = w.reshape(k, -1)
    bias = b if b is not None else np.empty(0, dtype=x.dtype)
    if _is_dense(g) or _is_pointwise(g):
        if _is_dense(g):
            np.matmul(x.reshape(n, -1), w2.T, out=y.reshape(n, k))
        else:
            np.matmul(w2, x.reshape(n, c, ho * wo), out=y.reshape(n, k, ho * wo))
        if b is not None:
            y += b.reshape(1, k, 1, 1)
        _act_inplace(y, act)
        return y

    from cnncli.ops import _kernels as kern

    if _is_direct(g, k):
        (kh, kw), (ph, pw), (dh, dw) = g.kernel, g.padding, g.dilation

        def direct(lo: int, hi: int, part: int) -> None:
            for n0 in range(lo, hi, _DIRECT_IMAGES):
                n1 = min(hi, n0 + _DIRECT_IMAGES)
                kern.direct_conv_forward(x[n0:n1], w2, bias, kh, kw, ph, pw, dh, dw, ho, wo,
                                         y[n0:n1])
                _act_inplace(y[n0:n1], act)

        _threads.over_batch(direct, n, work=y.size * w2.shape[1])
        return y
    if _is_batched(g, c, k):
        (kh, kw), (ph, pw), (dh, dw) = g.kernel, g.padding, g.dilation
        r, p = w2.shape[1], ho * wo
        b2 = b.reshape(k, 1) if b is not None else None

        nb = _chunk(n, r, p, x.itemsize)

        def batched(lo: int, hi: int, part: int) -> None:
            buf = _threads.workspace("conv.img", part, min(nb, hi - lo) * r * p, x.dtype)
            for n0 in range(lo, hi, nb):
                m = min(nb, hi - n0)
                cols = buf[: m * r * p].reshape(m, r, p)
                kern.im2col_img(x, n0, m, kh, kw, ph, pw, dh, dw, ho, wo, cols)
                yp = y[n0:n0 + m].reshape(m, k, p)
                np.matmul(w2, cols, out=yp)
                if b2 is not None:
                    yp += b2
                _act_inplace(yp, act)

        _threads.over_batch(batched, n, work=y.size * w2.shape[1])
        return y
    if _is_winograd(g, c, k, x.dtype):
        u = winograd_weights(w)
        xf = x.reshape(-1)

        def wino(lo: int, hi: int, part: int) -> None:
            winograd_conv(xf[lo * c * g.in_hw[0] * g.in_hw[1]:], u, bias, act == "relu", y,
                          lo, hi - lo, (c * g.in_hw[0] * g.in_hw[1], g.in_hw[0] * g.in_hw[1],
                                        g.in_hw[1]), part)
            if act == "tanh":
                np.tanh(y[lo:hi], out=y[lo:hi])

        _threads.over_batch(wino, n, work=y.size * w2.shape[1])
        return y
    groups = g.groups
    plan = _plan(g, n, c, x.itemsize)
    q = ho * plan.wr
    wg = w2.reshape(groups, k // groups, -1)
    relu = act == "relu"

    def chunks(lo: int, hi: int, part: int) -> None:
        nb = min(plan.nb, hi - lo)
        cols_buf = _threads.workspace("conv.cols", part, plan.rows * nb * q, x.dtype)
        rows_buf = _threads.workspace("conv.rows", part, k * nb * q, x.dtype)
        pad_buf = _padded_buffer(plan, g, c, x.dtype, nb, part)
        for n0 in range(lo, hi, nb):
            m = min(nb, hi - n0)
            ln = m * q
            cols = cols_buf[: plan.rows * ln].reshape(plan.rows, ln)
            _fill_cols(kern, x, n0, m, g, plan, cols, pad_buf)
            rows = rows_buf[: k * ln].reshape(k, ln)
            if groups == 1:
                np.matmul(w2, cols, out=rows)
            else:
                np.matmul(wg, cols.reshape(groups, -1, ln), out=rows.reshape(groups, -1, ln))
            kern.rows_to_nchw(rows, bias, relu, n0, m, plan.wr, y)
            if act == "tanh":
                np.tanh(y[n0:n0 + m], out=y[n0:n0 + m])

    _threads.over_batch(chunks, n, work=y.size * w2.shape[1])
    return y


def _sum_parts(arrays: list[np.ndarray]) -> np.ndarray:
    """The per-part results of a batch split, summed in part order (deterministic for a
    given thread count), into a new C-contiguous array."""
    total = np.array(arrays[0], order="C", copy=True)
    for a in arrays[1:]:
        total += a
    return total


def _fuses_act_grad(g: ConvGeometry, c: int, k: int) -> bool:
    """Whether _backward_core takes ``act_y`` for this layer: the im2col + GEMM path with
    a GEMM weight gradient (not dense/pointwise, per-image batched or direct)."""
    (kh, kw) = g.kernel
    return not (_is_dense(g) or _is_pointwise(g) or _is_batched(g, c, k)
                or _is_direct(g, k, c * kh * kw))


#: Codes of the activations that kern.nchw_to_rows_act differentiates (the third, ReLU +
#: 2x2 max pooling, only on the Winograd path: conv2d_relu_maxpool2_backward).
_ACT_CODES = {"relu": 1, "tanh": 2, RELU_MAXPOOL2: 3}


def _backward_core(x, dy, w, g: ConvGeometry, need_dx: bool, need_dw: bool, prep=None,
                   act_y=None):
    """(dx, dw, extras) of y = conv2d(x, w) given dy, for contiguous validated arrays.

    ``x`` may be None when only dx is needed (its shape is then taken from ``g``).
    ``prep(lo, hi)``, when given, runs first on each part of the batch (in that part's
    thread) and may fill ``dy[lo:hi]``; its return values come back as ``extras`` in part
    order (the fused activation derivative and the bias gradient use this). Where
    _is_winograd holds, dx is computed per part after the dW chunks, as a Winograd conv
    of dz with the flipped, transposed weights.
    ``act_y=(name, y, with_bias)``, only where _fuses_act_grad holds and without
    ``prep``: dy is the gradient of ``y = act(z)`` and the activation derivative is applied
    in the pass that lays dy out for the GEMMs; ``extras`` are then each part's float64
    channel sums of dz (the bias gradient) when ``with_bias``, else None.
    """
    from cnncli.ops import _threads

    n, k = dy.shape[:2]
    c = w.shape[1] * g.groups
    ho, wo = g.out_hw
    h, wd = g.in_hw
    w2 = w.reshape(k, -1)
    dx = np.empty((n, c, h, wd), dtype=dy.dtype) if need_dx else None
    dw = None

    if _is_dense(g) or _is_pointwise(g):
        extras = _threads.over_batch(lambda lo, hi, p: prep(lo, hi), n,
                                     work=dy.size * 8) if prep else []
        dense = _is_dense(g)
        d2 = dy.reshape(n, k) if dense else dy.reshape(n, k, ho * wo)
        if need_dx:
            if dense:
                np.matmul(d2, w2, out=dx.reshape(n, -1))
            else:
                np.matmul(w2.T, d2, out=dx.reshape(n, c, h * wd))
        if need_dw:
            if dense:
                dw = (d2.T @ x.reshape(n, -1)).reshape(w.shape)
            else:
                dw = np.matmul(d2, x.reshape(n, c, h * wd).transpose(0, 2, 1)).sum(axis=0)
                dw = dw.reshape(w.shape)
        return dx, dw, extras

    from cnncli.ops import _kernels as kern

    (kh, kw) = g.kernel
    if _is_batched(g, c, k):
        return _backward_batched(x, dy, w2, g, need_dx, need_dw, prep, dx, w.shape)
    direct_dw = need_dw and _is_direct(g, k, c * kh * kw)
    groups = g.groups
    plan = _plan(g, n, c, dy.itemsize)
    r, q = plan.rows, ho * plan.wr
    kg, rg = k // groups, r // groups
    wg = w2.reshape(groups, kg, rg)
    wino_dw = (need_dw and not direct_dw and WINOGRAD_DW and x is not None
               and _is_winograd(g, c, k, dy.dtype))
    gemm_dw = need_dw and not direct_dw and not wino_dw
    wino_dx = need_dx and WINOGRAD_DX and _is_winograd(g, k, c, dy.dtype)
    if wino_dx:  # dx = conv2d(dz, w flipped, channels swapped), stride 1, padding 1
        u_dx = winograd_weights(np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]))
        no_bias = np.empty(0, dtype=dy.dtype)

    act_code = 0
    if act_y is not None:
        act_code, y_act = _ACT_CODES[act_y[0]], act_y[1]
        with_db = act_y[2]
        if act_code == 3 and not (wino_dw and (wino_dx or not need_dx)):
            raise ShapeMismatchError("conv2d_relu_maxpool2_backward: the layer no longer "
                                     "takes the Winograd path (WINOGRAD_DW/DX switched off?)")

    def part(lo: int, hi: int, p: int):
        extra = prep(lo, hi) if prep else None
        dwp = None
        if act_y is not None:
            db_acc = np.zeros(k if with_db else 0, dtype=np.float64)
            extra = db_acc if with_db else None
        if direct_dw:
            (ph, pw), (dh, dwl) = g.padding, g.dilation
            dwpk = np.empty((-(-k // 4), c * kh * kw, 4), dtype=dy.dtype)
            kern.direct_conv_weight_grad(x[lo:hi], dy[lo:hi], kh, kw, ph, pw, dh, dwl, dwpk)
            dwp = dwpk.transpose(0, 2, 1).reshape(-1, c * kh * kw)[:k]
        if wino_dw:
            dz = dy[lo:hi]
            if act_code == 3:  # dy is the pooled gradient; y_act = (pooled y, winners)
                dz = _threads.workspace("wino.dz", p, (hi - lo) * k * ho * wo,
                                        dy.dtype).reshape(hi - lo, k, ho, wo)
                kern.relu_maxpool2_backward(dy, y_act[0], y_act[1], lo, hi - lo, dz)
            elif act_y is not None:
                dz = _threads.workspace("wino.dz", p, dz.size, dy.dtype).reshape(dz.shape)
                back = kern.relu_backward if act_code == 1 else kern.tanh_backward
                back(dy[lo:hi].reshape(-1), y_act[lo:hi].reshape(-1), dz.reshape(-1))
            # the im2col dx loop below (dx needed, without WINOGRAD_DX) sums db itself
            own_db = act_y is not None and with_db and (wino_dx or not need_dx)
            dwp = winograd_weight_grad(x[lo:hi], dz, p, db_acc if own_db else None)
            dwp = dwp.reshape(k, -1)
            if need_dx and wino_dx:
                winograd_conv(dz.reshape(-1), u_dx, no_bias, False, dx, lo, hi - lo,
                              (k * ho * wo, ho * wo, wo), p)
                return extra, dwp
        if not (need_dx or gemm_dw):
            return extra, dwp
        nb = min(plan.nb, hi - lo)
        cols_buf = _threads.workspace("conv.cols", p, r * nb * q, dy.dtype)
        rows_buf = _threads.workspace("conv.rows", p, k * nb * q, dy.dtype)
        pad_buf = _padded_buffer(plan, g, c, dy.dtype, nb, p)
        if gemm_dw:
            # accumulate dW^T = cols @ dY^T: [rows, K] is the faster GEMM orientation
            dw_t = np.empty((groups, rg, kg), dtype=dy.dtype)
            dw_tmp = np.empty_like(dw_t)
        for n0 in range(lo, hi, nb):
            m = min(nb, hi - n0)
            ln = m * q
            dyt = rows_buf[: k * ln].reshape(k, ln)
            if act_y is None:
                kern.nchw_to_rows(dy, n0, m, plan.wr, dyt)
            else:
                kern.nchw_to_rows_act(dy, y_act, act_code, n0, m, plan.wr, dyt, db_acc)
            dyg = dyt.reshape(groups, kg, ln)
            cols = cols_buf[: r * ln].reshape(r, ln)
            if gemm_dw:
                _fill_cols(kern, x, n0, m, g, plan, cols, pad_buf)
                cg = cols.reshape(groups, rg, ln)
                np.matmul(cg, dyg.transpose(0, 2, 1), out=dw_t if n0 == lo else dw_tmp)
                if n0 != lo:
                    dw_t += dw_tmp
            if need_dx and not wino_dx:
                np.matmul(wg.transpose(0, 2, 1), dyg, out=cols.reshape(groups, rg, ln))
                _scatter_cols(kern, cols, n0, m, g, plan, dx, pad_buf)
        if wino_dx:
            dz = dy[lo:hi].reshape(-1)
            if act_y is not None:
                src = dz
                dz = _threads.workspace("wino.dz", p, src.size, dy.dtype)
                back = kern.relu_backward if act_code == 1 else kern.tanh_backward
                back(src, y_act[lo:hi].reshape(-1), dz)
            winograd_conv(dz, u_dx, no_bias, False, dx, lo, hi - lo, (k * ho * wo, ho * wo, wo), p)
        if gemm_dw:
            dwp = dw_t.transpose(0, 2, 1).reshape(k, r // groups)
        return extra, dwp

    results = _threads.over_batch(part, n, work=2 * dy.size * w2.shape[1])
    if need_dw:
        dw = _sum_parts([dwp for _, dwp in results]).reshape(w.shape)
    return dx, dw, [e for e, _ in results]


def _backward_batched(x, dy, w2, g: ConvGeometry, need_dx: bool, need_dw: bool, prep,
                      dx, w_shape):
    """_backward_core for _is_batched layers: per part, dW^T = sum_n cols[n] @ dy[n]^T
    (one batched matmul, then a sum over the part's images in a fixed order) and
    dx = col2im(W^T @ dy[n])."""
    from cnncli.ops import _kernels as kern
    from cnncli.ops import _threads

    n, k = dy.shape[:2]
    (kh, kw), (ph, pw), (dh, dwl) = g.kernel, g.padding, g.dilation
    ho, wo = g.out_hw
    r, p = w2.shape[1], ho * wo
    w2t = w2.T

    nb = _chunk(n, r, p, dy.itemsize)

    def part(lo: int, hi: int, q: int):
        extra = prep(lo, hi) if prep else None
        mb = min(nb, hi - lo)
        buf = _threads.workspace("conv.img", q, mb * r * p, dy.dtype)
        dwt_buf = _threads.workspace("conv.dwt", q, mb * r * k, dy.dtype) if need_dw else None
        dwp = None
        for n0 in range(lo, hi, nb):
            m = min(nb, hi - n0)
            cols = buf[: m * r * p].reshape(m, r, p)
            dyp = dy[n0:n0 + m].reshape(m, k, p)
            if need_dw:
                kern.im2col_img(x, n0, m, kh, kw, ph, pw, dh, dwl, ho, wo, cols)
                dwt = dwt_buf[: m * r * k].reshape(m, r, k)
                np.matmul(cols, dyp.transpose(0, 2, 1), out=dwt)
                if dwp is None:
                    dwp = dwt.sum(axis=0)
                else:
                    dwp += dwt.sum(axis=0)
            if need_dx:
                np.matmul(w2t, dyp, out=cols)
                kern.col2im_img(cols, n0, m, kh, kw, ph, pw, dh, dwl, ho, wo, dx)
        return extra, (dwp.T if need_dw else None)

    results = _threads.over_batch(part, n, work=2 * dy.size * r)
    dw = None
    if need_dw:
        dw = _sum_parts([dwp for _, dwp in results]).reshape(w_shape)
    return dx, dw, [e for e, _ in results]


# ---------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: int | Pair,
    padding: int | Pair,
    dilation: int | Pair = (1, 1),
    groups: int = 1,
    *,
    act: str | None = None,
) -> tuple[np.ndarray, ConvCache]:
    """y [N, K, Ho, Wo] = conv2d(x [N, C, H, W], w [K, C/groups, kh, kw]) + b [K].

    ``padding`` adds that many zero rows/columns on both sides. Output size per axis:
    ``floor((H + 2p - d*(k-1) - 1) / s) + 1``. Output channel k reads the input channels of
    group ``k // (K/groups)``. Returns a new contiguous array of x's dtype.

    ``act`` (one of FUSED_ACTIVATIONS, or None) applies that activation in the output pass;
    the backward pass then takes ``act=(name, y)`` to apply its derivative.
    """
    if act is not None and act not in FUSED_ACTIVATIONS:
        raise ShapeMismatchError(f"conv2d: act must be one of {FUSED_ACTIVATIONS} or None; "
                                 f"got {act!r}")
    x, w = _check_arrays(x, w, b, "conv2d")
    n, c, h, wd = x.shape
    k, cg = w.shape[:2]
    groups = int(groups)
    if groups < 1 or c % groups or k % groups or cg * groups != c:
        raise ShapeMismatchError(
            f"conv2d: x has {c} channels, so w must be [K, {c}/groups={c // max(groups, 1)}, "
            f"kh, kw] with K divisible by groups={groups}; got w {w.shape}, x {x.shape}"
        )
    if b is not None and b.shape != (k,):
        raise ShapeMismatchError(f"conv2d: b must have shape ({k},); got {b.shape}")
    g = _geometry((h, wd), w.shape, stride, padding, dilation, groups)
    y = _forward_core(x, w, b, g, act)
    return y, ConvCache(x, w, b is not None, g)


def conv2d_backward(
    dy: np.ndarray, cache: ConvCache, *, need_dx: bool = True,
    act: tuple[str, np.ndarray] | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) for L = sum(y * dy); dw and db are summed over the batch.

    ``db`` is None when the forward pass had no bias. ``need_dx=False`` skips the input
    gradient (the first layer of a network) and returns dx = None. ``act=(name, y)``, for
    a forward pass run with ``act=name`` (``y`` its output), first multiplies dy by the
    activation's derivative (part by part, in the worker threads).
    """
    from cnncli.ops import activations

    x, w, has_bias, g = cache
    n, k = x.shape[0], w.shape[0]
    dy = _check_dy(dy, (n, k, *g.out_hw), x.dtype, "conv2d_backward")
    prep = None
    if act is not None:
        name, y = act
        if name not in FUSED_ACTIVATIONS or not isinstance(y, np.ndarray) or y.shape != dy.shape:
            raise ShapeMismatchError(f"conv2d_backward: act must be (name, y) with name in "
                                     f"{FUSED_ACTIVATIONS} and y of shape {dy.shape}")
        if _fuses_act_grad(g, w.shape[1] * g.groups, k) and FUSE_ACT_GRAD:
            y = np.ascontiguousarray(y)
            dx, dw, parts = _backward_core(x, dy, w, g, need_dx, True,
                                           act_y=(name, y, has_bias))
            return dx, dw, _sum_parts(parts).astype(x.dtype) if has_bias else None
        dz = np.empty_like(dy)

        def prep(lo: int, hi: int):
            cache_part = activations.ActivationCache(None, y[lo:hi], 0.0)
            activations.backward(name, dy[lo:hi], cache_part, out=dz[lo:hi])
            return dz[lo:hi].sum(axis=(0, 2, 3)) if has_bias else None
    elif has_bias:
        dz = dy

        def prep(lo: int, hi: int):
            return dy[lo:hi].sum(axis=(0, 2, 3))
    else:
        dz = dy
    dx, dw, parts = _backward_core(x, dz, w, g, need_dx, True, prep)
    return dx, dw, _sum_parts(parts) if has_bias else None


# ---------------------------------------------------------------------------------------
# conv2d + ReLU + 2x2 max pooling in one pass (the engine pairs such layers)
# ---------------------------------------------------------------------------------------


class ConvPoolCache(NamedTuple):
    """What conv2d_relu_maxpool2_backward needs: the conv's cache, the pooled output and
    each window's winner (0..3, row-major)."""

    conv: ConvCache
    y: np.ndarray
    idx: np.ndarray


def fuses_relu_maxpool2(in_chw: tuple[int, int, int], w_shape: tuple, stride, padding,
                        dilation, groups: int, dtype) -> bool:
    """Whether a conv with ReLU followed by a 2x2 stride-2 max pooling (no padding) can run
    as conv2d_relu_maxpool2_forward: the float32 layers that take the Winograd path
    (_is_winograd, not the per-image batched GEMMs of small maps; Winograd input and
    weight gradients on) with an even output size, so that every 2x2 Winograd tile is one
    pooling window."""
    c, h, wd = in_chw
    k = int(w_shape[0])
    g = _geometry((h, wd), tuple(w_shape), stride, padding, dilation, groups)
    return (FUSE_RELU_MAXPOOL and WINOGRAD_DX and WINOGRAD_DW
            and not (_is_dense(g) or _is_pointwise(g) or _is_batched(g, c, k))
            and _is_winograd(g, c, k, np.dtype(dtype))
            and g.out_hw[0] % 2 == 0 and g.out_hw[1] % 2 == 0)


def conv2d_relu_maxpool2_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *,
                                 argmax: bool = True) -> tuple[np.ndarray, ConvPoolCache]:
    """y [N, K, H/2, W/2] = maxpool2x2(ReLU(conv2d(x, w, stride 1, padding 1) + b)) where
    fuses_relu_maxpool2 holds: bit-identical to the three ops run one after the other,
    without writing or re-reading the full-size activation. ``argmax=False`` (inference)
    skips recording the winners; the backward pass then cannot run."""
    x, w = _check_arrays(x, w, b, "conv2d_relu_maxpool2")
    n, c, h, wd = x.shape
    k = w.shape[0]
    if not fuses_relu_maxpool2((c, h, wd), w.shape, 1, 1, 1, 1, x.dtype):
        raise ShapeMismatchError(
            f"conv2d_relu_maxpool2: x {x.shape}, w {w.shape} ({x.dtype}) is not a float32 "
            "3x3 stride-1 pad-1 conv with >= 16 channels each way and an even size")
    if b is not None and b.shape != (k,):
        raise ShapeMismatchError(f"conv2d_relu_maxpool2: b must have shape ({k},); "
                                 f"got {b.shape}")
    from cnncli.ops import _threads

    g = _geometry((h, wd), w.shape, 1, 1, 1, 1)
    y = np.empty((n, k, h // 2, wd // 2), dtype=x.dtype)
    idx = np.empty(y.shape if argmax else (0,), dtype=np.uint8)
    u = winograd_weights(w)
    bias = b if b is not None else np.empty(0, dtype=x.dtype)
    xf = x.reshape(-1)
    per = c * h * wd

    def wino(lo: int, hi: int, part: int) -> None:
        winograd_conv(xf[lo * per:], u, bias, True, y, lo, hi - lo, (per, h * wd, wd), part,
                      pool_idx=idx)

    _threads.over_batch(wino, n, work=n * k * h * wd * c * 9)
    return y, ConvPoolCache(ConvCache(x, w, b is not None, g), y, idx)


def conv2d_relu_maxpool2_backward(dy: np.ndarray, cache: ConvPoolCache, *,
                                  need_dx: bool = True
                                  ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) for L = sum(y * dy), y from conv2d_relu_maxpool2_forward: the pooled
    gradient is spread to the winners where y > 0 (kern.relu_maxpool2_backward), part by
    part, straight into the Winograd weight and input gradients."""
    x, w, has_bias, g = cache.conv
    dy = _check_dy(dy, cache.y.shape, x.dtype, "conv2d_relu_maxpool2_backward")
    if cache.idx.shape != cache.y.shape:
        raise ShapeMismatchError("conv2d_relu_maxpool2_backward: the forward pass ran with "
                                 "argmax=False (inference)")
    dx, dw, parts = _backward_core(x, dy, w, g, need_dx, True,
                                   act_y=(RELU_MAXPOOL2, (cache.y, cache.idx), has_bias))
    return dx, dw, _sum_parts(parts).astype(x.dtype) if has_bias else None


# ---------------------------------------------------------------------------------------
# conv_transpose2d
# ---------------------------------------------------------------------------------------


def conv_transpose2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: int | Pair,
    padding: int | Pair,
    output_padding: int | Pair = (0, 0),
    dilation: int | Pair = (1, 1),
    groups: int = 1,
) -> tuple[np.ndarray, ConvTransposeCache]:
    """y [N, C_out, Ho, Wo] = conv_transpose2d(x [N, C_in, H, W], w [C_in, C_out/groups, kh, kw]).

    ``Ho = (H-1)*s - 2p + d*(kh-1) + output_padding + 1``. Every input pixel adds a weighted
    copy of the kernel to the (uncropped) output, which is then cropped by ``padding`` on
    each side. This is exactly the input gradient of ``conv2d(., w, s, p, d, groups)``.
    """
    x, w = _check_arrays(x, w, b, "conv_transpose2d")
    n, c_in, h, wd = x.shape
    groups = int(groups)
    if groups < 1 or w.shape[0] != c_in or c_in % groups:
        raise ShapeMismatchError(
            f"conv_transpose2d: x has {c_in} channels, so w must be [{c_in}, C_out/groups, "
            f"kh, kw] with {c_in} divisible by groups={groups}; got w {w.shape}"
        )
    c_out = w.shape[1] * groups
    if b is not None and b.shape != (c_out,):
        raise ShapeMismatchError(f"conv_transpose2d: b must have shape ({c_out},); got {b.shape}")
    kh, kw = w.shape[2:]
    s, p = _pair(stride, "stride"), _pair(padding, "padding")
    d, op = _pair(dilation, "dilation"), _pair(output_padding, "output_padding")
    ho = deconv_output_size(h, kh, s[0], p[0], op[0], d[0])
    wo = deconv_output_size(wd, kw, s[1], p[1], op[1], d[1])
    # The adjoint conv2d maps [N, C_out, ho, wo] -> [N, C_in, h, wd]. With output_padding
    # it would produce one more row/column than x has; those output rows are never read.
    g = ConvGeometry((kh, kw), s, p, d, groups, (ho, wo), (h, wd))
    y, _, _ = _backward_core(None, x, w, g, True, False)
    if b is not None:
        y += b.reshape(1, c_out, 1, 1)
    return y, ConvTransposeCache(x, w, b is not None, g)


def conv_transpose2d_backward(
    dy: np.ndarray, cache: ConvTransposeCache, *, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw, db): ``dx = conv2d(dy, w, s, p, d, groups)`` and dw is conv2d's weight
    gradient with dy as the input and x as the upstream gradient."""
    x, w, has_bias, g = cache
    n, c_out = x.shape[0], w.shape[1] * g.groups
    dy = _check_dy(dy, (n, c_out, *g.in_hw), x.dtype, "conv_transpose2d_backward")
    dx = _forward_core(dy, w, None, g) if need_dx else None
    _, dw, _ = _backward_core(dy, x, w, g, False, True)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
