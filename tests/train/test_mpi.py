"""``mpiexec -n 2 cnn train``: data-parallel LeNet-5 on a subset of the shipped MNIST trains
as one process with the same global batch size does (weights within 1e-5 relative), only
rank 0 writes and prints, a resume needs the same number of processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.cli.app import app
from cnncli.data.idx import read_idx_images, read_idx_labels
from cnncli.train.dist import launched_size, share

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "sample_data" / "mnist"
LENET5 = ROOT / "architectures" / "lenet5.yaml"
RTOL = 1e-5  # float32 sums in another order; relative to each tensor's norm
runner = CliRunner()


def mpiexec() -> str:
    """The mpiexec of the [mpi] extra's mpich wheel (next to this Python), else on PATH;
    missing, the test fails (the extra is part of [dev])."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found: pip install 'cnncli[mpi]'"
    return found


def cnn_mpi(n: int, *args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("CNNCLI_NUM_THREADS", None)
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, "-m", "cnncli.cli.main",
                           *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def cnn(*args: object):
    return runner.invoke(app, [*map(str, args)])


def weights(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "checkpoints" / "last.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith("model/")}


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = np.linalg.norm(b[k]) or 1.0  # an all-zero tensor (a frozen bias): absolute
        err = np.linalg.norm(a[k].astype(np.float64) - b[k]) / scale
        assert err < RTOL, (k, err)


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """330 training images (batches of 64: the last one of 10 splits 5 + 5), 100 test."""
    x = read_idx_images(MNIST / "train-images-idx3-ubyte.gz")[:330]
    y = read_idx_labels(MNIST / "train-labels-idx1-ubyte.gz")[:330]
    xt = read_idx_images(MNIST / "t10k-images-idx3-ubyte.gz")[:100]
    yt = read_idx_labels(MNIST / "t10k-labels-idx1-ubyte.gz")[:100]
    path = tmp_path_factory.mktemp("mnist") / "subset.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def test_two_ranks_train_as_one_process_and_resume_needs_the_same_count(subset, tmp_path):
    common = ("--arch", LENET5, "--data", subset, "--epochs", 1, "--batch-size", 64,
              "--val-split", 0.1, "--seed", 3)
    one, two = tmp_path / "one", tmp_path / "two"
    single = cnn("train", *common, "--out", one)
    assert single.exit_code == 0, single.stderr
    assert "mpi4py" not in sys.modules  # a single-process run never imports it

    mpi = cnn_mpi(2, "train", *common, "--out", two)
    assert mpi.returncode == 0, mpi.stderr
    assert mpi.stdout.count("done: 1 epoch,") == 1  # rank 0 alone prints
    assert mpi.stderr.count("epoch   1") == 1
    assert_close(weights(two), weights(one))
    assert "world_size: 2" in (two / "config.yaml").read_text()

    refused = cnn("train", "--resume", two, "--epochs", 2)
    assert refused.exit_code == 2
    assert "trained on 2 processes" in refused.stderr and "mpiexec -n 2" in refused.stderr
    assert len(weights(two)) and len((two / "metrics.csv").read_text().splitlines()) == 2

    again = cnn_mpi(2, "train", "--resume", two, "--epochs", 2)  # same count: continues
    assert again.returncode == 0, again.stderr
    extended = cnn("train", "--resume", one, "--epochs", 2)
    assert extended.exit_code == 0, extended.stderr
    assert_close(weights(two), weights(one))

    other = cnn_mpi(2, "train", "--resume", one, "--epochs", 3)
    assert other.returncode == 2
    errors = [ln for ln in other.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "resume it without mpiexec" in errors[0], other.stderr
    assert "Traceback" not in other.stderr


def test_two_ranks_keep_frozen_layers_fixed_as_one_process_does(subset, tmp_path):
    """--freeze under mpiexec: only the trainable gradients are reduced and stepped (the
    frozen layers have none; this was a KeyError traceback on every rank)."""
    common = ("--arch", LENET5, "--data", subset, "--epochs", 1, "--batch-size", 64,
              "--seed", 5, "--freeze", "C1")
    one, two = tmp_path / "one", tmp_path / "two"
    single = cnn("train", *common, "--out", one)
    assert single.exit_code == 0, single.stderr
    mpi = cnn_mpi(2, "train", *common, "--out", two)
    assert mpi.returncode == 0, mpi.stderr
    assert "Traceback" not in mpi.stderr
    got, want = weights(two), weights(one)
    assert_close(got, want)
    from cnncli.engine import build_model

    start = build_model(LENET5, seed=5)  # the initial weights: C1 never moved
    np.testing.assert_array_equal(got["model/C1.weight"], start.get("C1.weight"))


def test_shares_cover_a_batch_in_order():
    for n, size in ((64, 2), (10, 3), (1, 2), (0, 2)):
        parts = [share(n, r, size) for r in range(size)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_world_size_comes_from_the_launcher_environment(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(var, raising=False)
    assert launched_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert launched_size() == 4
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    monkeypatch.setenv("PMI_SIZE", "x")
    assert launched_size() == 1
