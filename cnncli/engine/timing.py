"""Per-layer forward/backward timings (Caffe's ``time`` verb) for ``cnn time``."""

from __future__ import annotations

from time import perf_counter
from typing import Any

import numpy as np

from cnncli.engine.model import Model


def time_layers(model: Model, batch: int = 64, iterations: int = 10, warmup: int = 2,
                seed: int = 0) -> dict[str, Any]:
    """Mean milliseconds per iteration for each node's forward and backward, and in total,
    with the kernel path the model's plan chose for it (like cuDNN's algorithm report), for
    training steps as ``cnn train`` runs them (logits, no input gradient).

    The batch is split over the worker threads as in training; the times are those of the
    first part (the parts run at once). A node whose work another step does (a pool fused
    into the conv before it, a ReLU into its batchnorm) has no time of its own; its row
    names that step's node in ``fused_into``. ``gflops`` is the forward and backward
    multiply-adds of conv and dense rows (2 FLOPs each, 3 products) per second."""
    c, h, w = model.input_shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, h, w)).astype(model.dtype)
    # as cnn train steps: logits into the fused softmax loss, and no gradient for the
    # input batch (the first layer skips it: timing it overstated that layer's backward)
    for _ in range(warmup):  # compile Numba kernels, touch buffers
        y = model.forward(x, training=True, logits=True)
        model.backward(np.ones_like(y), input_grad=False)
    model.timer = {}
    dy = rng.standard_normal(y.shape).astype(model.dtype)
    t0 = perf_counter()
    for _ in range(iterations):
        model.forward(x, training=True, logits=True)
        model.backward(dy, input_grad=False)
    total = perf_counter() - t0
    timer, model.timer = model.timer, None
    model.release()
    rows = []
    for node in (n for top in model.network.nodes for n in top.walk()):
        fwd, bwd = timer.get(node.path, (0.0, 0.0))
        path, into = model.plan.describe(node.path)
        fwd_ms, bwd_ms = 1e3 * fwd / iterations, 1e3 * bwd / iterations
        flops = 6 * node.macs * batch
        rows.append({"name": node.path, "type": node.type, "depth": node.path.count("."),
                     "path": path, "forward_ms": fwd_ms, "backward_ms": bwd_ms,
                     "macs": node.macs,
                     "gflops": (flops / (fwd_ms + bwd_ms) / 1e6
                                if node.macs and fwd_ms + bwd_ms > 0 else None),
                     "fused_into": into})
    return {"batch": batch, "iterations": iterations, "layers": rows,
            "total_ms": 1e3 * total / iterations,
            "images_per_second": batch * iterations / total}
