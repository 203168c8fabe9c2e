"""Autotuning (cuDNN's benchmark mode): time each conv's candidate kernel paths once per
shape and plan with the fastest.

The cost rules in ``ops.conv.algo.choose`` were set on the networks the README names; a
layer shape they misjudge can be timed instead. For every conv step of a model, each
direction (forward, weight gradient, input gradient) is timed on one part's worth of
random images with every path that can run it (``ops.conv.candidates``), the other two
directions held at the rules' choice; the fastest per direction wins. Results are cached
in a JSON file keyed by the machine, the thread count and the layer's shapes, so a shape
is timed once per machine (``$CNNCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnncli``, else
``~/.cache/cnncli``). Timing changes which kernels run, never what they compute beyond
float rounding: every path is tested against the im2col twin.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from cnncli.errors import CnnError

#: Bumped when the paths or the key change, so that old timings are not reused.
VERSION = 1
#: A candidate whose first run takes this many times the best so far is not timed further.
_GIVE_UP = 3.0
_REPEATS = 3


def default_cache_file() -> Path:
    """Where timings are kept between runs."""
    base = os.environ.get("CNNCLI_CACHE_DIR")
    if base:
        return Path(base) / "autotune.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "cnncli" / "autotune.json"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == VERSION else {}


def _save(path: Path, entries: dict) -> None:
    from cnncli.fileio import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"version": VERSION, "entries": entries}, indent=1))
    except (OSError, CnnError):
        pass  # a cache that cannot be written only costs the timing next time


def _best_time(fn: Callable[[], Any], limit: float | None) -> float:
    t0 = perf_counter()
    fn()
    first = perf_counter() - t0
    if limit is not None and first > _GIVE_UP * limit:
        return first
    best = first
    for _ in range(_REPEATS):
        t0 = perf_counter()
        fn()
        best = min(best, perf_counter() - t0)
    return best


def tune(model: Any, batch: int, *, cache_file: Path | str | None = None,
         log: Callable[[str], Any] | None = None) -> tuple[dict, list[dict]]:
    """(node path -> ConvAlgo for every conv the plan runs on its own, a report row per
    conv with the timings in ms). Uses and updates the on-disk cache."""
    from cnncli.engine.plan import ConvPoolStep
    from cnncli.ops import _threads, conv

    path = Path(cache_file) if cache_file is not None else default_cache_file()
    store = _load(path).get("entries", {})
    ranges = model._ranges(batch)
    part = ranges[0][1] - ranges[0][0]
    opts, dtype = model.options, model.dtype
    head = f"v{VERSION}|{_cpu()}|threads={len(ranges)}|{dtype}|n={part}"
    algos: dict[str, Any] = {}
    report: list[dict] = []
    changed = False
    rng = np.random.default_rng(0)
    for step in model.plan.by_path.values():
        node = step.node
        if node.type != "conv" or isinstance(step, ConvPoolStep):
            continue
        layer = node.layer
        h, w, c = node.in_shape
        act = layer.cfg.get("activation")
        fused = act[0] if act is not None and act[0] in conv.FUSED_ACTIVATIONS else None
        g = conv.geometry((h, w), node.params["weight"], layer.stride, layer.pad,
                          layer.dilation, layer.groups)
        key = f"{head}|{g}|c={c}|k={layer.filters}|act={fused}|bias={layer.bias}"
        hit = store.get(key)
        if hit is not None:
            algo = step.kwargs["algo"]._replace(fwd=hit["fwd"], dx=hit["dx"], dw=hit["dw"])
            algos[node.path] = algo
            report.append({"name": node.path, "path": algo.describe(), "cached": True,
                           "timings_ms": hit.get("timings_ms", {})})
            continue
        if log is not None and not report:
            log("autotuning the convolutions (timed once per shape, cached in "
                f"{path})")
        x = rng.standard_normal((part, c, h, w)).astype(dtype)
        wt = (rng.standard_normal(node.params["weight"]) * 0.1).astype(dtype)
        b = np.zeros(layer.filters, dtype=dtype) if layer.bias else None
        with _threads.engine_region():
            algo, timings = _tune_one(conv, x, wt, b, layer, g, fused, opts)
        algos[node.path] = algo
        store[key] = {"fwd": algo.fwd, "dx": algo.dx, "dw": algo.dw, "timings_ms": timings}
        changed = True
        report.append({"name": node.path, "path": algo.describe(), "cached": False,
                       "timings_ms": timings})
    if changed:
        _save(path, store)
    return algos, report


def _tune_one(conv: Any, x, wt, b, layer: Any, g, fused, opts) -> tuple[Any, dict]:
    """The fastest path per direction for one conv, and every candidate's time (ms)."""
    c, k = x.shape[1], wt.shape[0]
    cands = conv.candidates(g, c, k, x.dtype, opts)
    best = conv.choose(g, c, k, x.dtype, opts)
    paths = {d: sorted({getattr(a, d) for a in cands}, key=lambda p: p != getattr(best, d))
             for d in ("fwd", "dw", "dx")}
    args = (layer.stride, layer.pad, layer.dilation, layer.groups)
    timings: dict[str, dict[str, float]] = {"fwd": {}, "dw": {}, "dx": {}}

    def fwd(algo):
        return conv.conv2d_forward(x, wt, b, *args, act=fused, algo=algo, options=opts)

    def timed(direction: str, make: Callable[[str], Callable[[], Any]]) -> str:
        limit = None
        for p in paths[direction]:
            t = _best_time(make(p), limit)
            timings[direction][p] = round(1e3 * t, 4)
            limit = t if limit is None else min(limit, t)
        return min(timings[direction], key=timings[direction].get)

    algo = best._replace(fwd=timed("fwd", lambda p: lambda: fwd(best._replace(fwd=p))))
    y, _ = fwd(algo)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    act = (fused, y) if fused else None

    def backward(a, need_dx: bool):
        _, cache = fwd(a)
        return lambda: conv.conv2d_backward(dy, cache, need_dx=need_dx, act=act)

    algo = algo._replace(dw=timed("dw", lambda p: backward(algo._replace(dw=p), False)))
    algo = algo._replace(dx=timed("dx", lambda p: backward(algo._replace(dx=p), True)))
    return algo, timings
