"""Shared fixtures: a LeNet-5 trained briefly on the sample MNIST, and test digits as PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from vizdata import INK, LENET, MNIST, Digit


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic writes still go through a temporary file and a rename; only the flush to disk
    is skipped, to keep these tests fast on a busy disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="session")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 (modern: ReLU, max pooling, 28 x 28 input) after 3 epochs of Adam on the
    4,000 sample MNIST training images (about 95% test accuracy, a few seconds)."""
    from cnncli.spec import load_spec
    from cnncli.train.config import resolve_config
    from cnncli.train.loop import train

    run = tmp_path_factory.mktemp("viz") / "lenet"
    spec = load_spec(LENET)
    cfg = resolve_config(spec.training, None, {"epochs": 3, "batch_size": 32,
                                               "optimizer": "adam", "lr": 0.002, "seed": 0})
    result = train(spec, data=MNIST, out=run, config=cfg)
    assert result.test["accuracy"] > 0.9
    return run


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Digit]:
    """The first 40 sample MNIST test images (4 of each digit) as PNG files."""
    from PIL import Image

    from cnncli.data.idx import read_idx_images, read_idx_labels

    folder = tmp_path_factory.mktemp("digits")
    images = read_idx_images(MNIST / "t10k-images-idx3-ubyte.gz")[:40]
    labels = read_idx_labels(MNIST / "t10k-labels-idx1-ubyte.gz")[:40]
    out = []
    for i, (img, label) in enumerate(zip(images, labels)):
        path = folder / f"test{i:02d}_{label}.png"
        Image.fromarray(img).save(path)
        ys, xs = np.nonzero(img > INK)
        out.append(Digit(path, int(label), img,
                         (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
    return out
