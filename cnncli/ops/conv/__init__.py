"""2-D convolution and transposed convolution, dispatched to one kernel path per direction.

``conv2d_forward`` / ``conv2d_backward`` (and the transposed pair) check their arguments,
take the paths of a :class:`~cnncli.ops.conv.algo.ConvAlgo` (given by the engine's plan, or
chosen here by ``algo.choose`` from the geometry and the :class:`EngineOptions`), split the
batch over the worker threads and run each part on the chosen path's module:

* ``im2col``: chunked im2col + GEMM, the general path (and the twin of the others);
* ``pointwise``: 1x1 convs and dense-like convs as plain GEMMs;
* ``direct``, ``batched``: LeNet-sized layers; ``depthwise``: groups == channels;
* ``winograd``: F(2x2, 3x3) for float32 3x3 stride-1 pad-1 layers;
* ``fused_pool``: conv + ReLU + 2x2 max pooling in the Winograd output pass.

The backward pass keeps the forward's paths (they are in the cache). Each part applies
the activation's derivative (inside im2col's layout pass where it can), sums the bias
gradient in float64, then runs the weight-gradient and input-gradient paths; per-part
weight gradients are summed in part order, so results are deterministic for a given
thread count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnncli.errors import ShapeMismatchError
from cnncli.ops.conv import batched, depthwise, direct, im2col, pointwise, winograd
from cnncli.ops.conv.algo import ConvAlgo, candidates, choose
from cnncli.ops.conv.common import (
    FUSED_ACTIVATIONS,
    act_grad,
    channel_sums,
    sum_parts,
)
from cnncli.ops.conv.geometry import (
    ConvCache,
    ConvGeometry,
    ConvTransposeCache,
    Pair,
    check_arrays,
    check_dy,
    conv_output_size,
    deconv_output_size,
    geometry,
    pair,
)
from cnncli.ops.conv.winograd import winograd_conv, winograd_weight_grad, winograd_weights
from cnncli.ops.options import DEFAULT, EngineOptions

__all__ = [
    "FUSED_ACTIVATIONS", "ConvAlgo", "ConvCache", "ConvGeometry", "ConvTransposeCache",
    "EngineOptions", "candidates", "choose", "conv2d_backward", "conv2d_forward",
    "conv_output_size", "conv_transpose2d_backward", "conv_transpose2d_forward",
    "deconv_output_size", "geometry", "winograd_conv", "winograd_weight_grad",
    "winograd_weights",
]


# ---------------------------------------------------------------------------------------
# the paths, by direction
# ---------------------------------------------------------------------------------------


def _im2col_dx(dz, w, g, dx, lo, hi, part, opts):
    im2col.backward(None, dz, w, g, dx, lo, hi, part, opts, need_dx=True, need_dw=False)


def _im2col_dw(x, dz, w, g, lo, hi, part, opts):
    return im2col.backward(x, dz, w, g, None, lo, hi, part, opts, need_dx=False, need_dw=True)


def _batched_dx(dz, w, g, dx, lo, hi, part, opts):
    batched.backward(None, dz, w, g, dx, lo, hi, part, opts, need_dx=True, need_dw=False)


def _batched_dw(x, dz, w, g, lo, hi, part, opts):
    return batched.backward(x, dz, w, g, None, lo, hi, part, opts, need_dx=False, need_dw=True)


def _without_w(fn):
    """A weight-gradient path that needs no weights, in the table's signature."""
    return lambda x, dz, w, g, lo, hi, part, opts: fn(x, dz, g, lo, hi, part, opts)


#: direction -> path -> function; forward(x, w, bias, g, act, y, lo, hi, part, opts),
#: input_grad(dz, w, g, dx, lo, hi, part, opts), weight_grad(x, dz, w, g, lo, hi, part,
#: opts) -> the part's dW [K, C/groups*kh*kw]. dz is the part's only; x, y, dx are whole.
_FORWARD = {"dense": pointwise.forward, "pointwise": pointwise.forward,
            "depthwise": depthwise.forward, "direct": direct.forward,
            "batched": batched.forward, "winograd": winograd.forward, "im2col": im2col.forward}
_INPUT_GRAD = {"dense": pointwise.input_grad, "pointwise": pointwise.input_grad,
               "depthwise": depthwise.input_grad, "batched": _batched_dx,
               "winograd": winograd.input_grad, "im2col": _im2col_dx}
_WEIGHT_GRAD = {"dense": _without_w(pointwise.weight_grad),
                "pointwise": _without_w(pointwise.weight_grad),
                "depthwise": _without_w(depthwise.weight_grad),
                "direct": _without_w(direct.weight_grad), "batched": _batched_dw,
                "im2col": _im2col_dw}


class PassCache:
    """Weights prepared once per pass and shared by the parts that run it (Winograd's
    transformed weights, a cropped kernel): ``get(key, make)`` computes on first use.
    The engine makes one per forward/backward pair; without one, each call prepares its
    own. Different keys are prepared concurrently (the lock is not held while ``make``
    runs); a part asking for a key that another is preparing waits for it."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._items: dict = {}
        self._pending: dict = {}  # key -> Event of the thread preparing it

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Forget what was prepared, except entries whose key starts with a name in
        ``keep`` (a training forward keeps its cropped kernels for the backward)."""
        with self._lock:
            if not keep:
                self._items.clear()
                return
            self._items = {k: v for k, v in self._items.items() if k[0] in keep}

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key, make):
        import threading

        while True:
            with self._lock:
                if key in self._items:
                    return self._items[key]
                wait = self._pending.get(key)
                if wait is None:
                    done = self._pending[key] = threading.Event()
                    break
            wait.wait()  # another part prepares it (if that failed, try again here)
        try:
            value = make()
            with self._lock:
                self._items[key] = value
            return value
        finally:
            with self._lock:
                del self._pending[key]
            done.set()


def weight_preparations(w: np.ndarray, algo: ConvAlgo, direction: str
                        ) -> list[tuple[tuple, Any, int]]:
    """(key, make, cost) of each array that run_forward (``direction`` 'fwd') or
    run_backward ('bwd') will ask a PassCache for, so that a model can prepare a whole
    pass's weights up front, shared out over its worker threads, instead of one part
    preparing each in turn while the others wait (ResNet-18: 7 ms a step)."""
    # costs in about 0.3 ns units, as measured: a crop reads w once (0.8 ms for
    # [512, 512, 3, 3]), a Winograd transform is a small GEMM and takes ~4x per weight
    if algo.crop is not None:  # a cropped kernel is never 3x3: no Winograd
        return [(*crop_entry(w, algo.crop), w.size)]
    if direction == "fwd" and algo.fwd == "winograd":
        return [(*wino_entry(w), 4 * w.size)]
    if direction == "bwd" and algo.dx == "winograd":
        return [(*wino_dx_entry(w), 4 * w.size)]
    return []


# The PassCache entries of derived weights, (key, make): one definition each, for the
# paths that read them and for Model._prepare, which makes them ahead of a pass.
def crop_entry(w: np.ndarray, crop) -> tuple[tuple, Any]:
    return ("crop", id(w)), lambda: crop_weights(w, crop)


def wino_entry(w: np.ndarray) -> tuple[tuple, Any]:
    return ("wino", id(w)), lambda: winograd.winograd_weights(w)


def wino_dx_entry(w: np.ndarray) -> tuple[tuple, Any]:
    return ("wino.dx", id(w)), lambda: winograd.winograd_weights_dx(w)


def _prepared(shared: PassCache | None, key, make):
    return make() if shared is None else shared.get(key, make)


def _effective_weights(w: np.ndarray, algo: ConvAlgo, shared: PassCache | None):
    """The weights the paths see: w, or its live taps (algo.crop)."""
    crop = algo.crop
    if crop is None:
        return w
    return _prepared(shared, *crop_entry(w, crop))


def crop_weights(w: np.ndarray, crop) -> np.ndarray:
    """w [K, C/groups, kh, kw] cut to the live taps of ``crop`` (a TapCrop), contiguous.
    ``take`` on the flattened taps: 4x faster than a copy of the 4-D slice for a 2x2 crop
    (NumPy's strided copy with an inner run of 2)."""
    kh, kw = w.shape[2:]
    taps = [u * kw + v for u in range(crop.u0, crop.u1) for v in range(crop.v0, crop.v1)]
    nh, nw = crop.u1 - crop.u0, crop.v1 - crop.v0
    return w.reshape(-1, kh * kw).take(taps, axis=1).reshape(*w.shape[:2], nh, nw)


def _uncrop(dw: np.ndarray, w_shape, algo: ConvAlgo, uncrop: bool = True) -> np.ndarray:
    crop = algo.crop
    if crop is None:
        return dw.reshape(w_shape)
    kh, kw = crop.geometry.kernel
    dw = dw.reshape(w_shape[0], w_shape[1], kh, kw)
    return uncrop_grad(dw, w_shape, crop) if uncrop else dw


def uncrop_grad(dw: np.ndarray, w_shape, crop) -> np.ndarray:
    """The full [K, C/groups, kh, kw] weight gradient from the gradient of the live taps
    ``dw`` (``crop``, a TapCrop): zero at the cut taps, which read only padding."""
    full = np.zeros(w_shape, dtype=dw.dtype)
    full[:, :, crop.u0:crop.u1, crop.v0:crop.v1] = dw
    return full


def _check_algo(algo: ConvAlgo, g: ConvGeometry, c: int, k: int, dtype) -> None:
    from cnncli.ops.conv.algo import supports

    eg = algo.crop.geometry if algo.crop is not None else g
    for direction, path in (("fwd", algo.fwd), ("dx", algo.dx), ("dw", algo.dw)):
        if not supports(path, direction, eg, c, k, dtype):
            raise ShapeMismatchError(f"conv2d: path {path!r} cannot compute the {direction} "
                                     f"of this convolution ({eg})")


# ---------------------------------------------------------------------------------------
# the workspaces a conv's training step asks for (the training-memory estimate)
# ---------------------------------------------------------------------------------------


def _path_workspaces(path: str, direction: str, g: ConvGeometry, n: int, m: int, c: int,
                     k: int, itemsize: int, opts: EngineOptions) -> dict[str, int]:
    """Workspace tag -> elements that ``path`` asks for in ``direction`` ('fwd', 'dx',
    'dw') for a part of m images, each path's own size rule."""
    if path == "im2col":
        return im2col.workspaces(g, n, m, c, k, itemsize, opts)
    if path == "batched":
        return batched.workspaces(g, n, m, c, k, itemsize, opts, backward=direction != "fwd",
                                  need_dw=direction == "dw")
    if path in ("dense", "pointwise"):
        return pointwise.workspaces(g, m, c, k, direction)
    if path == "depthwise":
        return depthwise.workspaces(g, c, k)
    if path == "winograd":
        (h, w), (ho, wo) = g.in_hw, g.out_hw
        if direction == "fwd":
            return winograd.conv_workspaces(c, k, ho, wo, m, itemsize,
                                            opts.winograd_chunk_bytes)
        if direction == "dx":  # the conv of dz (K channels) back to C
            return winograd.conv_workspaces(k, c, h, w, m, itemsize,
                                            opts.winograd_chunk_bytes)
        return winograd.weight_grad_workspaces(c, k, h, w, m, opts.winograd_dw_tiles)
    return {}  # direct: none


def conv_workspaces(g: ConvGeometry, n: int, c: int, k: int, algo: ConvAlgo,
                    opts: EngineOptions, itemsize: int, *, act: str | None = None,
                    need_dx: bool = True, pooled: bool = False) -> dict[str, int]:
    """Workspace tag -> the most elements any call of one conv's training forward and
    backward asks for, for a batch of n run as one part (one thread), as run_forward /
    run_backward (and conv2d_relu_maxpool2_*, ``pooled``) call the paths of ``algo``.
    ``act``: the activation fused in the output pass; ``need_dx=False``: the first layer."""
    eg = algo.crop.geometry if algo.crop is not None else g
    calls = [("fwd", algo.fwd), ("dw", algo.dw)] + ([("dx", algo.dx)] if need_dx else [])
    out: dict[str, int] = {}
    for direction, path in calls:
        for tag, size in _path_workspaces(path, direction, eg, n, n, c, k, itemsize,
                                          opts).items():
            out[tag] = max(out.get(tag, 0), size)
    dz = n * k * g.out_hw[0] * g.out_hw[1]
    both_im2col = algo.dw == "im2col" and (algo.dx == "im2col" or not need_dx)
    if pooled:
        out["wino.dz"] = max(out.get("wino.dz", 0), dz)
    elif act is not None and not (opts.fuse_act_grad and both_im2col
                                  and act in im2col.ACT_CODES):
        out["conv.dz"] = max(out.get("conv.dz", 0), dz)  # common.act_grad
    return out


# ---------------------------------------------------------------------------------------
# running a path over the batch
# ---------------------------------------------------------------------------------------


def run_forward(x, w, b, g: ConvGeometry, act, algo: ConvAlgo, opts: EngineOptions,
                shared: PassCache | None = None) -> np.ndarray:
    """y = act(conv2d(x, w) + b) on algo.fwd, for validated contiguous arrays."""
    from cnncli.ops import _threads

    n, k = x.shape[0], w.shape[0]
    eg = algo.crop.geometry if algo.crop is not None else g
    ew = _effective_weights(w, algo, shared)
    y = np.empty((n, k, *g.out_hw), dtype=x.dtype)
    bias = b if b is not None else np.empty(0, dtype=x.dtype)
    if algo.fwd == "winograd":
        ew = _prepared(shared, *wino_entry(ew))  # ew is w: Winograd kernels are never cut
    fn = _FORWARD[algo.fwd]

    def part(lo: int, hi: int, p: int) -> None:
        fn(x, ew, bias, eg, act, y, lo, hi, p, opts)

    _threads.over_batch(part, n, work=y.size * ew[0].size if algo.fwd != "winograd" else
                        y.size * x.shape[1] * 9)
    return y


def run_backward(x, w, g: ConvGeometry, algo: ConvAlgo, opts: EngineOptions, dy, *,
                 need_dx: bool, has_bias: bool, act: tuple | None = None, dz_of=None,
                 shared: PassCache | None = None, need_dw: bool = True,
                 uncrop: bool = True):
    """(dx, dw, db) of y = act(conv2d(x, w) + b) given dy, on the paths of ``algo``.

    ``act=(name, y)``: dy is the gradient of y = act(z). ``dz_of(lo, hi, part)``, when
    given instead, returns the part's dz itself (the fused pooling uses this).
    ``need_dw=False`` (a frozen layer) skips the weight and bias gradients: dw and db are
    None and only the input-gradient path runs (nothing at all without ``need_dx``)."""
    from cnncli.ops import _threads

    if not need_dw:
        return _run_dx_only(x, w, g, algo, opts, dy, need_dx, act, dz_of, shared), None, None
    n, k = x.shape[0], w.shape[0]
    eg = algo.crop.geometry if algo.crop is not None else g
    ew = _effective_weights(w, algo, shared)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    both_im2col = algo.dw == "im2col" and (algo.dx == "im2col" or not need_dx)
    layout_act = (act is not None and dz_of is None and opts.fuse_act_grad and both_im2col
                  and act[0] in im2col.ACT_CODES)
    u_dx = None
    if need_dx and algo.dx == "winograd":
        u_dx = _prepared(shared, *wino_dx_entry(ew))
    dw_fn, dx_fn = _WEIGHT_GRAD.get(algo.dw), _INPUT_GRAD.get(algo.dx)

    def part(lo: int, hi: int, p: int):
        db = np.zeros(k, dtype=np.float64) if has_bias else None
        if layout_act:
            dwp = im2col.backward(x, dy[lo:hi], ew, eg, dx, lo, hi, p, opts, need_dx=need_dx,
                                  need_dw=True, act_y=(act[0], act[1][lo:hi]), db=db)
            return dwp, db
        dz = _dz_part(dy, act, dz_of, lo, hi, p)
        if both_im2col:
            if has_bias:
                db += channel_sums(dz)
            dwp = im2col.backward(x, dz, ew, eg, dx, lo, hi, p, opts, need_dx=need_dx,
                                  need_dw=True)
            return dwp, db
        if algo.dw == "winograd":
            dwp = winograd.weight_grad(x, dz, eg, lo, hi, p, opts, db)
        else:
            if has_bias:
                db += channel_sums(dz)
            dwp = dw_fn(x, dz, ew, eg, lo, hi, p, opts)
        if need_dx:
            dx_fn(dz, u_dx if u_dx is not None else ew, eg, dx, lo, hi, p, opts)
        return dwp, db

    results = _threads.over_batch(part, n, work=2 * dy.size * ew[0].size)
    dw = _uncrop(sum_parts([r[0] for r in results]), w.shape, algo, uncrop)
    db = sum_parts([r[1] for r in results]).astype(x.dtype) if has_bias else None
    return dx, dw, db


def _dz_part(dy, act, dz_of, lo: int, hi: int, p: int):
    """The gradient at the conv's output for images lo:hi: from ``dz_of`` (a fused op's
    unpooling), through the fused activation's derivative, or dy itself."""
    if dz_of is not None:
        return dz_of(lo, hi, p)
    if act is not None:
        return act_grad(dy, act[1], act[0], lo, hi, p)
    return dy[lo:hi]


def _run_dx_only(x, w, g: ConvGeometry, algo: ConvAlgo, opts: EngineOptions, dy,
                 need_dx: bool, act, dz_of, shared):
    """run_backward's input gradient alone (a frozen conv); None without ``need_dx``."""
    from cnncli.ops import _threads

    if not need_dx:
        return None
    eg = algo.crop.geometry if algo.crop is not None else g
    ew = _effective_weights(w, algo, shared)
    dx = np.empty(x.shape, dtype=x.dtype)
    layout_act = (act is not None and dz_of is None and opts.fuse_act_grad
                  and algo.dx == "im2col" and act[0] in im2col.ACT_CODES)
    u_dx = None
    if algo.dx == "winograd":
        u_dx = _prepared(shared, *wino_dx_entry(ew))
    dx_fn = _INPUT_GRAD[algo.dx]

    def part(lo: int, hi: int, p: int) -> None:
        if layout_act:
            im2col.backward(None, dy[lo:hi], ew, eg, dx, lo, hi, p, opts, need_dx=True,
                            need_dw=False, act_y=(act[0], act[1][lo:hi]))
            return
        dz = _dz_part(dy, act, dz_of, lo, hi, p)
        dx_fn(dz, u_dx if u_dx is not None else ew, eg, dx, lo, hi, p, opts)

    _threads.over_batch(part, x.shape[0], work=dy.size * ew[0].size)
    return dx


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
    algo: ConvAlgo | None = None,
    options: EngineOptions | None = None,
    shared: PassCache | None = None,
) -> tuple[np.ndarray, ConvCache]:
    """y [N, K, Ho, Wo] = conv2d(x [N, C, H, W], w [K, C/groups, kh, kw]) + b [K].

    ``padding`` adds that many zero rows/columns on both sides. Output size per axis:
    ``floor((H + 2p - d*(k-1) - 1) / s) + 1``. Output channel k reads the input channels of
    group ``k // (K/groups)``. Returns a new contiguous array of x's dtype.

    ``act`` (one of FUSED_ACTIVATIONS, or None) applies that activation in the output pass;
    the backward pass then takes ``act=(name, y)`` to apply its derivative. ``algo`` fixes
    the kernel paths (default: ``algo.choose`` under ``options``)."""
    if act is not None and act not in FUSED_ACTIVATIONS:
        raise ShapeMismatchError(f"conv2d: act must be one of {FUSED_ACTIVATIONS} or None; "
                                 f"got {act!r}")
    x, w = check_arrays(x, w, b, "conv2d")
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
    g = geometry((h, wd), w.shape, stride, padding, dilation, groups)
    opts = options if options is not None else DEFAULT
    if algo is None:
        algo = choose(g, c, k, x.dtype, opts)
    else:
        _check_algo(algo, g, c, k, x.dtype)
    y = run_forward(x, w, b, g, act, algo, opts, shared)
    return y, ConvCache(x, w, b is not None, g, algo, opts)


def conv2d_backward(
    dy: np.ndarray, cache: ConvCache, *, need_dx: bool = True,
    act: tuple[str, np.ndarray] | None = None, shared: PassCache | None = None,
    need_dw: bool = True, uncrop: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(dx, dw, db) for L = sum(y * dy); dw and db are summed over the batch.

    ``db`` is None when the forward pass had no bias. ``need_dx=False`` skips the input
    gradient (the first layer of a network) and returns dx = None; ``need_dw=False`` (a
    frozen layer) skips the weight and bias gradients (dw = db = None). ``act=(name, y)``, for
    a forward pass run with ``act=name`` (``y`` its output), first multiplies dy by the
    activation's derivative (part by part, in the worker threads). ``uncrop=False``, for a
    conv whose algo crops dead taps (``cache.algo.crop``), returns dw for the live taps
    only: a model whose parts each compute a dw sums the small arrays and puts the sum
    back once (``uncrop_grad``), instead of writing a full, mostly zero array per part.
    """
    x, w, has_bias, g, algo, opts = cache
    n, k = x.shape[0], w.shape[0]
    dy = check_dy(dy, (n, k, *g.out_hw), x.dtype, "conv2d_backward")
    if act is not None:
        name, y = act
        if name not in FUSED_ACTIVATIONS or not isinstance(y, np.ndarray) or y.shape != dy.shape:
            raise ShapeMismatchError(f"conv2d_backward: act must be (name, y) with name in "
                                     f"{FUSED_ACTIVATIONS} and y of shape {dy.shape}")
        act = (name, np.ascontiguousarray(y))
    return run_backward(x, w, g, algo, opts or DEFAULT, dy, need_dx=need_dx,
                        has_bias=has_bias, act=act, shared=shared, need_dw=need_dw,
                        uncrop=uncrop)


# ---------------------------------------------------------------------------------------
# conv_transpose2d: the adjoint of conv2d, on the same paths
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
    *,
    options: EngineOptions | None = None,
) -> tuple[np.ndarray, ConvTransposeCache]:
    """y [N, C_out, Ho, Wo] = conv_transpose2d(x [N, C_in, H, W], w [C_in, C_out/groups, kh, kw]).

    ``Ho = (H-1)*s - 2p + d*(kh-1) + output_padding + 1``. Every input pixel adds a weighted
    copy of the kernel to the (uncropped) output, which is then cropped by ``padding`` on
    each side. This is exactly the input gradient of ``conv2d(., w, s, p, d, groups)``.
    """
    from cnncli.ops import _threads

    x, w = check_arrays(x, w, b, "conv_transpose2d")
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
    s, p = pair(stride, "stride"), pair(padding, "padding")
    d, op = pair(dilation, "dilation"), pair(output_padding, "output_padding")
    ho = deconv_output_size(h, kh, s[0], p[0], op[0], d[0])
    wo = deconv_output_size(wd, kw, s[1], p[1], op[1], d[1])
    # The adjoint conv2d maps [N, C_out, ho, wo] -> [N, C_in, h, wd]. With output_padding
    # it would produce one more row/column than x has; those output rows are never read.
    g = ConvGeometry((kh, kw), s, p, d, groups, (ho, wo), (h, wd))
    opts = options if options is not None else DEFAULT
    algo = choose(g, c_out, c_in, x.dtype, opts)
    ew = _effective_weights(w, algo, None)
    eg = algo.crop.geometry if algo.crop is not None else g
    if algo.dx == "winograd":
        ew = winograd.winograd_weights_dx(ew)
    y = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    fn = _INPUT_GRAD[algo.dx]
    _threads.over_batch(lambda lo, hi, q: fn(x[lo:hi], ew, eg, y, lo, hi, q, opts), n,
                        work=2 * x.size * w[0].size)
    if b is not None:
        y += b.reshape(1, c_out, 1, 1)
    return y, ConvTransposeCache(x, w, b is not None, g, algo, opts)


def conv_transpose2d_backward(
    dy: np.ndarray, cache: ConvTransposeCache, *, need_dx: bool = True, need_dw: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(dx, dw, db): ``dx = conv2d(dy, w, s, p, d, groups)`` and dw is conv2d's weight
    gradient with dy as the input and x as the upstream gradient (skipped, dw = db = None,
    with ``need_dw=False``)."""
    x, w, has_bias, g, algo, opts = cache
    n, c_out = x.shape[0], w.shape[1] * g.groups
    dy = check_dy(dy, (n, c_out, *g.in_hw), x.dtype, "conv_transpose2d_backward")
    dx = run_forward(dy, w, None, g, None, algo, opts) if need_dx else None
    if not need_dw:
        return dx, None, None
    _, dw, _ = run_backward(dy, w, g, algo, opts, x, need_dx=False, has_bias=False)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


from cnncli.ops.conv.fused_pool import (  # noqa: E402 (it uses the functions above)
    ConvPoolCache,
    conv2d_relu_maxpool2_backward,
    conv2d_relu_maxpool2_forward,
    fuses_relu_maxpool2,
)

__all__ += ["ConvPoolCache", "conv2d_relu_maxpool2_backward", "conv2d_relu_maxpool2_forward",
            "fuses_relu_maxpool2"]
