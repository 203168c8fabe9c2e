"""What a training checkpoint must hold, checked before any of its arrays is read.

A checkpoint is data from disk: it may be old, foreign, hand-edited or damaged. Its meta
(``epoch: "one"``, ``history: "x"``) is checked field by field, and every array its headers
declare is checked against what the saved spec needs (names, shapes, real float dtypes)
*before* the data is read, so a header declaring a 10^7 x 10^7 array or complex weights is a
one-line error naming the file, not a MemoryError or a ComplexWarning. After reading, the
weights and optimizer state must be finite: a checkpoint holding NaN is never "good".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.checkpoint import ArrayHeader, load_checkpoint
from cnncli.errors import CnnError, DataError

__all__ = ["load_training_checkpoint"]

#: Keys a resumable checkpoint must have (evaluation and prediction need fewer).
RESUME_KEYS = ("spec_text", "config", "normalizer", "rng", "history", "epoch")
USE_KEYS = ("spec_text", "input", "classes", "normalizer")


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_meta(meta: dict[str, Any], path: Path, need: tuple[str, ...]) -> None:
    """Every field the loaders use has the type they assume (DataError naming the file)."""

    def bad(key: str, want: str) -> DataError:
        return DataError(f"{path}: bad checkpoint metadata: '{key}' must be {want}, got "
                         f"{_short(meta[key])}")

    if meta.get("kind") != "cnncli-train":
        raise DataError(f"{path}: not a cnncli training checkpoint")
    missing = [k for k in need if k not in meta]
    if missing:
        raise DataError(f"{path}: incomplete training checkpoint (no {', '.join(missing)})")
    checks: dict[str, tuple[Any, str]] = {
        "spec_text": (lambda v: isinstance(v, str), "the spec's text"),
        "spec_file": (lambda v: v is None or isinstance(v, str), "a file name or null"),
        "input": (lambda v: isinstance(v, list) and len(v) == 3
                  and all(_whole(d) and d > 0 for d in v), "[height, width, channels]"),
        "classes": (lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
                    "a non-empty list of class names"),
        "normalizer": (lambda v: isinstance(v, dict), "a mapping of mean and std"),
        "epoch": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
        "config": (lambda v: isinstance(v, dict), "a mapping of settings"),
        "rng": (lambda v: isinstance(v, dict)
                and all(isinstance(v.get(k), dict) for k in ("shuffle", "dropout", "augment")),
                "the states of the shuffle, dropout and augment generators"),
        "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                    "a list of per-epoch rows"),
        "best_value": (lambda v: v is None or _number(v), "a number or null"),
        "since_best": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
        "monitor": (lambda v: v in ("val_accuracy", "train_loss"), "val_accuracy or train_loss"),
        "loss": (lambda v: v in ("cross_entropy", "mse"), "cross_entropy or mse"),
        "data": (lambda v: v is None or isinstance(v, str), "a path"),
    }
    for key, (ok, want) in checks.items():
        if key in meta and not ok(meta[key]):
            raise bad(key, want)
    if "history" in meta and "epoch" in meta and len(meta["history"]) != meta["epoch"]:
        raise DataError(f"{path}: bad checkpoint metadata: {len(meta['history'])} rows of "
                        f"history for epoch {meta['epoch']}")
    if "normalizer" in meta:
        from cnncli.data.dataset import Normalizer

        norm = Normalizer.from_dict(meta["normalizer"], where=f"{path}: checkpoint")
        if "input" in meta and norm.mean.shape[0] != meta["input"][2]:
            raise DataError(f"{path}: bad checkpoint metadata: normalisation for "
                            f"{norm.mean.shape[0]} channels, input has {meta['input'][2]}")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(spec: Any) -> tuple[dict[str, tuple[int, ...]], set[str], int]:
    """(shape of every model array, names of trainable ones, classes) the spec needs."""
    from cnncli.spec import resolve

    network = resolve(spec)
    shapes: dict[str, tuple[int, ...]] = {}
    params: set[str] = set()
    for node in network.rows():
        if node.layer.is_block:
            continue
        for k, shape in node.params.items():
            shapes[f"{node.path}.{k}"] = tuple(shape)
            params.add(f"{node.path}.{k}")
        for k, shape in node.buffers.items():
            shapes[f"{node.path}.{k}"] = tuple(shape)
    out = network.output
    return shapes, params, out[0] if len(out) == 1 else -1


def _check_headers(path: Path, headers: dict[str, ArrayHeader], spec: Any,
                   meta: dict[str, Any]) -> None:
    """The declared arrays are exactly what the spec's model (and its optimizer) holds."""
    shapes, params, n_out = _expected(spec)
    if "classes" in meta and n_out != len(meta["classes"]):
        raise DataError(f"{path}: checkpoint names {len(meta['classes'])} classes but its "
                        f"spec's network has {n_out} outputs")

    def fail(name: str, why: str) -> DataError:
        return DataError(f"{path}: checkpoint does not match its spec: array '{name}' {why}")

    for name, (shape, dtype) in headers.items():
        if name in ("__meta__", "__format__"):
            continue
        kind, _, rest = name.partition("/")
        if kind == "model":
            want = shapes.get(rest)
        elif kind == "optim" and rest == "step":
            if shape != () or dtype.kind not in "iu":
                raise fail(name, f"must be a count, declared {dtype} {list(shape)}")
            continue
        elif kind == "optim":
            want = shapes.get(rest.partition("/")[2]) if rest.partition("/")[2] in params \
                else None
        else:
            want = None
        if want is None:
            raise fail(name, "is not one of its parameters or buffers")
        if shape != want:
            raise fail(name, f"is declared {'x'.join(map(str, shape)) or 'scalar'}, the spec "
                             f"needs {'x'.join(map(str, want)) or 'scalar'}")
        if dtype.kind != "f":
            raise fail(name, f"has dtype {dtype}; weights must be real floating-point numbers")
    missing = [k for k in shapes if f"model/{k}" not in headers]
    if missing:
        raise DataError(f"{path}: checkpoint does not match its spec: no "
                        f"{', '.join('model/' + k for k in missing[:3])}"
                        + (" ..." if len(missing) > 3 else ""))


def load_training_checkpoint(
    path: str | Path, *, resume: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
    """``(arrays, meta, spec)`` of a checkpoint written by ``cnn train``, fully checked.

    ``resume``: the checkpoint must hold everything a resumed run needs (settings, random
    streams, history); otherwise what evaluation and prediction need.
    """
    from cnncli.spec import parse_spec

    path = Path(path)
    state: dict[str, Any] = {}

    def check(meta: dict[str, Any], headers: dict[str, ArrayHeader]) -> None:
        _check_meta(meta, path, RESUME_KEYS if resume else USE_KEYS)
        try:
            spec = parse_spec(meta["spec_text"], file=meta.get("spec_file") or str(path))
        except CnnError as exc:
            raise DataError(f"{path}: the checkpoint's spec is invalid ({exc})") from None
        if "input" in meta and list(spec.input) != meta["input"]:
            raise DataError(f"{path}: bad checkpoint metadata: input {meta['input']} is not "
                            f"its spec's {list(spec.input)}")
        _check_headers(path, headers, spec, meta)
        state["spec"] = spec

    arrays, meta = load_checkpoint(path, check=check)
    bad = next((k for k, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()),
               None)
    if bad is not None:
        raise DataError(f"{path}: the checkpoint holds NaN or infinite values ({bad}); it is "
                        "not usable (was it written by a diverging run?)")
    return arrays, meta, state["spec"]
