"""The training-memory estimate (cnncli/memory.py) against what the engine really holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnncli.engine.model import Model, build_model
from cnncli.engine.plan import Step
from cnncli.memory import kept_activations, workspace_elements
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


@pytest.mark.parametrize("name", sorted(SIZES))
def test_workspaces_equal_the_engine(name, one_thread):
    """After a training step (forward, backward without the input gradient, as cnn train
    runs it) the model's scratch buffers are exactly the estimate, tag by tag."""
    batch = 3
    model = build_model(ARCH / f"{name}.yaml", input_shape=SIZES[name], seed=0)
    c, h, w = model.input_shape
    x = np.random.default_rng(0).normal(size=(batch, c, h, w)).astype(np.float32)
    y = model.forward(x, training=True, logits=True)
    model.backward(np.ones_like(y), input_grad=False)
    held = {}
    for (tag, part, dtype, _owner), buf in model.workspaces.items():
        assert part == 0 and dtype == "<f4"
        held[tag] = buf.size
    assert held == workspace_elements(model.network, batch)


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
                                   "optimizer_bytes", "kept_bytes", "transient_bytes",
                                   "workspace_bytes"))
    assert m["workspace_bytes"] > 0
    bad = CliRunner().invoke(app, ["shapes", str(ARCH / "lenet5.yaml"), "--optimizer", "x"])
    assert bad.exit_code == 2 and "unknown optimizer" in bad.output


@pytest.mark.parametrize("hp", [{}, {"weight_decay": 1e-4}])
def test_sgd_optimizer_bytes_equal_what_a_step_writes(hp):
    """ResNet-18 mixes arrays SGD updates in its fused kernel (no scratch) with small ones
    it updates as ufuncs (scratch): the estimate must count each array by its own path."""
    from cnncli.memory import memory_rows
    from cnncli.shapes import shape_report

    model = build_model(ARCH / "resnet18.yaml", seed=0, input_shape=(32, 32, 3))
    rep = shape_report(model.network)
    m = memory_rows(model.network, rep["layers"], 2, "sgd", momentum=0.9, **hp)
    opt = make_optimizer("sgd", lr=0.1, momentum=0.9, **hp)
    params = model.trainable_params
    grads = {k: np.full_like(v, 0.5) for k, v in params.items()}
    for _ in range(2):
        opt.step(params, grads)
    held = sum(a.nbytes for per in opt._buf.values() for a in per.values())
    written = 1 + bool(hp)  # scratch arrays a ufunc step writes (the second is decay's)
    held += sum(s[0].nbytes * written for s in opt._scratch.values())
    assert 0 < len(opt._scratch) < len(params)  # both paths are exercised
    assert m["optimizer_bytes"] == held
