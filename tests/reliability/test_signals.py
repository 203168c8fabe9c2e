"""Signals and temporary files: SIGTERM is Ctrl-C (exit 143, the last good checkpoint kept,
resumable), a second Ctrl-C during the clean-up changes nothing (exit 130, no traceback), and
no temporary file of an atomic write survives: removed on every exit path Python sees, and
those of killed processes removed when the folder is next used."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import IMAGES, cnn, copy_run, ok, spawn, wait_for_line

from cnncli.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def slow_training(data: dict[str, Path], out: Path, epochs: int = 30) -> subprocess.Popen:
    """A run of about a second per epoch that prints a line per epoch."""
    return spawn("train", "--arch", data["spec"], "--data", data["big"], "--out", out,
                 "--batch-size", 8, "--epochs", epochs)


def test_sigterm_is_like_ctrl_c(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = slow_training(data, out)
    wait_for_line(proc, "epoch   1 |")
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert code == 143, (code, err)
    assert "Traceback" not in err
    assert "terminated (SIGTERM)" in err and f"cnn train --resume {out}" in err
    _, meta = load_checkpoint(out / "checkpoints" / "last.npz")
    assert meta["epoch"] >= 1
    assert not temporaries(out) and not (out / ".cnn.lock").exists()
    ok(cnn("train", "--resume", out, "--epochs", meta["epoch"] + 1, "-q"))


@pytest.mark.parametrize("gap", [0.0, 0.003])
def test_two_ctrl_c_a_few_ms_apart(data: dict[str, Path], tmp_path: Path, gap: float) -> None:
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        proc = slow_training(data, out)
        wait_for_line(proc, "epoch   1 |")
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        err = proc.stderr.read()
        assert code == 130, (attempt, code, err)
        assert "Traceback" not in err and "Exception ignored" not in err, err
        assert not temporaries(out)


def test_a_second_signal_during_clean_up_is_ignored() -> None:
    """The handler itself: the first signal raises, one a moment later does not."""
    from cnncli.cli.common import install_signal_handlers
    from cnncli.errors import Terminated

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        install_signal_handlers()
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt) as first:
            handler(signal.SIGINT, None)
        assert not isinstance(first.value, Terminated)
        assert handler(signal.SIGINT, None) is None  # ignored: the clean-up goes on
        assert signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None) is None
        install_signal_handlers()
        with pytest.raises(Terminated):
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_sigterm_during_augment_leaves_finished_outputs_and_no_temporaries(
    tmp_path: Path,
) -> None:
    src = tmp_path / "in"
    for i in range(40):
        shutil.copytree(IMAGES / "photos", src / f"copy{i}")
    out = tmp_path / "out"
    proc = spawn("augment", src, "--out", out, "-n", 3, "-j", 2, "--ops", "rotate=10,blur")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.rglob("*_2.*"))) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert code == 143, (code, err)
    assert "Traceback" not in err and "terminated (SIGTERM)" in err
    assert not temporaries(out) and not (out / ".cnn.lock").exists()
    listed = {row.split(",")[0] for row in (out / "manifest.csv").read_text().splitlines()[1:]}
    assert listed and all((out / rel).is_file() for rel in listed)
    # ... and nothing else: no output of a source cut off half-way, none unlisted.
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk - listed == {"manifest.csv", "manifest.jsonl", "pipeline.yaml"}


def test_stale_temporaries_are_removed_when_the_folder_is_next_used(
    run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    run = copy_run(run, tmp_path / "run")
    stale = [run / f".metrics.csv.cnn-{dead}-0.tmp", run / f".curves.png.cnn-{dead}-3.tmp",
             run / "checkpoints" / f".last.npz.cnn-{dead}-1.tmp",
             run / ".metrics.csv.ab12cd_3.tmp",  # older versions' names (no pid)
             run / "checkpoints" / ".last.npz.x7q_zz01.tmp"]
    live = run / f".summary.json.cnn-{os.getpid()}-9.tmp"  # a live writer's: kept
    for p in [*stale, live]:
        p.write_bytes(b"half")
    ok(cnn("train", "--resume", run, "--epochs", 2, "-q"))
    assert [p for p in stale if p.exists()] == []
    assert live.exists()

    out = tmp_path / "aug"
    ok(cnn("augment", IMAGES / "digits", "--out", out, "-j", 1))
    leftover = out / "6" / f".x_0.png.cnn-{dead}-5.tmp"
    legacy = out / "6" / f".cnnaug-{dead}-2-x_0.png.tmp"
    for p in (leftover, legacy):
        p.write_bytes(b"half")
    ok(cnn("augment", IMAGES / "digits", "--out", out, "-j", 1, "--overwrite"))
    assert not leftover.exists() and not legacy.exists()


def test_failed_writes_leave_no_temporaries(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnncli.fileio as fileio

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    run = copy_run(run, tmp_path / "run")
    monkeypatch.setattr(fileio.os, "replace", disk_full)
    result = cnn("evaluate", run, "--confusion-csv", run / "cm.csv")
    assert result.exit_code == 2 and "No space left on device" in result.stderr
    result = cnn("augment", IMAGES / "digits", "--out", tmp_path / "aug", "-j", 1)
    assert result.exit_code == 2 and "manifest" in result.stderr, result.stderr
    assert not temporaries(tmp_path)


def test_ctrl_c_inside_a_source_leaves_only_listed_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker, interrupted after the 5th output file (the 2nd source half-written): the
    outputs on disk are exactly the manifest's rows, whole sources only."""
    from cnncli.augment import runner
    from cnncli.augment.pipeline import parse_ops

    writes = []
    real = runner.atomic_write_bytes

    def write(path, data, what, **kw):
        if what == "output" and len(writes) == 5:
            raise KeyboardInterrupt
        writes.append(path)
        return real(path, data, what, **kw)

    monkeypatch.setattr(runner, "atomic_write_bytes", write)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        runner.run(IMAGES / "photos", out, parse_ops("rotate=10"),
                   runner.RunSettings(n=3, workers=1))
    listed = {r["output"] for r in runner.read_manifest(out)}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert len(listed) == 3  # the first source's three; the second's two are removed
    assert on_disk - listed == {"manifest.csv", "manifest.jsonl", "pipeline.yaml"}
