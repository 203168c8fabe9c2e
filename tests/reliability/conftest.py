"""Session fixtures for the reliability tests; the helpers are in ``harness.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from harness import TINY, bands, cnn, ok


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny spec, a tiny npz data set, a bigger one (slow epochs) and an image folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("reliability-data")
    spec = root / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    x, y = bands(96, 1)
    np.savez(root / "bands.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    xb, yb = bands(6000, 2)
    np.savez(root / "big.npz", x_train=xb, y_train=yb)
    xh, yh = bands(20000, 4)  # with --batch-size 1: an epoch of several seconds
    np.savez(root / "huge.npz", x_train=xh, y_train=yh)
    for i, (a, c) in enumerate(zip(*bands(16, 3))):
        folder = root / "images" / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    return {"root": root, "spec": spec, "npz": root / "bands.npz", "big": root / "big.npz",
            "huge": root / "huge.npz", "images": root / "images"}


@pytest.fixture(scope="session")
def run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (read-only for tests: copy it before changing it)."""
    out = tmp_path_factory.mktemp("reliability-run") / "run"
    ok(cnn("train", "--arch", data["spec"], "--data", data["npz"], "--epochs", 1,
           "--batch-size", 32, "--out", out, "-q"))
    return out
