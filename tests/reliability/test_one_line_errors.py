"""Where one line and exit 2 are promised, no traceback: every case here printed one before
(a NUL byte in a spec, negative seeds, --out under a file or on a read-only file system,
non-UTF-8 pipelines, --save-pipeline naming a folder, batches too big for memory, damaged
checkpoint metadata, checkpoint headers declaring huge arrays)."""

from __future__ import annotations

import errno
import io
import os
import pathlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import IMAGES, cnn, copy_run, one_error

from cnncli.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_a_nul_byte_in_a_spec(tmp_path: Path) -> None:
    text = "name: x\ninput: [8, 8, 1]\x00\nlayers: [flatten]\n"
    spec = tmp_path / "nul.yaml"
    spec.write_text(text)
    assert f"{spec}:2: unacceptable character #x0000" in one_error(cnn("shapes", spec))
    assert "<stdin>:2: unacceptable character" in one_error(cnn("shapes", "-", input=text))
    assert f"{spec}:2:" in one_error(cnn("train", "--arch", spec))


def test_negative_seeds(data: dict[str, Path], tmp_path: Path) -> None:
    args = ["train", "--arch", data["spec"], "--data", data["npz"], "--out", tmp_path / "r"]
    assert "seed must be a non-negative integer, got -1" in one_error(cnn(*args, "--seed", -1))
    config = tmp_path / "c.yaml"
    config.write_text("seed: -1\n")
    line = one_error(cnn(*args, "--config", config))
    assert str(config) in line and "seed must be a non-negative integer" in line
    spec = tmp_path / "s.yaml"
    spec.write_text(data["spec"].read_text() + "training: {seed: -3}\n")
    line = one_error(cnn("train", "--arch", spec, "--data", data["npz"], "--out", tmp_path / "r"))
    assert "spec 'training' section: seed must be a non-negative integer, got -3" in line
    line = one_error(cnn("gradcheck", data["spec"], "--seed", -1))
    assert "--seed must be a non-negative integer" in line
    assert not (tmp_path / "r").exists()


def test_out_below_a_regular_file(data: dict[str, Path], tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me\n")
    line = one_error(cnn("train", "--arch", data["spec"], "--data", data["npz"], "--epochs", 1,
                         "--out", afile / "run"))
    assert "notes.txt is a file, not a folder" in line
    line = one_error(cnn("augment", IMAGES / "digits", "--out", afile / "aug", "-j", 1))
    assert "notes.txt is a file, not a folder" in line
    assert afile.read_text() == "keep me\n"


def test_out_on_a_read_only_file_system(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Simulated: the tests may run as root, for whom no folder is read-only.)"""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self: Path, *args: Any, **kw: Any) -> None:
        if str(self).startswith(str(ro)) and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "mkdir", lambda *a, **k: mkdir(Path(a[0])))
    line = one_error(cnn("train", "--arch", data["spec"], "--data", data["npz"], "--epochs", 1,
                         "--out", ro / "run"))
    assert "ro/run: cannot create the run folder (read-only file system)" in line
    line = one_error(cnn("augment", IMAGES / "digits", "--out", ro / "aug", "-j", 1))
    assert "ro/aug: cannot create the output folder (read-only file system)" in line


def test_non_utf8_pipeline_files(data: dict[str, Path], tmp_path: Path) -> None:
    pipe = tmp_path / "p.yaml"
    pipe.write_bytes(b"ops:\n  - {op: flip}\n# caf\xe9\n")
    line = one_error(cnn("augment", IMAGES / "digits", "--out", tmp_path / "o", "--pipeline",
                         pipe))
    assert f"cannot read pipeline file {pipe}: pipeline file is not UTF-8 text" in line
    assert "line 3" in line
    line = one_error(cnn("train", "--arch", data["spec"], "--data", data["npz"], "--augment",
                         pipe, "--out", tmp_path / "r"))
    assert "is not UTF-8 text" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_save_pipeline_naming_a_folder(tmp_path: Path) -> None:
    line = one_error(cnn("augment", "--ops", "flip", "--save-pipeline", tmp_path))
    assert "is a folder" in line
    line = one_error(cnn("augment", IMAGES / "digits", "--out", tmp_path / "o", "--ops", "flip",
                         "--save-pipeline", tmp_path))
    assert "is a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["time", "gradcheck"])
def test_batches_too_big_for_memory(data: dict[str, Path], command: str) -> None:
    line = one_error(cnn(command, data["spec"], "--batch", 10_000_000_000))
    assert "--batch 10,000,000,000 needs about" in line and "use a smaller --batch" in line


# -- checkpoints --------------------------------------------------------------------------------


def with_meta(run: Path, dest: Path, **changes: Any) -> Path:
    """A copy of ``run`` whose last.npz and best.npz carry ``changes`` in their meta."""
    run = copy_run(run, dest)
    for name in ("last", "best"):
        path = run / "checkpoints" / f"{name}.npz"
        arrays, meta = load_checkpoint(path)
        save_checkpoint(path, arrays, {**meta, **changes})
    return run


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epoch": "one"}, "'epoch' must be a whole number >= 0, got 'one'"),
        ({"epoch": -5}, "'epoch' must be a whole number >= 0, got -5"),
        ({"history": "x"}, "'history' must be a list of per-epoch rows, got 'x'"),
        ({"epoch": 7}, "1 rows of history for epoch 7"),
        ({"rng": {"shuffle": 3}}, "'rng' must be the states of"),
        ({"since_best": True}, "'since_best' must be a whole number"),
        ({"input": [12, 12]}, "'input' must be [height, width, channels]"),
        ({"classes": "abcd"}, "'classes' must be a non-empty list of class names"),
    ],
)
def test_bad_checkpoint_meta(run: Path, tmp_path: Path, change: dict, message: str) -> None:
    bad = with_meta(run, tmp_path / "run", **change)
    last = bad / "checkpoints" / "last.npz"
    line = one_error(cnn("train", "--resume", bad, "--epochs", 9))
    assert f"{last}: bad checkpoint metadata: {message}" in line, line
    if "epoch" not in change and "history" not in change and "rng" not in change \
            and "since_best" not in change:
        line = one_error(cnn("evaluate", last))
        assert f"{last}: bad checkpoint metadata: {message}" in line, line


def _replace_member(path: Path, name: str, header: dict, data: bytes) -> None:
    """Rewrite ``path`` with member ``name``.npy holding ``header`` and then ``data``."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)  # the magic string, then the header
    members[f"{name}.npy"] = buf.getvalue() + data
    with zipfile.ZipFile(path, "w") as zf:
        for member, raw in members.items():
            zf.writestr(member, raw)


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        ({"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**7)}, b"\0" * 64,
         "array 'model/conv1.weight' declares 10000000x10000000 float32 (400,000,000,000,000 "
         "bytes) but holds 64"),
        ({"descr": "<f4", "fortran_order": False, "shape": (100, 100)}, b"\0" * 40_000,
         "does not match its spec: array 'model/conv1.weight' is declared 100x100, the spec "
         "needs 4x1x3x3"),
        ({"descr": "<c8", "fortran_order": False, "shape": (4, 1, 3, 3)}, b"\0" * 288,
         "array 'model/conv1.weight' has dtype complex64; weights must be real"),
    ],
    ids=["huge", "wrong-shape", "complex"],
)
def test_checkpoint_arrays_are_checked_before_they_are_read(
    run: Path, tmp_path: Path, header: dict, payload: bytes, message: str
) -> None:
    bad = copy_run(run, tmp_path / "run")
    for name in ("last", "best"):
        _replace_member(bad / "checkpoints" / f"{name}.npz", "model/conv1.weight", header,
                        payload)
    for args in (["train", "--resume", bad, "--epochs", 3], ["evaluate", bad],
                 ["predict", bad, next((IMAGES / "digits" / "6").iterdir())]):
        result = cnn(*args)
        line = one_error(result)
        assert message in line, (args, line)
        assert "ComplexWarning" not in result.stderr


def test_meta_checks_name_the_file_for_normalisation(run: Path, tmp_path: Path) -> None:
    bad = with_meta(run, tmp_path / "run", normalizer={"mean": [0.5], "std": [-1.0]})
    line = one_error(cnn("evaluate", bad))
    assert line.startswith(f"error: {bad / 'checkpoints' / 'best.npz'}: checkpoint: bad "
                           "normalisation record")
    assert "one finite mean and one positive std per channel" in line
