"""Evaluation of a saved checkpoint and prediction on image files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import DataError


def load_trained(checkpoint: str | Path) -> tuple[Any, dict[str, Any], Path]:
    """(model, meta, path) from a run folder (its best checkpoint) or a checkpoint file."""
    from cnncli.engine.model import build_model
    from cnncli.errors import ShapeMismatchError
    from cnncli.train.loop import resolve_checkpoint
    from cnncli.train.meta import load_training_checkpoint

    path = resolve_checkpoint(checkpoint, prefer="best")
    arrays, meta, spec = load_training_checkpoint(path, resume=False)
    model = build_model(spec, seed=0)
    weights = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights)
    except ShapeMismatchError as exc:
        raise DataError(f"{path}: checkpoint does not match its spec ({exc})") from None
    return model, meta, path


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None,
                        top_k: int = 5, batch_size: int = 1000) -> dict[str, Any]:
    """Loss, accuracy, top-k, per-class precision/recall/F1 and the confusion matrix."""
    from cnncli.data.dataset import Normalizer, load_dataset
    from cnncli.train.loop import evaluate_model
    from cnncli.train.metrics import classification_report

    model, meta, path = load_trained(checkpoint)
    data_path = data or _default_data(meta)
    splits = load_dataset(data_path, tuple(meta["input"]), 0.0, 0,
                          normalizer=Normalizer.from_dict(meta["normalizer"], str(path)),
                          num_classes=len(meta["classes"]))
    ds = splits.test or splits.train
    split = "test" if splits.test is not None else "train"
    ev = evaluate_model(model, ds, meta.get("loss", "cross_entropy"), batch_size)
    report = classification_report(ds.y, ev["scores"], list(meta["classes"]), top_k)
    return {"checkpoint": str(path), "data": str(data_path), "split": split,
            "images": len(ds), "loss": ev["loss"], **report}


def _default_data(meta: dict[str, Any]) -> str:
    return recorded_data(meta) or "sample_data/mnist"


def recorded_data(meta: dict[str, Any]) -> str | None:
    """The data set a checkpoint was trained on: the path as it was given when that still
    exists from here (so reports show what the user typed), else the absolute path recorded
    next to it (``data_resolved``), for commands run from another folder."""
    given, resolved = meta.get("data"), meta.get("data_resolved")
    given = given if isinstance(given, str) else None
    if given is not None and (Path(given).is_absolute() or Path(given).exists()):
        return given
    return resolved if isinstance(resolved, str) else given


def evaluation_inputs(checkpoint: str | Path,
                      data: str | Path | None) -> list[tuple[Path | None, str]]:
    """What ``evaluate_checkpoint`` reads, as ``(path, label)`` for
    :func:`cnncli.fileio.guard_outputs`: the checkpoint (and its run's checkpoints folder)
    and the data set."""
    from cnncli.checkpoint import read_checkpoint_meta
    from cnncli.train.loop import resolve_checkpoint

    path = resolve_checkpoint(checkpoint, prefer="best")
    if data is None:
        data = _default_data(read_checkpoint_meta(path))
    folder = path.parent if path.parent.name == "checkpoints" else None
    return [(path, "the checkpoint"), (folder, "the run's checkpoints folder"),
            (Path(data), "the data set")]


def expand_paths(items: Iterable[str]) -> list[Path]:
    """Files as given; folders searched recursively for images (sorted)."""
    return expand_paths_skipping(items)[0]


def expand_paths_skipping(items: Iterable[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """:func:`expand_paths`, and the entries a folder scan skipped (FIFOs, devices named
    like images) with the reason."""
    from cnncli.imageio import scan_images

    out: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found, others = scan_images(p, recursive=True, skip_hidden=False)
            out += found
            skipped += others
        else:
            out.append(p)
    return out, skipped


def read_images(meta: dict[str, Any], paths: list[Path]
                ) -> tuple[np.ndarray | None, list[Path], list[dict[str, Any]]]:
    """The readable images fitted to a trained model's input, as float32 ``[N, C, H, W]``
    in [0, 1] before normalisation (None if none was readable), their paths, and an
    ``{"path", "error"}`` entry per unreadable file. ``cnn predict`` and ``cnn viz`` both
    read images this way, so a picture shows what the model was fed."""
    from cnncli.imageio import load_image

    h, w, c = meta["input"]
    arrays, ok, errors = [], [], []
    for p in paths:
        try:
            x, _, _ = load_image(p, h, w, c)
            arrays.append(x)
            ok.append(p)
        except DataError as exc:
            errors.append({"path": str(p), "error": str(exc)})
    return (np.stack(arrays).astype(np.float32) if arrays else None), ok, errors


def normalise(meta: dict[str, Any], x: np.ndarray, where: str = "normalisation") -> np.ndarray:
    """Images from :func:`read_images` normalised with the training statistics (a copy);
    ``where`` (the checkpoint) starts an error about a bad normalisation record."""
    from cnncli.data.dataset import Normalizer

    return Normalizer.from_dict(meta["normalizer"], where).apply(np.array(x, dtype=np.float32))


def predict_images(checkpoint: str | Path, paths: list[Path], top_k: int = 3,
                   batch_size: int = 256) -> list[dict[str, Any]]:
    """Top-k labels with probabilities per image; unreadable files get an ``error``."""
    from cnncli.ops.activations import forward as act_forward

    model, meta, path = load_trained(checkpoint)
    classes = list(meta["classes"])
    k = min(top_k, len(classes))
    results: list[dict[str, Any]] = []
    for lo in range(0, len(paths), batch_size):
        raw, ok, errors = read_images(meta, paths[lo:lo + batch_size])
        results += errors
        if raw is None:
            continue
        xb = normalise(meta, raw, str(path))
        logits = model.forward(xb, training=False, logits=True)
        probs, _ = act_forward("softmax", logits.astype(np.float64))
        for p, row in zip(ok, probs):
            top = np.argsort(-row, kind="stable")[:k]
            results.append({"path": str(p), "top": [
                {"label": classes[i], "probability": float(row[i])} for i in top]})
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order.get(r["path"], 0))
    return results
