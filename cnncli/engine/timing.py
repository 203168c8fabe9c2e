"""Per-layer forward/backward timings (Caffe's ``time`` verb) for ``cnn time``."""

from __future__ import annotations

from time import perf_counter
from typing import Any

import numpy as np

from cnncli.engine.model import Model


def time_layers(model: Model, batch: int = 64, iterations: int = 10, warmup: int = 2,
                seed: int = 0) -> dict[str, Any]:
    """Mean milliseconds per iteration for each node's forward and backward, and in total.

    A pool that runs inside the conv before it (``Model.fused_pools``) has no time of its
    own; its row names that conv in ``fused_into``."""
    c, h, w = model.input_shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, h, w)).astype(model.dtype)
    for _ in range(warmup):  # compile Numba kernels, touch buffers
        y = model.forward(x, training=True)
        model.backward(np.ones_like(y))
    model.timer = {}
    dy = rng.standard_normal(y.shape).astype(model.dtype)
    t0 = perf_counter()
    for _ in range(iterations):
        model.forward(x, training=True)
        model.backward(dy)
    total = perf_counter() - t0
    timer, model.timer = model.timer, None
    model.release()
    inside = {pool.path: conv for conv, pool in model.fused_pools().items()}
    rows = []
    for node in (n for top in model.network.nodes for n in top.walk()):
        fwd, bwd = timer.get(node.path, (0.0, 0.0))
        rows.append({"name": node.path, "type": node.type, "depth": node.path.count("."),
                     "forward_ms": 1e3 * fwd / iterations, "backward_ms": 1e3 * bwd / iterations,
                     "fused_into": inside.get(node.path)})
    return {"batch": batch, "iterations": iterations, "layers": rows,
            "total_ms": 1e3 * total / iterations,
            "images_per_second": batch * iterations / total}
