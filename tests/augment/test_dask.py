"""``cnn augment --executor dask``: a LocalCluster of 2 worker processes writes the same bytes
as one local process, with workers writing (shared file system) and with ``--transfer``."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.augment.dask_run import group_sizes
from cnncli.cli.app import app

DATA = Path(__file__).resolve().parents[1] / "data" / "images"
PHOTOS, DIGITS, EDGE = DATA / "photos", DATA / "digits", DATA / "edge"
runner = CliRunner()


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cluster():
    import logging

    import distributed  # the [dask] extra, part of [dev]: a missing one fails, never skips

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as c:
        yield c


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A few photos and digits in class folders, plus two broken files that must fail."""
    root = tmp_path / "in"
    shutil.copytree(PHOTOS / "cat", root / "cat")
    shutil.copytree(DIGITS, root / "digits")
    shutil.copytree(EDGE / "broken", root / "broken")
    return root


def augment(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, ["augment", *map(str, args)], env=env)


def test_dask_cluster_writes_the_bytes_of_one_local_worker(images, tmp_path, cluster):
    before = tree_hashes(images)
    common = ("-n", 2, "--seed", 5, "--preset", "photos")
    local = augment(images, "--out", tmp_path / "local", *common, "-j", 1)
    assert local.exit_code == 1, local.stderr  # the broken files fail, the rest are written
    expected = tree_hashes(tmp_path / "local")
    assert {"manifest.csv", "manifest.jsonl", "pipeline.yaml"} <= set(expected)

    shared = augment(images, "--out", tmp_path / "shared", *common, "--executor", "dask",
                     "--address", cluster.scheduler_address)
    assert shared.exit_code == 1, shared.stderr
    assert tree_hashes(tmp_path / "shared") == expected
    assert "(2 workers" in shared.stderr
    for name in ("broken/not_an_image.jpg", "broken/truncated_china.jpg"):
        assert name in shared.stderr  # failed sources listed as locally

    # --transfer: workers send the encoded bytes back (here from DASK_SCHEDULER_ADDRESS)
    moved = augment(images, "--out", tmp_path / "moved", *common, "--executor", "dask",
                    "--transfer", env={"DASK_SCHEDULER_ADDRESS": cluster.scheduler_address})
    assert moved.exit_code == 1, moved.stderr
    assert tree_hashes(tmp_path / "moved") == expected
    assert local.stderr.count("failed") == moved.stderr.count("failed")
    assert tree_hashes(images) == before  # sources untouched


@pytest.mark.parametrize("args, message", [
    (("--transfer",), "--address, --scheduler-file and --transfer need --executor dask"),
    (("--executor", "spark"), "--executor must be one of local, dask"),
    (("--executor", "dask", "--scheduler-file", "nowhere.json"), "no such scheduler file"),
])
def test_bad_executor_options_exit_2_with_one_line(images, tmp_path, args, message):
    result = augment(images, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_groups_are_single_sources_for_small_runs_and_bounded_for_large():
    assert group_sizes(10, 2) == 1
    assert group_sizes(160, 2) == 10
    assert group_sizes(10**6, 4) == 16
