"""The model-level batch split (each worker thread runs the whole network on its part of
the batch) against one pass over the whole batch in the calling thread."""

from __future__ import annotations

import numpy as np
import pytest

import cnncli.engine.model as model_mod
from cnncli.engine import build_model
from cnncli.ops import _threads

SPEC = {"name": "t", "input": [12, 12, 3], "layers": [
    {"sequential": {"name": "f", "layers": [
        {"conv": {"name": "c1", "filters": 8, "kernel": 3, "padding": "same",
                  "activation": "relu"}},
        {"residual": {"name": "r", "body": [
            {"conv": {"name": "c2", "filters": 8, "kernel": 3, "padding": "same",
                      "activation": "tanh"}}]}},
        {"pool": {"name": "p", "type": "max", "size": 2}},
        {"conv": {"name": "c3", "filters": 4, "kernel": 3, "activation": "tanh"}},
        {"pool": {"name": "q", "type": "avg", "size": 2}}]}},
    "flatten", {"dense": {"name": "d", "units": 5, "activation": "softmax"}}]}


def _pass(model, x, dy, training=True):
    y = model.forward(x, training=training, logits=True)
    dx = model.backward(dy)
    return y, dx, {k: v.copy() for k, v in model.grads.items()}


@pytest.fixture
def two_workers():
    _threads.set_workers(2)
    yield
    _threads.set_workers(None)


@pytest.mark.parametrize("n", [16, 19, 40])
def test_split_matches_one_piece(two_workers, monkeypatch, n):
    rng = np.random.default_rng(0)
    model = build_model(SPEC, dtype=np.float64, seed=1)
    x = rng.standard_normal((n, 3, 12, 12))
    dy = rng.standard_normal((n, 5))
    assert len(model._ranges(n)) == 2
    y, dx, grads = _pass(model, x, dy)
    monkeypatch.setattr(model_mod, "_PART_MIN", 10**6)  # one piece (layers split inside)
    assert len(model._ranges(n)) == 1
    y1, dx1, grads1 = _pass(model, x, dy)
    np.testing.assert_allclose(y, y1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, dx1, rtol=0, atol=1e-12)
    assert grads.keys() == grads1.keys() == model.params.keys()
    for k in grads:
        np.testing.assert_allclose(grads[k], grads1[k], rtol=0, atol=1e-11, err_msg=k)


def test_split_is_deterministic_and_skips_first_input_grad(two_workers):
    rng = np.random.default_rng(2)
    model = build_model(SPEC, dtype=np.float32, seed=3)
    x = rng.standard_normal((33, 3, 12, 12)).astype(np.float32)
    dy = rng.standard_normal((33, 5)).astype(np.float32)
    runs = []
    for _ in range(2):
        model.forward(x, training=True, logits=True)
        assert model.backward(dy, input_grad=False) is None
        runs.append({k: v.copy() for k, v in model.grads.items()})
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
        assert runs[0][k].dtype == np.float32


BN_SPEC = {"name": "b", "input": [8, 8, 3], "layers": [
    {"conv": {"name": "c", "filters": 6, "kernel": 3, "padding": 1, "bias": False}},
    {"batchnorm": {"name": "bn"}}, {"relu": {"name": "r"}},
    {"residual": {"name": "res", "body": [
        {"conv": {"name": "c", "filters": 6, "kernel": 3, "padding": 1}},
        {"batchnorm": {"name": "bn", "momentum": 0.3}}, {"relu6": {"name": "r6"}}]}},
    {"global_pool": {"name": "g"}}, {"batchnorm": {"name": "bn1d"}},
    {"dropout": {"name": "dr", "rate": 0.4}}, {"dense": {"name": "d", "units": 3}}]}


@pytest.mark.parametrize("n", [16, 21])
def test_batchnorm_and_dropout_split_match_one_piece(two_workers, monkeypatch, n):
    """Batch-coupled layers split too: batchnorm combines the parts' statistics (and the
    gradient's sums) over the whole batch, dropout takes its rows of one mask drawn for
    the whole batch; running estimates, outputs and gradients are those of one piece."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, 3, 8, 8)) * 2 + 1
    dy = rng.standard_normal((n, 3))
    results = []
    for part_min in (model_mod._PART_MIN, 10**6):
        monkeypatch.setattr(model_mod, "_PART_MIN", part_min)
        model = build_model(BN_SPEC, dtype=np.float64, seed=1)
        assert len(model._ranges(n)) == (2 if part_min < n else 1)
        assert model.plan.fusions() == {"c": ("bn", "r"), "res.c": ("res.bn", "res.r6")}
        y = model.forward(x, training=True, logits=True, rng=np.random.default_rng(9))
        dx = model.backward(dy)
        results.append((y, dx, {k: v.copy() for k, v in model.grads.items()},
                        {k: v.copy() for k, v in model.buffers.items()}))
    (y, dx, grads, bufs), (y1, dx1, grads1, bufs1) = results
    np.testing.assert_allclose(y, y1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, dx1, rtol=0, atol=1e-12)
    assert grads.keys() == grads1.keys() == model.params.keys()
    for k in grads:
        np.testing.assert_allclose(grads[k], grads1[k], rtol=0, atol=1e-11, err_msg=k)
    for k in bufs:
        np.testing.assert_allclose(bufs[k], bufs1[k], rtol=0, atol=1e-12, err_msg=k)


def test_a_failing_part_releases_the_others(two_workers, monkeypatch):
    """An error in one part while the other waits at a batchnorm rendezvous is raised
    (not a hang, not a broken barrier)."""
    from cnncli.layers.norm import BatchNorm

    real = BatchNorm.forward

    def fail_in_part_1(self, node, x, state, ctx, act=None):
        if ctx.part == 1:
            raise ValueError("boom in part 1")
        return real(self, node, x, state, ctx, act=act)

    monkeypatch.setattr(BatchNorm, "forward", fail_in_part_1)
    model = build_model(BN_SPEC, seed=0)
    with pytest.raises(ValueError, match="boom in part 1"):
        model.forward(np.zeros((16, 3, 8, 8), dtype=np.float32), training=True)


def test_small_batches_and_one_worker_run_in_one_piece(two_workers):
    model = build_model(SPEC, seed=0)
    assert len(model._ranges(64)) == 2
    assert len(model._ranges(15)) == 1  # parts would be smaller than _PART_MIN
    _threads.set_workers(1)
    assert len(model._ranges(64)) == 1


def test_nested_over_batch_keeps_the_outer_part_index(two_workers):
    seen = _threads.over_batch(
        lambda lo, hi, p: _threads.over_batch(lambda a, b, q: q, hi - lo, work=1e12)[0],
        10, work=1e12)
    assert seen == [0, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_openblas_runs_on_one_thread_inside_a_pass(monkeypatch, workers):
    """Whatever the worker count, OpenBLAS is held at one thread during a pass (with one
    worker its own threads are not wanted either: CNNCLI_NUM_THREADS=1 means one thread),
    and its setting is restored afterwards."""
    from cnncli.layers.core import Dense

    ctl = _threads._blas_control()
    assert ctl, "NumPy's bundled OpenBLAS was not found"
    get, put = ctl
    seen = []
    real = Dense.forward

    def spy(self, node, x, state, ctx):
        seen.append(get())
        return real(self, node, x, state, ctx)

    monkeypatch.setattr(Dense, "forward", spy)
    _threads.set_workers(workers)
    old = get()
    put(2)
    try:
        model = build_model(SPEC, dtype=np.float32)
        model.forward(np.zeros((4, 3, 12, 12), dtype=np.float32))
        assert seen == [1]
        assert get() == 2
    finally:
        put(old)
        _threads.set_workers(None)


def test_models_run_from_several_user_threads_do_not_share_scratch():
    """Two models run concurrently from user threads get the same results as run one after
    the other (the ops' scratch buffers belong to the thread that started the pass)."""
    import threading

    spec = {"input": [16, 16, 16], "layers": [
        {"conv": {"filters": 16, "kernel": 3, "padding": "same", "activation": "relu"}},
        {"conv": {"filters": 16, "kernel": 3, "padding": "same", "activation": "relu"}},
        "flatten", {"dense": {"units": 3}}]}
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((24, 16, 16, 16)).astype(np.float32) for _ in range(2)]
    models = [build_model(spec, seed=s) for s in (1, 2)]
    want = [m.forward(x) for m, x in zip(models, xs)]
    got: dict[int, list[np.ndarray]] = {0: [], 1: []}

    def run(i: int) -> None:
        for _ in range(20):
            got[i].append(models[i].forward(xs[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for y in got[i]:
            np.testing.assert_array_equal(y, want[i])


def test_large_dense_layers_split_their_outputs(two_workers, monkeypatch):
    """A dense layer with large weights, in a batch run in parts, computes blocks of its
    outputs over the whole batch (weights read once); same results as one piece."""
    from cnncli.layers import core

    monkeypatch.setattr(core, "COLUMN_SPLIT_WEIGHTS", 64)
    spec = {"name": "fc", "input": [4, 4, 2], "layers": [
        "flatten", {"dense": {"name": "a", "units": 13, "activation": "tanh"}},
        {"dense": {"name": "b", "units": 7, "bias": False}},
        {"dense": {"name": "c", "units": 3, "activation": "softmax"}}]}
    rng = np.random.default_rng(5)
    x = rng.standard_normal((19, 2, 4, 4))
    dy = rng.standard_normal((19, 3))
    results = []
    for part_min in (model_mod._PART_MIN, 10**6):
        monkeypatch.setattr(model_mod, "_PART_MIN", part_min)
        model = build_model(spec, dtype=np.float64, seed=2)
        results.append(_pass(model, x, dy))
        if part_min < 19:  # the split run did take the column path
            assert isinstance(model._cache[0][1], core._ColumnCache)
    (y, dx, g), (y1, dx1, g1) = results
    np.testing.assert_allclose(y, y1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, dx1, rtol=0, atol=1e-12)
    assert g.keys() == g1.keys()
    for k in g:
        np.testing.assert_allclose(g[k], g1[k], rtol=0, atol=1e-12, err_msg=k)


def test_evaluation_backward_of_strided_max_pools_split(two_workers):
    """Max pooling at evaluation keeps no winners; a backward pass (Grad-CAM, gradcheck
    in eval mode) finds them again, each part in its own scratch (they once shared one and
    gave wrong gradients about one run in four)."""
    spec = {"name": "mp", "input": [20, 20, 3], "layers": [
        {"conv": {"name": "c", "filters": 8, "kernel": 3, "padding": 1}},
        {"pool": {"name": "p", "type": "max", "size": 3, "stride": 2, "padding": 1}},
        {"pool": {"name": "q", "type": "max", "size": 3, "stride": 2}},
        "flatten", {"dense": {"name": "d", "units": 4}}]}
    rng = np.random.default_rng(8)
    x = rng.standard_normal((40, 3, 20, 20))
    dy = rng.standard_normal((40, 4))
    model = build_model(spec, dtype=np.float64, seed=0)
    want = None
    for _ in range(6):
        y, dx, grads = _pass(model, x, dy, training=False)
        if want is None:
            _threads.set_workers(1)
            want = _pass(model, x, dy, training=False)
            _threads.set_workers(2)
        np.testing.assert_allclose(dx, want[1], rtol=0, atol=1e-12)
        for k in grads:
            np.testing.assert_allclose(grads[k], want[2][k], rtol=0, atol=1e-12)


CROP_SPEC = {"name": "k", "input": [4, 4, 3], "layers": [
    {"conv": {"name": "a", "filters": 8, "kernel": 3, "padding": 1, "stride": 2}},  # 2x2
    {"conv": {"name": "b", "filters": 16, "kernel": 3, "padding": 1, "stride": 2}},  # 1x1
    {"conv": {"name": "c", "filters": 16, "kernel": 3, "padding": 1, "bias": False}},
    {"batchnorm": {"name": "bn"}}, {"relu": {"name": "r"}},
    "flatten", {"dense": {"name": "d", "units": 3}}]}


@pytest.mark.parametrize("parallel_sum", [False, True])
def test_cropped_gradients_are_summed_small_and_put_back_once(two_workers, monkeypatch,
                                                              parallel_sum):
    """Convs on maps so small that some taps read only padding hand back the gradient of
    their live taps; the model sums the parts' small arrays (over the worker threads when
    there is enough work) and puts each back to its full shape, zero at the dead taps:
    the same gradients as a model that never crops."""
    from cnncli.ops.options import EngineOptions

    if parallel_sum:
        monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 0)
    rng = np.random.default_rng(5)
    n = 20
    x = rng.standard_normal((n, 3, 4, 4))
    dy = rng.standard_normal((n, 3))
    model = build_model(CROP_SPEC, dtype=np.float64, seed=2)
    crops = {p: s.kwargs["algo"].crop for p, s in model.plan.by_path.items()
             if "algo" in s.kwargs}
    assert crops["b"] is not None and crops["c"] is not None  # the 1x1 map: centre only
    assert len(model._ranges(n)) == 2
    plain = build_model(CROP_SPEC, dtype=np.float64, seed=2,
                        options=EngineOptions(crop_taps=False))
    assert all(s.kwargs["algo"].crop is None for s in plain.plan.by_path.values()
               if "algo" in s.kwargs)
    _, dx, grads = _pass(model, x, dy)
    _, dx1, grads1 = _pass(plain, x, dy)
    np.testing.assert_allclose(dx, dx1, rtol=0, atol=1e-12)
    assert list(grads) == list(grads1)
    for k in grads:
        assert grads[k].shape == model.params[k].shape, k
        np.testing.assert_allclose(grads[k], grads1[k], rtol=0, atol=1e-11, err_msg=k)
    dead = np.ones((3, 3), bool)
    dead[1, 1] = False
    assert not grads["c.weight"][:, :, dead].any()  # exactly zero where nothing is read
