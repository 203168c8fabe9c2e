"""Bad values are refused with a message naming the file (each was accepted with exit 0, or
reported without saying where): complex weights, images without pixels, a NaN residual
scale, an op parameter given twice, --tol nan, huge unsigned labels, NaN checkpoints, NaN
images; and one unreadable (NaN) image among good ones does not stop ``cnn predict``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from harness import IMAGES, cnn, copy_run, ok, one_error

from cnncli.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def rewrite(run: Path, dest: Path, change) -> Path:
    """A copy of ``run`` whose checkpoints' arrays went through ``change(arrays)``."""
    run = copy_run(run, dest)
    for name in ("last", "best"):
        path = run / "checkpoints" / f"{name}.npz"
        arrays, meta = load_checkpoint(path)
        save_checkpoint(path, change(arrays), meta)
    return run


def test_complex_weights_are_refused(run: Path, tmp_path: Path) -> None:
    bad = rewrite(run, tmp_path / "run", lambda a: {
        k: (v.astype(np.complex64) if k == "model/dense1.weight" else v) for k, v in a.items()})
    for args in (["evaluate", bad], ["train", "--resume", bad, "--epochs", 3]):
        result = cnn(*args)
        line = one_error(result)
        assert "model/dense1.weight' has dtype complex64" in line
        assert "ComplexWarning" not in result.stderr


def test_nan_weights_are_no_good_checkpoint(run: Path, tmp_path: Path) -> None:
    def poison(arrays: dict) -> dict:
        arrays["model/conv1.weight"] = np.full_like(arrays["model/conv1.weight"], np.nan)
        return arrays

    bad = rewrite(run, tmp_path / "run", poison)
    line = one_error(cnn("train", "--resume", bad, "--epochs", 3))
    assert f"{bad / 'checkpoints' / 'last.npz'}: the checkpoint holds NaN or infinite" in line
    assert "last good checkpoint" not in line
    assert "NaN" in one_error(cnn("evaluate", bad))


def test_images_without_pixels(data: dict[str, Path], tmp_path: Path) -> None:
    npz = tmp_path / "flat.npz"
    np.savez(npz, x_train=np.zeros((8, 0, 12), np.uint8), y_train=np.arange(8) % 4)
    line = one_error(cnn("train", "--arch", data["spec"], "--data", npz, "--out", tmp_path / "r"))
    assert "flat.npz (x_train): images have shape (8, 0, 12), with no pixels" in line
    assert not (tmp_path / "r").exists()


def test_a_nan_residual_scale(tmp_path: Path) -> None:
    spec = tmp_path / "res.yaml"
    spec.write_text("input: [8, 8, 4]\nlayers:\n  - residual:\n      name: block\n"
                    "      body: [{conv: {filters: 4, kernel: 3, padding: same}}]\n"
                    "      scale: .nan\n")
    line = one_error(cnn("shapes", spec))
    assert "res.yaml:6: layer 'block': (residual) 'scale' must be a finite number" in line
    spec.write_text("input: [8, 8, 4]\nlayers:\n  - leaky_relu: {slope: .inf}\n")
    assert "must be a finite number" in one_error(cnn("shapes", spec))


def test_an_op_parameter_given_twice(data: dict[str, Path], tmp_path: Path) -> None:
    line = one_error(cnn("augment", IMAGES / "digits", "--out", tmp_path / "o",
                         "--ops", "flip(p=0.5, p=0.7)"))
    assert "op 'flip': parameter 'p' is given twice" in line
    line = one_error(cnn("train", "--arch", data["spec"], "--data", data["npz"],
                         "--augment", "rotate(limit=5, limit=9)", "--out", tmp_path / "r"))
    assert "op 'rotate': parameter 'limit' is given twice" in line
    pipe = tmp_path / "p.yaml"
    pipe.write_text("ops:\n  - {op: flip, p: 0.5, p: 0.7}\n")
    line = one_error(cnn("augment", IMAGES / "digits", "--out", tmp_path / "o",
                         "--pipeline", pipe))
    assert f"{pipe}:2: not valid YAML: duplicate key 'p'" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("tol", ["nan", "inf", "-1", "0"])
def test_gradcheck_tolerance_must_be_a_positive_number(data: dict[str, Path], tol: str) -> None:
    assert "--tol must be a positive number" in one_error(
        cnn("gradcheck", data["spec"], "--tol", tol))


def test_huge_unsigned_labels_are_not_negative(data: dict[str, Path], tmp_path: Path) -> None:
    npz = tmp_path / "u64.npz"
    y = np.arange(16, dtype=np.uint64) % 4
    y[5] = 2**63 + 5
    np.savez(npz, x_train=np.zeros((16, 12, 12), np.uint8), y_train=y)
    line = one_error(cnn("train", "--arch", data["spec"], "--data", npz, "--out", tmp_path / "r"))
    assert "u64.npz (y_train): label 9223372036854775813 at index 5 is not a class index" in line
    assert "negative" not in line


def _nan_tiff(path: Path) -> Path:
    from PIL import Image

    plane = np.ones((12, 12), np.float32)
    plane[2, 2] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(plane, mode="F").save(path)
    return path


def test_nan_images_are_named(run: Path, data: dict[str, Path], tmp_path: Path) -> None:
    """A float TIFF holding NaN in a training folder: the error names the file, where it
    was 'input: contains NaN or inf', from deep inside the network."""
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    bad = _nan_tiff(images / "c1" / "zz.tif")
    line = one_error(cnn("evaluate", run, "--data", images))
    assert f"{bad}: the image holds NaN or infinite values" in line
    line = one_error(cnn("train", "--arch", data["spec"], "--data", images, "--out",
                         tmp_path / "r"))
    assert f"{bad}: the image holds NaN or infinite values" in line


def test_predict_goes_on_after_a_nan_tiff(run: Path, data: dict[str, Path],
                                          tmp_path: Path) -> None:
    from PIL import Image

    bad = _nan_tiff(tmp_path / "nan.tif")
    good = sorted(data["images"].rglob("*.png"))[:2]
    result = cnn("predict", run, good[0], bad, good[1], "--format", "json")
    assert result.exit_code == 1, result.stderr
    assert f"warning: {bad}: the image holds NaN or infinite values" in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(good[0]), str(good[1])]

    finite = tmp_path / "ok.tif"
    Image.fromarray(np.full((12, 12), 0.5, np.float32), mode="F").save(finite)
    ok(cnn("predict", run, finite))
