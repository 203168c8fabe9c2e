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
