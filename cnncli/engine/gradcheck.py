"""Whole-network gradient check: backward against centred finite differences in float64.

The scalar checked is L = sum(y * R) for a fixed random R, so every output contributes
(a vector-Jacobian product, as in the golden files). Dropout masks are made identical in
every evaluation by reseeding, so the network is a deterministic function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.engine.model import Model, build_model
from cnncli.spec import Spec


@dataclass
class TensorCheck:
    name: str
    shape: tuple[int, ...]
    checked: int
    max_rel_error: float
    max_abs_error: float
    ok: bool


def relative_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    """|a - b| / max(|a| + |b|, floor): symmetric, and tame where both are tiny."""
    return np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)


def gradcheck(source: str | Path | dict | Spec | Model, *, batch: int = 2, seed: int = 0,
              eps: float = 1e-6, tol: float = 1e-5, samples: int = 12,
              input_shape: tuple | None = None, training: bool = True) -> list[TensorCheck]:
    """Compare analytic and numerical gradients for every parameter tensor and the input.

    ``samples`` entries per tensor are checked (all entries of small tensors), chosen by
    ``seed``; each costs two forward passes.
    """
    if isinstance(source, Model):
        model = source
        if model.dtype != np.float64:
            raise ValueError("gradcheck needs a float64 model")
    else:
        model = build_model(source, input_shape=input_shape, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    c, h, w = model.input_shape
    x = rng.standard_normal((batch, c, h, w))
    probe = rng.standard_normal

    def loss(x_: np.ndarray) -> float:
        y = model.forward(x_, training=training, rng=np.random.default_rng(seed + 1))
        return float(np.sum(y * r))

    saved = {k: v.copy() for k, v in model.buffers.items()}

    def restore() -> None:  # batchnorm running stats move on every training forward
        for k, v in saved.items():
            model.buffers[k][...] = v

    y = model.forward(x, training=training, rng=np.random.default_rng(seed + 1))
    r = probe(y.shape)
    dx = model.backward(r)
    grads = {k: g.copy() for k, g in model.grads.items()}
    restore()

    results = []
    targets: list[tuple[str, np.ndarray, np.ndarray]] = [("input", x, dx)]
    targets += [(k, model.params[k], grads.get(k, np.zeros_like(model.params[k])))
                for k in model.params]
    for name, array, analytic in targets:
        flat = array.reshape(-1)
        n = flat.size
        idx = np.arange(n) if n <= samples else rng.choice(n, size=samples, replace=False)
        num = np.empty(len(idx))
        for j, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + eps
            plus = loss(x)
            flat[i] = old - eps
            minus = loss(x)
            flat[i] = old
            restore()
            num[j] = (plus - minus) / (2 * eps)
        ana = analytic.reshape(-1)[idx]
        rel = relative_error(ana, num)
        results.append(TensorCheck(name, tuple(array.shape), len(idx), float(rel.max()),
                                   float(np.abs(ana - num).max()), bool(rel.max() <= tol)))
    return results


#: Batch statistics over fewer values than this make batchnorm's gradient too ill-conditioned
#: for finite differences (normalising 2 values gives +-1 whatever they are).
MIN_BN_VALUES = 16


def conditioning_warnings(model: Model, batch: int, training: bool = True) -> list[str]:
    """A warning when training-mode batchnorm statistics cover too few values to check."""
    if not training:
        return []
    few = []
    for node in (n for top in model.network.nodes for n in top.walk()):
        if node.type == "batchnorm":
            shape = node.in_shape
            values = batch * (shape[0] * shape[1] if len(shape) == 3 else 1)
            if values < MIN_BN_VALUES:
                few.append((values, node.path))
    if not few:
        return []
    values, path = min(few)
    return [f"{len(few)} batchnorm layer(s) normalise fewer than {MIN_BN_VALUES} values per "
            f"channel (only {values} in '{path}'): finite differences are unreliable there; "
            "use --mode eval, a larger --input or a larger --batch"]


def summary(results: list[TensorCheck]) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in results),
        "max_rel_error": max(r.max_rel_error for r in results),
        "tensors": [r.__dict__ | {"shape": list(r.shape)} for r in results],
    }
