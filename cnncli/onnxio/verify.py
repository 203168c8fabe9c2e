"""Check an export: onnxruntime's output against the engine's, on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Largest acceptable difference in class probabilities between onnxruntime and cnncli.
TOLERANCE = 1e-5


def _probabilities(y: np.ndarray, already: bool) -> np.ndarray:
    y = y.astype(np.float64)
    if already or y.ndim != 2:
        return y
    z = np.exp(y - y.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def compare(model: Any, proto: Any, x: np.ndarray, normalizer: Any = None,
            tol: float = TOLERANCE) -> dict[str, Any]:
    """Run ``x`` (images as the graph takes them) through both; compare probabilities.

    ``normalizer`` is applied before the engine's forward pass when the graph starts with
    it. Networks that end without softmax are compared after a softmax of both outputs
    (and their raw outputs are reported too).
    """
    from cnncli.onnxio.export import run_onnxruntime

    theirs = run_onnxruntime(proto, x)
    xe = x.astype(np.float32, copy=True)
    if normalizer is not None:
        normalizer.apply(xe)
    ours = model.forward(xe, training=False)
    model.release()
    head = model.softmax_head is not None
    p_ours, p_theirs = _probabilities(ours, head), _probabilities(theirs, head)
    diff = float(np.abs(p_ours - p_theirs).max()) if ours.shape == theirs.shape else float("inf")
    raw = float(np.abs(ours.astype(np.float64) - theirs).max()) \
        if ours.shape == theirs.shape else float("inf")
    agree = int((p_ours.reshape(len(x), -1).argmax(1) ==
                 p_theirs.reshape(len(x), -1).argmax(1)).sum()) \
        if ours.shape == theirs.shape else 0
    return {
        "images": int(len(x)),
        "compared": "probabilities" if ours.ndim == 2 else "outputs",
        "max_abs_diff": diff,
        "max_abs_diff_raw": raw,
        "top1_agree": agree,
        "ok": diff <= tol and agree == len(x),
        "tolerance": tol,
    }


def verify_file(source: str | Path, onnx_file: str | Path, *, normalize: bool,
                input_shape: Any = None, seed: int = 0, images: int = 8) -> dict[str, Any]:
    """Load ``onnx_file`` and compare it with ``source`` on random images in [0, 1]."""
    from cnncli.onnxio import require_onnx
    from cnncli.onnxio.export import load_source

    onnx = require_onnx()
    model, info, _ = load_source(source, input_shape=input_shape, seed=seed)
    proto = onnx.load(str(onnx_file))
    x = np.random.default_rng(seed).random((images, *model.input_shape), dtype=np.float32)
    return compare(model, proto, x, info["normalizer"] if normalize else None)
