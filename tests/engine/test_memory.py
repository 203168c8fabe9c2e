"""The training-memory estimate (cnncli/memory.py) against what the engine really holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnncli.engine.model import Model, build_model
from cnncli.engine.plan import Step
from cnncli.memory import kept_activations
from cnncli.ops import _threads
from cnncli.optim import make_optimizer

ARCH = Path(__file__).resolve().parents[2] / "architectures"
#: Every shipped architecture at a small input its layers accept.
SIZES = {
    "lenet5": None, "lenet5_modern": None, "cifar_cnn": None, "resnet18": (32, 32, 3),
    "resnet50": (32, 32, 3), "vgg16": (32, 32, 3), "mobilenet_v2": (32, 32, 3),
    "alexnet": (67, 67, 3), "googlenet": (32, 32, 3),
}


def _base(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _arrays(o, out: list, seen: set) -> None:
    """Every ndarray reachable from a cache (tuples, dicts, objects), not through the model."""
    if id(o) in seen or o is None or isinstance(o, (Model, Step, str, int, float, type)):
        return
    seen.add(id(o))
    if isinstance(o, np.ndarray):
        out.append(o)
    elif isinstance(o, (list, tuple)):
        for v in o:
            _arrays(v, out, seen)
    elif isinstance(o, dict):
        for v in o.values():
            _arrays(v, out, seen)
    elif hasattr(o, "__dict__"):
        for v in vars(o).values():
            _arrays(v, out, seen)


def measured_kept(model: Model, batch: int) -> int:
    """Bytes of the distinct buffers the caches of a training forward reach (parameters
    and buffers excluded): what the backward pass keeps alive."""
    c, h, w = model.input_shape
    x = np.random.default_rng(0).normal(size=(batch, c, h, w)).astype(np.float32)
    model.forward(x, training=True, logits=True)
    skip = {id(_base(a)) for a in model.state_dict().values()}
    found: list = []
    _arrays(model._cache, found, set())
    bufs = {id(b): b for b in map(_base, found) if id(b) not in skip}
    return sum(b.nbytes for b in bufs.values())


@pytest.fixture
def one_thread():
    old = _threads.workers()
    _threads.set_workers(1)
    yield
    _threads.set_workers(old)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_kept_activations_equal_the_engine(name, one_thread):
    batch = 3
    model = build_model(ARCH / f"{name}.yaml", input_shape=SIZES[name], seed=0)
    per_image, fixed, _ = kept_activations(model.network)
    estimate = sum(per_image.values()) * batch + sum(fixed.values())
    assert estimate == measured_kept(model, batch)


@pytest.mark.parametrize("name,hp", [
    ("sgd", {}), ("sgd", {"momentum": 0.9}), ("adam", {}), ("adam", {"amsgrad": True}),
    ("adamw", {}), ("rmsprop", {}), ("rmsprop", {"centered": True, "momentum": 0.5}),
])
def test_optimizer_state_count_matches_its_buffers(name, hp):
    opt = make_optimizer(name, lr=0.1, **hp)
    p = {"w": np.ones(3, np.float32)}
    for _ in range(2):
        opt.step(p, {"w": np.full(3, 0.5, np.float32)})
    assert sum("w" in per for per in opt._buf.values()) == opt.state_buffers()
    assert len(opt._scratch["w"]) == opt.SCRATCH


def test_cli_shapes_memory_json():
    import json

    from typer.testing import CliRunner

    from cnncli.cli.main import app

    res = CliRunner().invoke(app, ["shapes", str(ARCH / "lenet5.yaml"), "-b", "4",
                                   "--optimizer", "adam", "-f", "json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    m = rep["totals"]["memory"]
    rows = rep["layers"]
    assert m["kept_bytes"] == sum(r["kept_bytes"] for r in rows) > 0
    assert m["grad_bytes"] == 4 * rep["totals"]["trainable_params"]
    assert m["optimizer_bytes"] == (2 + 1) * m["grad_bytes"]  # m, v + one written scratch
    assert m["total_bytes"] == sum(m[k] for k in ("param_bytes", "grad_bytes",
                                   "optimizer_bytes", "kept_bytes", "transient_bytes"))
    bad = CliRunner().invoke(app, ["shapes", str(ARCH / "lenet5.yaml"), "--optimizer", "x"])
    assert bad.exit_code == 2 and "unknown optimizer" in bad.output
