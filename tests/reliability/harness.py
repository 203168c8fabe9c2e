"""Helpers for the reliability tests: the CLI in-process and as a real process.

Imported as ``harness`` (a unique module name: several test folders have a conftest.py);
the session fixtures live in conftest.py.

In-process runs (typer's CliRunner) are fast and see monkeypatches; real processes are
needed for signals, hangs (a timeout) and concurrent runs. Every failure must be exit 2
(or the documented code) with one ``error:`` line and never a traceback.
"""

from __future__ import annotations

import inspect
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands on the app)
from cnncli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests" / "data" / "images"

if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
    runner = CliRunner(mix_stderr=False)
else:
    runner = CliRunner()

TINY = {
    "name": "tiny",
    "input": [12, 12, 1],
    "layers": [
        {"conv": {"filters": 4, "kernel": 3, "activation": "relu"}},
        {"pool": {"type": "max", "size": 2}},
        "flatten",
        {"dense": {"units": 4}},
    ],
}


def cnn(*args: Any, input: str | bytes | None = None) -> Any:
    """``cnn ARGS`` in this process."""
    return runner.invoke(app, [str(a) for a in args], input=input)


def no_traceback(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception), result.stderr)
    assert "Traceback" not in result.stderr + result.stdout


def one_error(result: Any, code: int = 2) -> str:
    """The single ``error:`` line of a run that failed cleanly with ``code``."""
    no_traceback(result)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def ok(result: Any) -> Any:
    no_traceback(result)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def env() -> dict[str, str]:
    """The environment for a real ``cnn`` process: this checkout's code first."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["CNNCLI_NUM_THREADS"] = "1"
    e.pop("COLUMNS", None)
    return e


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    # A hang that fills memory (the bug these tests catch) stops at 6 GiB, not the machine's.
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def cnn_process(*args: Any, timeout: float = 60, stdin: Any = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m cnncli.cli.main ARGS`` as a real process; fails the test on a timeout."""
    cmd = [sys.executable, "-m", "cnncli.cli.main", *map(str, args)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(),
                              stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              cwd=cwd, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cnn {' '.join(map(str, args))} did not return within {timeout} s")


def spawn(*args: Any, cwd: Path | None = None) -> subprocess.Popen:
    """``cnn ARGS`` started in the background (stderr piped, line by line)."""
    cmd = [sys.executable, "-m", "cnncli.cli.main", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=cwd, stdin=subprocess.DEVNULL, bufsize=1)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> list[str]:
    """Read ``proc``'s stderr until a line containing ``needle``; the lines read."""
    import selectors
    import time

    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            break
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    pytest.fail(f"never saw {needle!r}; stderr: {''.join(lines)}")


def bands(n: int, seed: int, classes: int = 4, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, size, size] images whose class is a bright band, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes)
    x = rng.normal(0.3, 0.25, (n, size, size))
    for i, c in enumerate(y):
        x[i, (3 * c) % size : (3 * c) % size + 3] += 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


def copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show that nothing changed)."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}
