"""One image reader, one extension set, one atomic write, for train, predict and augment.

``cnn augment`` used to ignore GIF (and PPM/PGM/PBM) files that training read, and predict
missed PBM; decoding was written twice and augment's atomic write never reached the disk.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from harness import IMAGES, cnn, ok
from PIL import Image

UNUSUAL = IMAGES / "edge" / "unusual"
DIGIT = sorted((IMAGES / "digits" / "6").iterdir())[0]
EVERY_FORMAT = {
    "png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "tif": "TIFF",
    "tiff": "TIFF", "webp": "WEBP", "ppm": "PPM", "pgm": "PPM", "pbm": "PPM",
}


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def every_format(folder: Path) -> Path:
    """Four class folders with the same digit saved in each image format (grey 28x28)."""
    with Image.open(DIGIT) as im:
        grey = im.convert("L")
    for ext, fmt in EVERY_FORMAT.items():
        (folder / "c0").mkdir(parents=True, exist_ok=True)
        img = grey.convert("RGB") if ext == "ppm" else grey.convert("1") if ext == "pbm" \
            else grey.convert("P") if ext == "gif" else grey
        img.save(folder / "c0" / f"digit_{ext}.{ext}", format=fmt)
    for k in (1, 2, 3):  # the tiny network has four classes
        shutil.copytree(folder / "c0", folder / f"c{k}")
    return folder


def test_the_one_extension_set() -> None:
    from cnncli.augment import io as augment_io
    from cnncli.data import folders
    from cnncli.imageio import IMAGE_EXTENSIONS

    assert augment_io.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS is folders.IMAGE_EXTENSIONS
    assert {f".{e}" for e in EVERY_FORMAT} == IMAGE_EXTENSIONS


def test_augment_reads_and_keeps_every_format(tmp_path: Path) -> None:
    src = every_format(tmp_path / "in")
    out = tmp_path / "out"
    result = ok(cnn("augment", src, "--out", out, "-j", 1, "--ops", "rotate=5", "--json"))
    summary = json.loads(result.stdout)
    assert summary["sources"] == 4 * len(EVERY_FORMAT) and not summary["failed"]
    for ext, fmt in EVERY_FORMAT.items():
        with Image.open(out / "c0" / f"digit_{ext}_0.{ext}") as im:
            assert im.format == fmt, ext
            if ext == "pbm":
                assert im.mode == "1"  # a bitmap stays a bitmap
            if ext == "gif":
                assert im.mode == "P"


def test_training_and_predict_read_the_same_formats(
    data: dict[str, Path], tmp_path: Path
) -> None:
    src = every_format(tmp_path / "in")
    run = tmp_path / "run"
    result = ok(cnn("train", "--arch", data["spec"], "--data", src, "--epochs", 1, "--out", run,
                    "--batch-size", 4))
    assert f"data: {4 * len(EVERY_FORMAT)} train" in result.stderr
    result = ok(cnn("predict", run, src / "c0", "--format", "json"))
    predicted = {Path(json.loads(line)["path"]).suffix for line in result.stdout.splitlines()}
    assert predicted == {f".{e}" for e in EVERY_FORMAT}


@pytest.mark.parametrize("name", ["exif_orientation6_chelsea.jpg", "palette_coffee.png",
                                  "gray16_camera.png", "rgba_coffee.png"])
def test_training_and_augment_decode_alike(name: str) -> None:
    """Same upright orientation, mode handling and 16-bit values from the one decoder."""
    from cnncli.imageio import load_image, read_image

    pixels, _ = read_image(UNUSUAL / name)
    h, w, c = pixels.shape
    top = 65535.0 if pixels.dtype == np.uint16 else 255.0
    want = pixels[:, :, :3 if c >= 3 else 1].astype(np.float32) / np.float32(top)
    got, size, _ = load_image(UNUSUAL / name, h, w, 3 if c >= 3 else 1)
    assert size == (h, w)
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), atol=1e-6)


def test_augment_outputs_reach_the_disk_before_their_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs are written without a flush each (speed), then the file system is synced
    once, then the manifests (flushed) list them."""
    import cnncli.augment.runner as runner

    order: list[str] = []
    real_manifests = runner.write_manifests
    monkeypatch.setattr(runner, "sync_filesystem", lambda folder: order.append("sync"))
    monkeypatch.setattr(runner, "write_manifests",
                        lambda *a: (order.append("manifests"), real_manifests(*a)))
    monkeypatch.setattr(os, "fsync", lambda fd: order.append("fsync"))
    ok(cnn("augment", IMAGES / "digits", "--out", tmp_path / "o", "-j", 1, "-n", 3))
    assert order[:2] == ["sync", "manifests"]
    # manifest.csv, manifest.jsonl and pipeline.yaml, each file and then its folder
    assert order[2:] == ["fsync"] * 6
