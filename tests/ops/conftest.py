"""Golden-file plumbing for the ops tests.

Every ``tests/golden/*.npz`` belongs to exactly one family (a regular expression on the
file stem). A test asks for a family with ``@pytest.mark.golden_family("conv2d")`` and a
``golden`` argument; it is then parametrised over every file of that family, so new
golden files are picked up without touching the tests. ``test_golden_coverage.py`` fails
when a golden file belongs to no family.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"

#: family name -> regular expression matched against the whole file stem
FAMILIES: dict[str, str] = {
    "conv2d": r"conv2d_.+",
    "conv_transpose2d": r"conv_transpose2d_.+",
    "max_pool2d": r"max_pool2d_.+",
    "avg_pool2d": r"avg_pool2d_.+",
    "lp_pool2d": r"lp_pool2d_.+",
    "depth_pool": r"depth_[a-z0-9]+_pool(_.+)?",
    "global_pool": r"global_(avg|max)_pool(_.+)?",
    "dense": r"dense(_.+)?",
    "flatten": r"flatten(_.+)?",
    "activation": r"(relu6?|leaky_relu|sigmoid|tanh|elu|identity|linear)(_.+)?",
    "softmax": r"softmax(?!_cross_entropy)(_.+)?",
    "softmax_cross_entropy": r"softmax_cross_entropy(_.+)?",
    "mse": r"mse(_.+)?",
    "batch_norm": r"batch_norm[12]d_.+",
    "lrn": r"lrn_.+",
    "dropout": r"dropout_.+",
}

#: golden files that other parts of the engine test (whole networks, optimizers)
OWNED_ELSEWHERE: dict[str, str] = {
    "lenet5": r"lenet5_mnist",
    "optimizers": r"optim_.+",
    "residual blocks": r"residual_.+",
}


class Golden:
    """One golden case: ``g["x"]`` for arrays, ``g.int("stride")`` / ``g.float("eps")``
    for 0-d scalars (with an optional default for keys that older files lack)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem
        with np.load(path, allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.arrays and default is not None:
            return default
        return int(self.arrays[key])

    def float(self, key: str, default: float | None = None) -> float:
        if key not in self.arrays and default is not None:
            return default
        return float(self.arrays[key])


def family_files(family: str) -> list[Path]:
    pattern = re.compile(FAMILIES[family])
    return sorted(p for p in GOLDEN_DIR.glob("*.npz") if pattern.fullmatch(p.stem))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "golden_family(name): parametrise the test over that family's golden files"
    )


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("golden_family")
    if marker is None or "golden_path" not in metafunc.fixturenames:
        return
    files = family_files(marker.args[0])
    metafunc.parametrize("golden_path", files, ids=[p.stem for p in files])


@pytest.fixture
def golden(golden_path: Path) -> Golden:
    return Golden(golden_path)


@pytest.fixture
def golden_registry() -> tuple[Path, dict[str, str], dict[str, str]]:
    return GOLDEN_DIR, FAMILIES, OWNED_ELSEWHERE


def assert_matches(mine, ref, name: str, atol: float = 1e-8) -> None:
    mine = np.asarray(mine)
    assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != golden {ref.shape}"
    err = float(np.max(np.abs(mine - ref))) if ref.size else 0.0
    assert np.allclose(mine, ref, rtol=0, atol=atol), f"{name}: max abs error {err:.3g}"


@pytest.fixture
def check():
    """``check(mine, ref, name)``: np.allclose(rtol=0, atol=1e-8) with a useful message."""
    return assert_matches


@pytest.fixture
def check32():
    """``check32(mine, ref64, name)``: float32 dtype and agreement with float64 results
    to float32 accuracy (relative to the largest reference value)."""

    def _check(mine, ref, name):
        assert mine.dtype == np.float32, f"{name}: float32 in gave {mine.dtype} out"
        scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
        assert_matches(mine.astype(np.float64), ref, name + " (float32)", atol=2e-4 * scale)

    return _check


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-workers")
def workers(request, monkeypatch):
    """Run the test with 1 and with 2 worker threads, every region split however small."""
    from cnncli.ops import _threads

    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 0)
    _threads.set_workers(request.param)
    yield request.param
    _threads.set_workers(None)
