"""Winograd F(2x2, 3x3) for 3x3, stride-1, pad-1 convolutions (float32 in the engine).

The output is cut into 2x2 tiles; tile t reads a 4x4 input patch d and

    y_tile = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise over the 4x4 = 16 e)

so the products over channels are 16 GEMMs ``M[e] = U[e] [K, C] @ V[e] [C, tiles]``, 2.25x
fewer multiply-adds than im2col. The input gradient is the same conv of dz with the
flipped, transposed weights; the weight gradient is computed in the Winograd domain,
``dU[e] = sum over tiles of (A dz A^T)[e] (B^T x B)[e]`` (16 GEMMs), then ``dW = G^T dU G``.
Not bit-identical to im2col: float32 results agree to about 1e-6 relative. float64 runs
too (the tests' exact twin), but the engine keeps im2col there (the golden files).
"""

from __future__ import annotations

import numpy as np

from cnncli.ops.conv.common import act_inplace
from cnncli.ops.conv.geometry import ConvGeometry
from cnncli.ops.options import EngineOptions

#: Padding (elements) between the 16 Winograd matrices, against L1 set aliasing.
_SKEW = 16
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: T[a*4 + b, u*3 + v] = G[a, u] * G[b, v]: the weight transform as one [16, 9] matrix.
_T = np.einsum("au,bv->abuv", _G, _G).reshape(16, 9)


def _t(dtype) -> np.ndarray:
    return _T.astype(dtype)


def winograd_weights(w: np.ndarray) -> np.ndarray:
    """U[e, k, c] = (G w[k, c] G^T)[e // 4, e % 4] for w [K, C, 3, 3]: one [16, 9] @ [9,
    K*C] GEMM (the taps of w read transposed, no copy)."""
    k, c = w.shape[:2]
    return np.matmul(_t(w.dtype), w.reshape(k * c, 9).T).reshape(16, k, c)


def winograd_weights_dx(w: np.ndarray) -> np.ndarray:
    """The weights of the input gradient, dx = conv2d(dz, w flipped, channels swapped):
    U'[e, c, k] (a transposed view of a [16, K, C] array; matmul reads it as is).
    Flipping a 3x3 filter reverses the order of its 9 taps."""
    k, c = w.shape[:2]
    u = np.matmul(_t(w.dtype)[:, ::-1], w.reshape(k * c, 9).T).reshape(16, k, c)
    return u.transpose(0, 2, 1)


def weights_from_domain(dut: np.ndarray) -> np.ndarray:
    """dW [K, C, 3, 3] = G^T dU G from dU^T [16, C, K] (the weight gradient's GEMMs)."""
    _, c, k = dut.shape
    d9 = np.matmul(_t(dut.dtype).T, dut.reshape(16, c * k))  # [9, C*K]
    return np.ascontiguousarray(d9.reshape(3, 3, c, k).transpose(3, 2, 0, 1))


#: When the transformed weights U (16*K*C values) outgrow this, a chunk gets at least
#: _MIN_TILES tiles: each chunk's 16 GEMMs stream all of U again, and with 512 channels on
#: 4x4 maps (16 tiles a chunk of 512 KB) that streaming took longer than the products.
_U_CACHED_BYTES = 1 << 20
_MIN_TILES = 128


def chunking(c: int, k: int, h: int, wd: int, m: int, itemsize: int,
             chunk_bytes: int) -> tuple[int, int]:
    """(images per chunk, tile rows per band) of winograd_conv for ``m`` images, C -> K
    channels and an output of h x wd: chunks of about ``chunk_bytes`` of transformed input
    (an image larger than that is cut into bands of tile rows), but at least _MIN_TILES
    tiles where U does not stay in cache."""
    th, tw = (h + 1) // 2, (wd + 1) // 2
    per_image = 16 * c * th * tw * itemsize
    if 16 * k * c * itemsize > _U_CACHED_BYTES:
        chunk_bytes = max(chunk_bytes, 16 * c * _MIN_TILES * itemsize)
    nb = int(max(1, min(m, chunk_bytes // per_image)))
    bands = -(-per_image // chunk_bytes)
    nti = th if bands <= 1 else max(1, th // bands)
    return nb, nti


def conv_workspaces(c: int, k: int, h: int, wd: int, m: int, itemsize: int,
                    chunk_bytes: int) -> dict[str, int]:
    """Workspace tag -> elements of winograd_conv for ``m`` images, C -> K channels, an
    output of h x wd (before any fused pooling): the input plane and the V and M bands."""
    th, tw = (h + 1) // 2, (wd + 1) // 2
    nb, nti = chunking(c, k, h, wd, m, itemsize, chunk_bytes)
    return _bands(c, k, th, tw, nb * nti * tw)


def _bands(c: int, k: int, th: int, tw: int, band: int) -> dict[str, int]:
    return {"wino.plane": (2 * th + 2) * (2 * tw + 2), "wino.v": 16 * (c * band + _SKEW),
            "wino.m": 16 * (k * band + _SKEW)}


def weight_grad_workspaces(c: int, k: int, h: int, wd: int, m: int,
                           tiles_per_chunk: int) -> dict[str, int]:
    """Workspace tag -> elements of winograd_weight_grad for x [m, C, h, wd], K filters."""
    th, tw = (h + 1) // 2, (wd + 1) // 2
    if th * tw >= tiles_per_chunk:
        nb, nti = 1, max(1, min(th, tiles_per_chunk // tw))
    else:
        nb, nti = max(1, min(m, tiles_per_chunk // (th * tw))), th
    return _bands(c, k, th, tw, nb * nti * tw)


def _buffers(sizes: dict[str, int], part: int, dtype):
    from cnncli.ops import _threads

    return tuple(_threads.workspace(tag, part, sizes[tag], dtype)
                 for tag in ("wino.plane", "wino.v", "wino.m"))


def winograd_conv(src: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool,
                  y: np.ndarray, n0: int, m: int, strides: tuple[int, int, int],
                  part: int, pool_idx: np.ndarray | None = None,
                  chunk_bytes: int = EngineOptions.winograd_chunk_bytes) -> None:
    """y[n0:n0+m] <- conv2d(images 0..m-1 of src, stride 1, padding 1) (+ bias, ReLU)
    given ``u = winograd_weights(w)``. ``src`` is flat, element (n, c, i, j) at n*ns + c*cs
    + i*rs + j for ``strides = (ns, cs, rs)``; y is NCHW [N, K, H, W]. Runs serially, in
    chunks of about ``chunk_bytes`` of transformed input, with the workspaces of ``part``.

    With ``pool_idx`` (uint8 like y, or empty at inference) the output pass also applies
    ReLU and a 2x2 stride-2 max pooling (kern.winograd_output_pool): y is then
    [N, K, H/2, W/2] for an even H and W, and the windows' winners go to pool_idx."""
    from cnncli.ops import _kernels as kern

    k, c = u.shape[1], u.shape[2]
    h, wd = y.shape[2], y.shape[3]
    if pool_idx is not None:
        h, wd = 2 * h, 2 * wd
    th, tw = (h + 1) // 2, (wd + 1) // 2
    nb, nti = chunking(c, k, h, wd, m, y.itemsize, chunk_bytes)
    plane, v_buf, m_buf = _buffers(conv_workspaces(c, k, h, wd, m, y.itemsize, chunk_bytes),
                                   part, y.dtype)
    ns, cs, rs = strides
    for a in range(0, m, nb):
        mb = min(nb, m - a)
        for ti0 in range(0, th, nti):
            nt = min(nti, th - ti0)
            t = mb * nt * tw
            ct, kt = c * t + _SKEW, k * t + _SKEW
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
                         db: np.ndarray | None = None,
                         tiles_per_chunk: int = EngineOptions.winograd_dw_tiles) -> np.ndarray:
    """dW [K, C, 3, 3] of y = conv2d(x, w, stride 1, padding 1) given dz = dL/dy, for
    contiguous x [m, C, H, W] and dz [m, K, H, W]: per chunk of about ``tiles_per_chunk``
    tiles (whole images, or bands of tile rows) V = B^T x B (kern.winograd_input,
    [16, C, T]) and DM = A dz A^T (kern.winograd_dy, tile-major [16, T, K]), then
    dU[e]^T += V[e] @ DM[e]; finally dW = G^T dU G. Adds dz's channel sums to ``db``
    (float64 [K]) when given. Serial, with the workspaces of ``part``."""
    from cnncli.ops import _kernels as kern

    m, c, h, wd = x.shape
    k = dz.shape[1]
    th, tw = (h + 1) // 2, (wd + 1) // 2
    tiles = th * tw
    if tiles >= tiles_per_chunk:
        nb, nti = 1, max(1, min(th, tiles_per_chunk // tw))
    else:
        nb, nti = max(1, min(m, tiles_per_chunk // tiles)), th
    plane, v_buf, m_buf = _buffers(weight_grad_workspaces(c, k, h, wd, m, tiles_per_chunk),
                                   part, x.dtype)
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
            ct, kt = c * t + _SKEW, k * t + _SKEW
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
    return weights_from_domain(dut)


# ---------------------------------------------------------------------------------------
# the path's entry points (images lo..hi-1, one part)
# ---------------------------------------------------------------------------------------


def forward(x, u, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    """y[lo:hi] by Winograd, given the transformed weights ``u`` (winograd_weights)."""
    c, (h, w) = x.shape[1], g.in_hw
    per = c * h * w
    winograd_conv(x.reshape(-1)[lo * per:], u, bias, act == "relu", y, lo, hi - lo,
                  (per, h * w, w), part, chunk_bytes=opts.winograd_chunk_bytes)
    if act not in (None, "relu"):
        act_inplace(y[lo:hi], act)


def input_grad(dz, u_dx, g: ConvGeometry, dx, lo: int, hi: int, part: int,
               opts: EngineOptions) -> None:
    """dx[lo:hi] = conv2d(dz, w flipped and transposed) by Winograd, dz the part's only;
    ``u_dx = winograd_weights_dx(w)``."""
    k = dz.shape[1]
    ho, wo = g.out_hw
    no_bias = np.empty(0, dtype=dz.dtype)
    winograd_conv(dz.reshape(-1), u_dx, no_bias, False, dx, lo, hi - lo,
                  (k * ho * wo, ho * wo, wo), part, chunk_bytes=opts.winograd_chunk_bytes)


def weight_grad(x, dz, g: ConvGeometry, lo: int, hi: int, part: int, opts: EngineOptions,
                db: np.ndarray | None = None) -> np.ndarray:
    """The part's dW [K, C*9] (and dz's channel sums added to db, when given)."""
    k = dz.shape[1]
    return winograd_weight_grad(x[lo:hi], dz, part, db,
                                tiles_per_chunk=opts.winograd_dw_tiles).reshape(k, -1)
