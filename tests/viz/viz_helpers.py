"""Helpers for the viz tests: loading the trained model, reading images as cnn predict does,
models built from a slice of a spec (the network "in halves"), and checking PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image


def trained(run: Path) -> tuple[Any, dict[str, Any]]:
    from cnncli.train.predict import load_trained

    model, meta, _ = load_trained(run)
    return model, meta


def model_input(meta: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(fitted image in [0, 1], normalised input), both [1, C, H, W]."""
    from cnncli.train.predict import normalise, read_images

    raw, ok, errors = read_images(meta, [path])
    assert raw is not None, errors
    return raw, normalise(meta, raw)


def sub_model(spec_file: Path, model: Any, lo: int, hi: int, input_hwc: list[int]) -> Any:
    """A model of the spec's top-level layers [lo, hi) with ``model``'s weights: the network
    cut in two, an independent route to a layer's activations and gradients."""
    from cnncli.engine.model import build_model

    raw = yaml.safe_load(spec_file.read_text())
    part = build_model({"name": "part", "input": input_hwc, "layers": raw["layers"][lo:hi]},
                       dtype=model.dtype)
    for name in part.state_dict():
        part.set(name, model.get(name))
    return part


def png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Open a PNG, check its pixel size and that it is not blank; return RGB pixels."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size, (im.size, size)
        rgb = np.asarray(im.convert("RGB"))
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{path}: only {len(colours)} colours"
    non_white = (rgb < 245).any(axis=2).mean()
    assert 0.02 < non_white < 0.98, f"{path}: {non_white:.1%} of the pixels are not white"
    return rgb
