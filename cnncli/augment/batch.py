"""On-the-fly augmentation of training batches, vectorised over the batch.

Contract of :func:`augment_batch` (what ``cnn train --augment PIPELINE`` relies on):

* ``x``: float array (N, C, H, W), C in 1..4, values in ``value_range`` (default [0, 1]: call it
  on scaled pixels, before mean/std normalisation). It is not modified.
* ``pipeline``: a :class:`~cnncli.augment.pipeline.Pipeline`, or anything
  :func:`~cnncli.augment.pipeline.resolve_pipeline` accepts (preset name, YAML path, ops text).
* ``rng``: a ``numpy.random.Generator``; the same generator state gives the same batch. Each
  image gets its own parameters, drawn by the same :meth:`Op.sample` as ``cnn augment``, in
  batch order, one image after the other.
* Returns a new float32 array (N, C, H', W'). H', W' differ from H, W only through ops that
  set a size (crop, random_resized_crop, resize); such ops must have ``p = 1`` so that every
  image in the batch comes out the same size.
* Apply it to the training split only; labels are untouched (choose label-safe ops: the
  ``digits`` preset has no flips).

Semantics follow :mod:`cnncli.augment.functional` with float arithmetic instead of rounding to
integers: the same matrices, the same border model (coverage-weighted constant fill, edge
clamp, mirror), brightness ``lo + (x - lo) * f``, contrast about the luminance mean, fills and
noise in 0..255 units scaled to ``value_range``. Values are clipped to ``value_range`` after
each op (pass ``value_range=None`` to skip clipping; fills and noise then use a 0..1 scale).
A run of geometric ops is one vectorised bilinear gather; there is no box pre-reduction, so
use it for the small images of training batches, not to shrink large photos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.augment import functional as F
from cnncli.augment.pipeline import Pipeline, _merge_settings, resolve_pipeline
from cnncli.augment.transforms import GeometricOp, Op, PipelineError


def augment_batch(
    x: np.ndarray,
    pipeline: Pipeline | str | Path,
    rng: np.random.Generator,
    *,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[list[dict[str, Any]]]]:
    """Augment every image of ``x`` (N, C, H, W) with its own sampled parameters.

    With ``return_params`` also returns, per image, the records :meth:`Pipeline.sample` drew.
    """
    pipe = resolve_pipeline(pipeline)
    arr = np.asarray(x)
    if arr.ndim != 4 or arr.shape[1] not in (1, 2, 3, 4):
        raise ValueError(f"augment_batch expects (N, C, H, W) with C in 1..4, got {arr.shape}")
    n, c, h, w = arr.shape
    out = arr.astype(np.float32, copy=True)
    if n == 0:
        return (out, []) if return_params else out
    records = [pipe.sample(rng, (h, w, c)) for _ in range(n)]
    lo, hi = value_range if value_range is not None else (0.0, 1.0)
    ctx = _BatchContext(lo=float(lo), hi=float(hi), clip=value_range is not None)

    k = 0
    ops = pipe.ops
    while k < len(ops):
        op = ops[k]
        if isinstance(op, GeometricOp):
            j, settings = k, {}
            while j < len(ops) and isinstance(ops[j], GeometricOp):
                merged = _merge_settings(settings, ops[j].warp_settings())
                if merged is None:
                    break
                settings, j = merged, j + 1
            out = _geometric_run(out, ops[k:j], [r[k:j] for r in records], settings, ctx)
            k = j
            continue
        applied = np.array([r[k]["applied"] for r in records])
        if applied.any():
            handler = _HANDLERS.get(op.name)
            if handler is None:
                raise PipelineError(f"op '{op.name}' is not supported by augment_batch")
            idx = np.flatnonzero(applied)
            sub = handler(op, out[idx], [records[i][k] for i in idx], ctx)
            out[idx] = ctx.clipped(sub)
        k += 1
    return (out, records) if return_params else out


class _BatchContext:
    def __init__(self, lo: float, hi: float, clip: bool) -> None:
        self.lo, self.hi, self.clip = lo, hi, clip
        self.span = hi - lo

    def clipped(self, a: np.ndarray) -> np.ndarray:
        return np.clip(a, self.lo, self.hi) if self.clip else a

    def level(self, grey255: float) -> float:
        """A 0..255 level in this batch's value units."""
        return self.lo + grey255 / 255.0 * self.span


# --------------------------------------------------------------------------- geometry


def _geometric_run(
    x: np.ndarray,
    ops: Sequence[Op],
    recs: Sequence[Sequence[Mapping[str, Any]]],
    settings: dict[str, Any],
    ctx: _BatchContext,
) -> np.ndarray:
    n, c, h, w = x.shape
    mats = np.empty((n, 3, 3))
    out_shape = None
    for i in range(n):
        shape = (h, w, c)
        m = np.eye(3)
        for op, rec in zip(ops, recs[i], strict=True):
            if rec["applied"]:
                m = m @ op.matrix(rec, shape)  # type: ignore[attr-defined]
                shape = op.output_shape(rec, shape)
        if out_shape is None:
            out_shape = shape
        elif shape != out_shape:
            raise PipelineError(
                "augment_batch: images came out with different sizes; give ops that set a "
                "size (crop, random_resized_crop, resize) p=1"
            )
        mats[i] = m
    if np.all(mats == np.eye(3)) and out_shape == (h, w, c):
        return x
    assert out_shape is not None
    cfg = {"interpolation": "bilinear", "border": "constant", "fill": 0, **settings}
    return ctx.clipped(
        warp_batch(
            x,
            mats,
            out_shape[:2],
            interpolation=cfg["interpolation"],
            border=cfg["border"],
            fill=ctx.level(cfg["fill"]),
        )
    )


def warp_batch(
    x: np.ndarray,
    mats: np.ndarray,
    out_hw: tuple[int, int],
    *,
    interpolation: str = "bilinear",
    border: str = "constant",
    fill: float = 0.0,
) -> np.ndarray:
    """Warp each image ``x[i]`` (N, C, H, W) through its own output -> input matrix ``mats[i]``.

    The Numba kernel ``warp_affine_batch``: the image kernel's model (taps, 1/1024 weights,
    coverage) in float32. ``fill`` is in the batch's value units.
    """
    from cnncli.augment import _kernels as K

    xs = np.ascontiguousarray(x, dtype=np.float32)
    n, c = xs.shape[:2]
    out = np.empty((n, c, int(out_hw[0]), int(out_hw[1])), np.float32)
    m = np.ascontiguousarray(np.asarray(mats, dtype=np.float64)[:, :2, :])
    return K.warp_affine_batch(
        xs, m, out, float(fill), F.BORDERS[border], interpolation == "bilinear"
    )


def warp_batch_reference(
    x: np.ndarray,
    mats: np.ndarray,
    out_hw: tuple[int, int],
    *,
    interpolation: str = "bilinear",
    border: str = "constant",
    fill: float = 0.0,
) -> np.ndarray:
    """Slow, obvious NumPy twin of :func:`warp_batch` (one vectorised gather for the batch;
    exact weights instead of 1/1024 steps)."""
    n, c, h, w = x.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    a, b, c0 = (mats[:, 0, k][:, None, None] for k in range(3))
    d, e, f = (mats[:, 1, k][:, None, None] for k in range(3))
    xs = (np.arange(ow) + 0.5)[None, None, :]
    ys = (np.arange(oh) + 0.5)[None, :, None]
    X = a * xs + b * ys + c0  # (N, oh, ow)
    Y = d * xs + e * ys + f
    flat = x.reshape(n, c, h * w)

    def gather(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        idx = (yi * w + xi).reshape(n, 1, oh * ow)
        return np.take_along_axis(flat, idx, axis=2).reshape(n, c, oh, ow)

    def mirror(t: np.ndarray, size: float) -> np.ndarray:
        period = 2.0 * size
        t = t - period * np.floor(t / period)
        return np.where(t > size, period - t, t)

    if interpolation == "nearest":
        outside = (X < 0) | (Y < 0) | (w <= X) | (h <= Y)
        if border == "reflect":
            X, Y = mirror(X, w), mirror(Y, h)
        xi = np.clip(np.floor(X).astype(np.int64), 0, w - 1)
        yi = np.clip(np.floor(Y).astype(np.int64), 0, h - 1)
        out = gather(yi, xi)
        if border == "constant":
            out = np.where(outside[:, None], np.float32(fill), out)
        return out.astype(np.float32)

    cov = None
    if border == "constant":
        fw = np.maximum(np.abs(a) + np.abs(b), 1e-12)
        fh = np.maximum(np.abs(d) + np.abs(e), 1e-12)
        cx = np.clip((X + 0.5 * fw) / fw, 0, 1) * np.clip((w - X + 0.5 * fw) / fw, 0, 1)
        cy = np.clip((Y + 0.5 * fh) / fh, 0, 1) * np.clip((h - Y + 0.5 * fh) / fh, 0, 1)
        cov = (cx * cy)[:, None].astype(np.float32)
    elif border == "reflect":
        X, Y = mirror(X, w), mirror(Y, h)
    u = np.clip(X, 0.0, w) - 0.5
    v = np.clip(Y, 0.0, h) - 0.5
    x0, y0 = np.floor(u), np.floor(v)
    fx = (u - x0).astype(np.float32)[:, None]
    fy = (v - y0).astype(np.float32)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xa, xb = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    ya, yb = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    top = gather(ya, xa) * (1 - fx) + gather(ya, xb) * fx
    bottom = gather(yb, xa) * (1 - fx) + gather(yb, xb) * fx
    out = top * (1 - fy) + bottom * fy
    if cov is not None:
        out = cov * out + (1 - cov) * np.float32(fill)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- colour and pixels


def _factors(recs: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([r[key] for r in recs], dtype=np.float32)[:, None, None, None]


def _ncol(x: np.ndarray) -> int:
    return F.colour_channels(x.shape[1])


def _luma(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) luminance of the colour channels."""
    if _ncol(x) == 1:
        return x[:, :1]
    wts = np.array(F.LUMA, dtype=np.float32)[None, :, None, None]
    return (x[:, :3] * wts).sum(axis=1, keepdims=True)


def _brightness(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    k = _ncol(x)
    x[:, :k] = ctx.lo + (x[:, :k] - ctx.lo) * _factors(recs, "factor")
    return x


def _contrast(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    k = _ncol(x)
    mean = _luma(x).mean(axis=(1, 2, 3), keepdims=True)
    x[:, :k] = mean + _factors(recs, "factor") * (x[:, :k] - mean)
    return x


def _saturation(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    if x.shape[1] < 3:
        return x
    grey = _luma(x)
    x[:, :3] = grey + _factors(recs, "factor") * (x[:, :3] - grey)
    return x


def _hue(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    if x.shape[1] < 3:
        return x
    rgb = np.clip((x[:, :3] - ctx.lo) / ctx.span, 0, 1).transpose(0, 2, 3, 1).astype(np.float64)
    hsv = F.rgb_to_hsv(rgb)
    shifts = np.array([r["shift"] for r in recs])[:, None, None]
    hsv[..., 0] = (hsv[..., 0] + shifts) % 1.0
    back = F.hsv_to_rgb(hsv).transpose(0, 3, 1, 2)
    x[:, :3] = (ctx.lo + back * ctx.span).astype(np.float32)
    return x


def _pca(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    if x.shape[1] < 3:
        return x
    to255 = 255.0 / ctx.span
    for i, rec in enumerate(recs):
        if op["eigen"] == "image":
            pixels = (x[i, :3].reshape(3, -1).T.astype(np.float64) - ctx.lo) * to255
            vals, vecs = F.rgb_eigen(pixels)
        else:
            vals, vecs = op.eigen({})  # type: ignore[attr-defined]
        shift = F.pca_shift(vals, vecs, rec["alpha"]) / to255
        x[i, :3] += shift.astype(np.float32)[:, None, None]
    return x


def _noise(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    k = _ncol(x)
    _, _, h, w = x.shape
    scale = np.float32(op["sigma"] / 255.0 * ctx.span)
    for i, rec in enumerate(recs):
        # Same noise field as functional.gaussian_noise for this seed (drawn H, W, C).
        g = np.random.default_rng(int(rec["seed"]))
        field = g.standard_normal((h, w, k if op["per_channel"] else 1), dtype=np.float32)
        x[i, :k] += field.transpose(2, 0, 1) * scale
    return x


def _blur(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    sig = np.array([r["sigma"] for r in recs], dtype=np.float64)
    if not np.any(sig > 0):
        return x
    k = _ncol(x)
    n, _, h, w = x.shape
    radius = max(1, int(np.ceil(3.0 * sig.max())))
    offs = np.arange(-radius, radius + 1, dtype=np.float64)
    safe = np.where(sig > 0, sig, 1.0)[:, None]
    kern = np.exp(-0.5 * (offs[None, :] / safe) ** 2)
    kern = np.where(sig[:, None] > 0, kern, (offs[None, :] == 0).astype(np.float64))
    kern = (kern / kern.sum(axis=1, keepdims=True)).astype(np.float32)  # (N, K)
    work = x[:, :k]
    mode = "reflect" if min(h, w) > radius else "edge"
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(work, pad, mode=mode)
        size = work.shape[axis]
        acc = np.zeros_like(work)
        for t in range(kern.shape[1]):
            sl = [slice(None)] * 4
            sl[axis] = slice(t, t + size)
            acc += kern[:, t][:, None, None, None] * padded[tuple(sl)]
        work = acc
    x[:, :k] = work
    return x


def _cutout(
    op: Op, x: np.ndarray, recs: Sequence[Mapping[str, Any]], ctx: _BatchContext
) -> np.ndarray:
    k = _ncol(x)
    _, _, h, w = x.shape
    level = np.float32(ctx.level(op["fill"]))
    for i, rec in enumerate(recs):
        for top, left, height, width in rec["boxes"]:
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + height, h), min(left + width, w)
            if y1 > y0 and x1 > x0:
                x[i, :k, y0:y1, x0:x1] = level
    return x


_HANDLERS = {
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "hue": _hue,
    "pca": _pca,
    "noise": _noise,
    "blur": _blur,
    "cutout": _cutout,
}


def supported_ops() -> list[str]:
    """Names of the ops :func:`augment_batch` can apply (every geometric op, plus these)."""
    from cnncli.augment.transforms import OPS

    return [name for name, cls in OPS.items() if issubclass(cls, GeometricOp) or name in _HANDLERS]
