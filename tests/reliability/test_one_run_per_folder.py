"""One run folder, one run: a locked folder refuses a second process (exit 2, naming the
folder and the holder's pid), and a run stopped before its first epoch ended leaves no run
behind (so the same command simply starts it again, and --resume says there is nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import (
    IMAGES,
    cnn,
    cnn_process,
    copy_run,
    ok,
    one_error,
    spawn,
    tree,
    wait_for_line,
)

import cnncli.train.loop as loop


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@contextmanager
def held_by_another_process(folder: Path) -> Iterator[int]:
    """A child process holding ``folder``'s lock (flock on .cnn.lock, its pid inside)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); "
            "print('locked', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder / ".cnn.lock")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    try:
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def train_args(data: dict[str, Path], out: Path, *more: Any) -> list[Any]:
    return ["train", "--arch", data["spec"], "--data", data["npz"], "--out", out,
            "--batch-size", 32, *more]


def test_a_locked_run_folder_is_refused_naming_the_holder(
    data: dict[str, Path], run: Path, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh"
    with held_by_another_process(fresh) as pid:
        line = one_error(cnn(*train_args(data, fresh, "--epochs", 1)))
    assert f"{fresh}: the run folder is in use by another cnn process (pid {pid})" in line
    assert sorted(p.name for p in fresh.iterdir()) == [".cnn.lock"]  # the holder's, no more

    mine = copy_run(run, tmp_path / "run")
    before = tree(mine)
    with held_by_another_process(mine) as pid:
        for args in (train_args(data, mine, "--overwrite", "--epochs", 1),
                     ["train", "--resume", mine, "--epochs", 3]):
            line = one_error(cnn(*args))
            assert f"in use by another cnn process (pid {pid})" in line, args
        assert {k: v for k, v in tree(mine).items() if k != ".cnn.lock"} == before


def test_a_locked_augment_output_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with held_by_another_process(out) as pid:
        line = one_error(cnn("augment", IMAGES / "digits", "--out", out, "-j", 1))
    assert f"{out}: the output folder is in use by another cnn process (pid {pid})" in line
    assert [p.name for p in out.iterdir()] == [".cnn.lock"]  # the holder's, no more


def test_two_runs_started_together_into_one_folder(data: dict[str, Path], tmp_path: Path) -> None:
    """Both used to exit 0 with one run silently lost; now exactly one runs."""
    out = tmp_path / "run"
    args = [*train_args(data, out, "--epochs", 2), "-q"]
    procs = [spawn(*args) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "Traceback" not in loser
    assert "in use by another cnn process" in loser or "already holds a run" in loser
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3  # header and two epochs: one run, not two interleaved


def test_a_run_interrupted_before_its_first_epoch_is_no_run(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(loop, "train_step", interrupted)
        result = cnn(*train_args(data, out, "--epochs", 2, "-q"))
    assert result.exit_code == 130
    assert "nothing was saved" in result.stderr
    assert not out.exists()  # the folder it made is gone again

    # The same in a folder that existed: it stays, empty, and is not a run either.
    out.mkdir()
    with monkeypatch.context() as m:
        m.setattr(loop, "train_step", interrupted)
        assert cnn(*train_args(data, out, "--epochs", 2, "-q")).exit_code == 130
    assert list(out.iterdir()) == []
    line = one_error(cnn("train", "--resume", out))
    assert "no checkpoints/last.npz" in line and "nothing to resume" in line
    ok(cnn(*train_args(data, out, "--epochs", 1, "-q")))  # no --overwrite needed


def test_a_run_killed_before_its_first_epoch_is_no_run(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """kill -9 while the first epoch runs (20,000 steps of one image through three 64-filter
    convs: about 30 s, so the kill lands inside it however fast the engine gets)."""
    out = tmp_path / "run"
    wide = tmp_path / "wide.yaml"
    spec = yaml.safe_load(data["spec"].read_text())
    spec["layers"][0]["conv"]["filters"] = 64
    spec["layers"][1:1] = [{"conv": {"filters": 64, "kernel": 3, "padding": "same",
                                     "activation": "relu"}}] * 2
    wide.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = spawn("train", "--arch", wide, "--data", data["huge"], "--out", out,
                 "--batch-size", 1, "--epochs", 3, "--lr", 0.005)
    wait_for_line(proc, " parameters for ")  # "training 232 parameters for 3 epochs ..."
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "checkpoints" / "last.npz").exists()
    # Not a run: the same command starts again without --overwrite, and a resume says why not.
    line = one_error(cnn("train", "--resume", out))
    assert "nothing to resume" in line
    ok(cnn("train", "--arch", data["spec"], "--data", data["npz"], "--out", out,
           "--epochs", 1, "-q"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".cnn.lock"]


def test_the_lock_is_released_when_a_run_ends(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    ok(cnn(*train_args(data, out, "--epochs", 1, "-q")))
    assert not (out / ".cnn.lock").exists()
    with held_by_another_process(out):  # the folder was free: the child got the lock
        pass
    result = cnn_process("train", "--resume", out, "--epochs", 2, "-q", timeout=120)
    assert result.returncode == 0, result.stderr
