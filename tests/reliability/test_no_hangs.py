"""Nothing hangs: where a file is expected only a regular file is read (a FIFO would block for
ever, /dev/zero never ends while memory grows), with a size limit for specs and configs, and
folder scans skip and list what is not a regular file. Each command runs as a real process
under a timeout (and a memory limit), so a regression fails instead of hanging the suite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from harness import IMAGES, cnn, cnn_process, ok, one_error

TIMEOUT = 30  # seconds; each command below returns in about one


def error_line(result) -> str:
    """The one ``error:`` line of a process that exited 2 without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def fifo(tmp_path: Path):
    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        return path

    return make


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shapes", "/dev/zero"], "/dev/zero: is a device, not a regular file"),
        (["train", "--arch", "/dev/zero"], "/dev/zero: is a device, not a regular file"),
        (["gradcheck", "/dev/zero"], "/dev/zero: is a device, not a regular file"),
        (["time", "/dev/zero"], "/dev/zero: is a device, not a regular file"),
        (["evaluate", "/dev/zero"], "/dev/zero: is a device, not a regular file"),
        (["predict", "/dev/zero", "x.png"], "/dev/zero: is a device, not a regular file"),
    ],
    ids=["shapes", "train", "gradcheck", "time", "evaluate", "predict"],
)
def test_devices_are_refused_at_once(args: list[str], message: str) -> None:
    assert message in error_line(cnn_process(*args, timeout=TIMEOUT))


def test_stdin_of_dev_zero_ends(run: Path) -> None:
    with open("/dev/zero", "rb") as zero:
        line = error_line(cnn_process("shapes", "-", stdin=zero, timeout=TIMEOUT))
    assert "<stdin>" in line and "too large" in line
    with open("/dev/zero", "rb") as zero:
        line = error_line(cnn_process("predict", run, "-", stdin=zero, timeout=TIMEOUT))
    assert "<stdin>" in line and "too large" in line


def test_settings_files_that_never_end(data: dict[str, Path], tmp_path: Path, fifo) -> None:
    line = error_line(cnn_process("train", "--arch", data["spec"], "--config", "/dev/zero",
                                  timeout=TIMEOUT))
    assert "/dev/zero: cannot read training config (is a device" in line
    pipe = fifo(tmp_path / "aug.yaml")
    line = error_line(cnn_process("train", "--arch", data["spec"], "--data", data["npz"],
                                  "--augment", pipe, "--out", tmp_path / "r", timeout=TIMEOUT))
    assert "aug.yaml" in line and "FIFO" in line
    line = error_line(cnn_process("augment", IMAGES / "digits", "--out", tmp_path / "o",
                                  "--pipeline", "/dev/zero", timeout=TIMEOUT))
    assert "cannot read pipeline file /dev/zero: is a device" in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_fifos_where_files_are_expected(run: Path, tmp_path: Path, fifo) -> None:
    spec = fifo(tmp_path / "spec.yaml")
    assert "spec.yaml: is a FIFO" in error_line(cnn_process("shapes", spec, timeout=TIMEOUT))
    ckpt = fifo(tmp_path / "c.npz")
    assert "c.npz: is a FIFO" in error_line(cnn_process("evaluate", ckpt, timeout=TIMEOUT))
    data = fifo(tmp_path / "d.npz")
    line = error_line(cnn_process("evaluate", run, "--data", data, timeout=TIMEOUT))
    assert "d.npz" in line


def test_a_fifo_inside_augments_input_is_skipped_and_listed(tmp_path: Path, fifo) -> None:
    src = tmp_path / "in"
    shutil.copytree(IMAGES / "digits", src)
    fifo(src / "6" / "x.png")
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        result = cnn_process("augment", src, "--out", out, "-j", workers, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert "skipped 6/x.png: is a FIFO (named pipe), not a regular file" in result.stderr
        assert not list(out.rglob("x_*"))
    # a dry run too, and a FIFO given as the input itself
    result = cnn_process("augment", src, "--out", tmp_path / "dry", "--dry-run", timeout=TIMEOUT)
    assert result.returncode == 0 and "skipped 6/x.png" in result.stderr
    line = error_line(cnn_process("augment", src / "6" / "x.png", "--out", tmp_path / "one",
                                  timeout=TIMEOUT))
    assert "neither a folder nor a regular file" in line


def test_a_fifo_in_training_and_predict_folders(
    data: dict[str, Path], run: Path, tmp_path: Path, fifo
) -> None:
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    fifo(images / "c0" / "zz.png")
    result = cnn_process("train", "--arch", data["spec"], "--data", images, "--epochs", 1,
                         "--out", tmp_path / "r", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"warning: skipped {images / 'c0' / 'zz.png'}: is a FIFO" in result.stderr
    result = cnn_process("predict", run, images / "c0", timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "zz.png: is a FIFO" in result.stderr
    result = cnn_process("predict", run, images / "c0" / "zz.png", timeout=TIMEOUT)
    assert result.returncode == 1 and "zz.png: is a FIFO" in result.stderr


def test_specs_and_configs_have_a_size_limit(data: dict[str, Path], tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(data["spec"].read_text() + ("# padding\n" * 900_000))
    line = one_error(cnn("shapes", big))
    assert "big.yaml" in line and "too large" in line and "8 MiB" in line
    line = one_error(cnn("shapes", "-", input=big.read_text()))
    assert "<stdin>" in line and "too large" in line
    line = one_error(cnn("train", "--arch", data["spec"], "--config", big))
    assert "big.yaml: cannot read training config" in line and "too large" in line
    ok(cnn("shapes", data["spec"]))
