"""CIFAR-10 / CIFAR-100 binary batches, built here from the shipped photographs, read by --data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.data.dataset import detect_format, load_dataset
from cnncli.errors import DataError

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "sample_data/images/photos").rglob("*.jpg"))


def _pixels() -> np.ndarray:
    """The photographs at 32x32, uint8 [N, 3, 32, 32] (CIFAR's channel-planar layout)."""
    out = [np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR))
           for p in PHOTOS]
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def _write(path: Path, labels: list[np.ndarray], x: np.ndarray) -> None:
    recs = np.concatenate([*(lab[:, None].astype(np.uint8) for lab in labels),
                           x.reshape(len(x), -1)], axis=1)
    path.write_bytes(recs.tobytes())


def test_cifar10_batches_read_as_written(tmp_path):
    x = _pixels()
    assert len(x) >= 4
    y = np.arange(len(x)) % 10
    _write(tmp_path / "data_batch_1.bin", [y[:-2]], x[:-2])
    _write(tmp_path / "data_batch_2.bin", [y[-2:-1]], x[-2:-1])
    _write(tmp_path / "test_batch.bin", [y[-1:]], x[-1:])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    (tmp_path / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    assert detect_format(tmp_path) == "cifar"
    splits = load_dataset(tmp_path, (32, 32, 3), num_classes=10)
    assert splits.classes == names
    assert len(splits.train) == len(x) - 1 and len(splits.test) == 1
    assert splits.train.y.tolist() == y[:-1].tolist()
    # normalised per channel: the batch's channel means are 0 after the training split's fit
    np.testing.assert_allclose(splits.train.x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert "CIFAR-10" in splits.fit_rule


def test_cifar10_pixels_are_channel_planar(tmp_path):
    x = _pixels()[:2]
    _write(tmp_path / "data_batch_1.bin", [np.array([3, 5])], x)
    from cnncli.data.cifar import read_cifar_folder

    src = read_cifar_folder(tmp_path)
    np.testing.assert_array_equal(np.rint(src.splits["train"].x * 255).astype(np.uint8), x)
    assert src.splits["train"].y.tolist() == [3, 5]


@pytest.mark.parametrize(("outputs", "which"), [(20, 0), (100, 1)])
def test_cifar100_coarse_or_fine_follows_the_network(tmp_path, outputs, which):
    x = _pixels()
    coarse, fine = np.arange(len(x)) % 20, (np.arange(len(x)) * 7) % 100
    _write(tmp_path / "train.bin", [coarse, fine], x)
    splits = load_dataset(tmp_path, (32, 32, 3), num_classes=outputs)
    assert splits.train.y.tolist() == (coarse, fine)[which].tolist()
    assert len(splits.classes) == outputs


def test_a_truncated_batch_names_the_file(tmp_path):
    x = _pixels()[:2]
    _write(tmp_path / "data_batch_1.bin", [np.array([1, 2])], x)
    (tmp_path / "data_batch_1.bin").write_bytes((tmp_path / "data_batch_1.bin").read_bytes()[:-5])
    with pytest.raises(DataError, match="data_batch_1.bin: .* not a whole number of CIFAR"):
        load_dataset(tmp_path, (32, 32, 3), num_classes=10)
