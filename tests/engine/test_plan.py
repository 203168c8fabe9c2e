"""The plan: every node gets a step once, fusions are steps, EngineOptions switch them,
and whatever the plan chose, the numbers are those of the plain im2col twin."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.cli.app import app
from cnncli.engine import autotune, build_model
from cnncli.ops import _threads
from cnncli.ops.options import EngineOptions, twin_options

#: A small net with every fused step and several kernel paths: depthwise, pointwise
#: (strided), Winograd, im2col (stride 2), crop (3x3 on a 1x1 map), conv+ReLU+pool.
SPEC = {"name": "mix", "input": [16, 16, 3], "layers": [
    {"conv": {"name": "stem", "filters": 16, "kernel": 3, "padding": 1, "bias": False}},
    {"batchnorm": {"name": "bn"}}, {"relu": {"name": "r"}},
    {"residual": {"name": "res", "body": [
        {"conv": {"name": "a", "filters": 16, "kernel": 3, "padding": 1}},
        {"batchnorm": {"name": "bn"}}, {"relu6": {"name": "r6"}},
        {"conv": {"name": "dw", "filters": 16, "kernel": 3, "padding": 1, "groups": 16}},
        {"batchnorm": {"name": "bn2"}}]}},
    {"conv": {"name": "w", "filters": 16, "kernel": 3, "padding": 1, "activation": "relu"}},
    {"pool": {"name": "p", "type": "max", "size": 2}},
    {"residual": {"name": "down", "body": [
        {"conv": {"name": "s2", "filters": 24, "kernel": 3, "stride": 2, "padding": 1}}],
        "shortcut": [{"conv": {"name": "proj", "filters": 24, "kernel": 1, "stride": 2}}]}},
    {"pool": {"name": "gp", "type": "max", "size": 3, "stride": 2, "padding": 1}},
    {"pool": {"name": "gp2", "type": "max", "size": 2}},
    {"conv": {"name": "tiny", "filters": 8, "kernel": 3, "padding": 1}},
    "flatten", {"dense": {"name": "d", "units": 5}}]}


def test_fusions_and_paths():
    model = build_model(SPEC)
    plan = model.plan
    assert plan.fusions() == {"stem": ("bn", "r"), "res.a": ("res.bn", "res.r6"),
                              "res.dw": ("res.bn2",), "w": ("p",)}
    assert plan.describe("r") == ("fused", "stem")
    assert "batchnorm folded at evaluation" in plan.describe("stem")[0]
    paths = {p: plan.describe(p)[0] for p in ("stem", "res.a", "res.dw", "down.s2",
                                               "down.shortcut.proj", "tiny")}
    assert paths["res.dw"].startswith("depthwise")
    assert paths["down.shortcut.proj"] == "pointwise"
    assert paths["down.s2"] == "im2col"
    assert "live taps 1x1" in paths["tiny"]  # a 3x3 conv on a 1x1 map
    assert plan.describe("res")[0] == "add + ReLU, one pass"
    unfolded = build_model(SPEC, options=EngineOptions(fold_bn=False)).plan
    assert unfolded.fusions() == {"bn": ("r",), "res.bn": ("res.r6",), "w": ("p",)}
    assert unfolded.describe("r") == ("fused", "bn")
    off = EngineOptions(fuse_bn_act=False, fuse_relu_maxpool=False, fold_bn=False)
    assert build_model(SPEC, options=off).plan.fusions() == {}
    twin = build_model(SPEC, options=twin_options()).plan
    assert {twin.describe(p)[0] for p in paths} <= {"im2col", "pointwise"}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_plan_matches_the_twin(workers, dtype):
    """Every fast path and fusion of SPEC against the plain twin: float64 to rounding,
    float32 to about 1e-5 relative (Winograd), in training, split over threads or not."""
    _threads.set_workers(workers)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((18, 3, 16, 16)).astype(dtype)
        dy = rng.standard_normal((18, 5)).astype(dtype)
        out = []
        for opts in (EngineOptions(), twin_options()):
            model = build_model(SPEC, dtype=dtype, seed=3, options=opts)
            y = model.forward(x, training=True)
            dx = model.backward(dy)
            out.append((y, dx, {k: g.copy() for k, g in model.grads.items()},
                        {k: b.copy() for k, b in model.buffers.items()}))
    finally:
        _threads.set_workers(None)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    (y, dx, g, b), (y1, dx1, g1, b1) = out
    for got, want, name in [(y, y1, "y"), (dx, dx1, "dx")] + [
            (g[k], g1[k], k) for k in g1] + [(b[k], b1[k], k) for k in b1]:
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale, err_msg=name)


def test_residual_add_relu_fusion_is_bit_identical():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 16, 16))
    dy = rng.standard_normal((4, 5))
    out = []
    for fuse in (True, False):
        model = build_model(SPEC, dtype=np.float64, seed=2,
                            options=EngineOptions(fuse_add_act=fuse))
        assert (model.plan.describe("res")[0] != "") == fuse
        out.append((model.forward(x, training=True), model.backward(dy)))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_autotune_caches_its_choice_and_changes_no_result(tmp_path, monkeypatch):
    cache = tmp_path / "at.json"
    model = build_model(SPEC, seed=1)
    x = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    want = model.forward(x)
    report = model.tune(4, cache_file=cache)
    names = {r["name"] for r in report}
    assert names == {"stem", "res.a", "res.dw", "down.s2", "down.shortcut.proj", "tiny"}
    assert not any(r["cached"] for r in report)
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == len(names)
    for r in report:  # every candidate was timed, the fastest kept per direction
        t = r["timings_ms"]
        step = model.plan.by_path[r["name"]]
        algo = step.kwargs["algo"]
        for d in ("fwd", "dx", "dw"):
            assert getattr(algo, d) == min(t[d], key=t[d].get)
    np.testing.assert_allclose(model.forward(x), want, rtol=0, atol=1e-4)

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached shape was timed again")

    monkeypatch.setattr(autotune, "_tune_one", no_timing)
    again = build_model(SPEC, seed=1).tune(4, cache_file=cache)
    assert all(r["cached"] for r in again)


def test_cnn_time_reports_the_path_of_each_layer(tmp_path, monkeypatch):
    spec = tmp_path / "mix.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(SPEC))
    result = CliRunner().invoke(app, ["time", str(spec), "--batch", "4", "--iterations", "1",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["layers"]}
    assert rows["res.dw"]["path"].startswith("depthwise")
    assert rows["r"]["fused_into"] == "stem" and rows["r"]["path"] == "fused"
    assert rows["stem"]["gflops"] > 0 and rows["d"]["gflops"] > 0
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    tuned = CliRunner().invoke(app, ["time", str(spec), "--batch", "4", "--iterations", "1",
                                     "--autotune"])
    assert tuned.exit_code == 0, tuned.output
    assert (tmp_path / "cache" / "autotune.json").exists()
    assert "depthwise" in tuned.stdout


def test_scratch_buffers_belong_to_the_model(monkeypatch):
    monkeypatch.setattr(_threads, "_workspaces", {})
    model = build_model(SPEC)
    x = np.zeros((16, 3, 16, 16), dtype=np.float32)
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y))
    assert model.workspaces and not _threads._workspaces
    assert {k[0] for k in model.workspaces} >= {"dw.plane", "pool.plane"}


@pytest.mark.parametrize("workers", [1, 2])
def test_batchnorm_folded_into_convs_at_evaluation(workers):
    """Evaluation runs conv + batchnorm (+ ReLU/ReLU6) as one conv with folded weights;
    outputs, input gradients and every parameter gradient (through the fold: conv
    weights and bias, gamma, beta) equal the separate layers' in float64."""
    _threads.set_workers(workers)
    try:
        out = []
        for fold in (True, False):
            model = build_model(SPEC, dtype=np.float64, seed=1,
                                options=EngineOptions(fold_bn=fold))
            if fold:
                assert model.plan.describe("res.bn")[1] == "res.a"
                assert "folded" in model.plan.describe("stem")[0]
            for k, v in model.buffers.items():
                rng = np.random.default_rng(len(k))
                v[...] = (rng.random(v.shape) + 0.5 if k.endswith("var")
                          else 0.3 * rng.standard_normal(v.shape))
            x = np.random.default_rng(0).standard_normal((18, 3, 16, 16))
            y = model.forward(x)
            dx = model.backward(np.random.default_rng(1).standard_normal(y.shape))
            out.append((y, dx, {k: g.copy() for k, g in model.grads.items()}))
    finally:
        _threads.set_workers(None)
    (y, dx, g), (y1, dx1, g1) = out
    assert np.abs(y1).max() > 0.1 and np.abs(dx1).max() > 0
    np.testing.assert_allclose(y, y1, rtol=0, atol=1e-12 * np.abs(y1).max())
    np.testing.assert_allclose(dx, dx1, rtol=0, atol=1e-12 * np.abs(dx1).max())
    assert g.keys() == g1.keys()
    for k in g1:
        np.testing.assert_allclose(g[k], g1[k], rtol=0, atol=1e-11 * max(1, np.abs(g1[k]).max()),
                                   err_msg=k)


def test_evaluation_reuses_prepared_weights_until_they_change():
    """Folded and transformed weights are kept between evaluation passes; set(), a
    training pass and weights_changed() drop them, so results always follow the weights."""
    model = build_model(SPEC, seed=1)
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    first = model.forward(x)
    assert model._eval_cache._items  # prepared once ...
    np.testing.assert_array_equal(model.forward(x), first)  # ... and reused
    w = model.get("res.a.weight")
    model.set("res.a.weight", w * 2)
    fresh = build_model(SPEC, seed=1)
    fresh.set("res.a.weight", fresh.get("res.a.weight") * 2)
    np.testing.assert_allclose(model.forward(x), fresh.forward(x), rtol=1e-6, atol=1e-6)
    model.get("stem.weight")[...] *= -1  # in place, outside set(): say so
    model.weights_changed()
    fresh.get("stem.weight")[...] *= -1
    fresh.weights_changed()
    np.testing.assert_allclose(model.forward(x), fresh.forward(x), rtol=1e-6, atol=1e-6)
    model.forward(x, training=True)
    assert not model._eval_cache._items


def test_taps_keep_the_outputs_and_gradients_of_fused_nodes():
    """A tapped node is never fused with what follows (its output must exist): the conv
    of conv+ReLU+pool, the batchnorm of batchnorm+ReLU; what the taps keep equals the
    untapped layers' values, and the network's results do not change."""
    model = build_model(SPEC, dtype=np.float64, seed=4)
    x = np.random.default_rng(5).standard_normal((16, 3, 16, 16))
    dy = np.random.default_rng(6).standard_normal((16, 5))
    y = model.forward(x, training=True)
    dx = model.backward(dy)
    model.taps = {"w", "res.bn", "stem"}
    fusions = model.plan.fusions()
    assert "w" not in fusions and "stem" not in fusions and "res.a" not in fusions
    model.trace = {}
    y1 = model.forward(x, training=True)
    dx1 = model.backward(dy)
    np.testing.assert_allclose(y1, y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx1, dx, rtol=0, atol=1e-12)
    assert set(model.tapped) == set(model.tapped_grads) == {"w", "res.bn", "stem"}
    for path, arr in model.tapped.items():
        assert arr.shape == model.trace[path]
        assert model.tapped_grads[path].shape == arr.shape
    assert (model.tapped["w"] >= 0).all()  # the conv's ReLU output, before the pool
    model.taps = frozenset()
    assert model.plan.fusions() == build_model(SPEC, dtype=np.float64).plan.fusions()


def test_cnn_train_autotune(tmp_path, monkeypatch):
    from cnncli.engine.autotune import default_cache_file

    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_file() == tmp_path / "cache" / "autotune.json"
    args = ["train", "--arch", "architectures/lenet5.yaml", "--data", "sample_data/mnist",
            "--epochs", "1", "--autotune"]
    result = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "autotune: 3 convolutions planned from timings (3 timed now" in result.stderr
    assert len(json.loads(default_cache_file().read_text())["entries"]) == 3
    again = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run2")])
    assert "(0 timed now, 3 from the cache)" in again.stderr


def test_a_twin_shares_parameters_and_copies_buffers():
    """Model(params_of=m), the throw-away twin of cnn train's compile check: no second
    initialisation, and its training passes leave m's running statistics alone."""
    import numpy as np

    from cnncli.engine.model import Model, build_model

    m = build_model("architectures/resnet18.yaml", input_shape=(32, 32, 3), seed=1)
    twin = Model(m.network, params_of=m)
    assert all(twin.params[k] is v for k, v in m.params.items())
    assert all(twin.buffers[k] is not v and np.array_equal(twin.buffers[k], v)
               for k, v in m.buffers.items())
    before = {k: v.copy() for k, v in m.buffers.items()}
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    twin.forward(x, training=True)
    assert any(not np.array_equal(twin.buffers[k], before[k]) for k in before)
    assert all(np.array_equal(m.buffers[k], before[k]) for k in before)


def test_cnn_time_times_training_steps_without_the_input_gradient(monkeypatch):
    """``cnn time`` times what cnn train runs: logits into the fused loss and no gradient
    for the input batch (timing it overstated the first layer's backward 2x)."""
    from cnncli.engine import timing
    from cnncli.engine.model import Model

    calls = []
    fwd, bwd = Model.forward, Model.backward
    monkeypatch.setattr(Model, "forward", lambda self, x, training=False, **kw: (
        calls.append(("fwd", training, kw.get("logits"))) or fwd(self, x, training, **kw)))
    monkeypatch.setattr(Model, "backward", lambda self, dy, **kw: (
        calls.append(("bwd", kw.get("input_grad", True))) or bwd(self, dy, **kw)))
    model = build_model("architectures/lenet5.yaml", seed=0)
    rep = timing.time_layers(model, batch=4, iterations=2, warmup=1)
    assert set(calls) == {("fwd", True, True), ("bwd", False)}
    assert rep["layers"][0]["backward_ms"] > 0  # its weight gradient is still timed


@pytest.mark.parametrize("rows", [3, 127, 128, 300])
def test_dense_products_in_either_orientation_agree(rows):
    """Few float32 rows multiply as (W @ X^T)^T (faster there), many as X @ W^T: same
    values to float32 rounding, and a C-contiguous result either way."""
    from cnncli.layers import core

    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 300)).astype(np.float32)
    w = rng.standard_normal((70, 300)).astype(np.float32)
    z = core._times_weights_t(x, w)
    assert z.flags.c_contiguous and z.shape == (rows, 70) and z.dtype == np.float32
    np.testing.assert_allclose(z, x.astype(np.float64) @ w.T.astype(np.float64),
                               rtol=1e-4, atol=1e-4)
    x64 = x.astype(np.float64)  # float64 keeps the plain product (the golden files)
    np.testing.assert_array_equal(core._times_weights_t(x64, w.astype(np.float64)),
                                  x64 @ w.astype(np.float64).T)


@pytest.mark.parametrize("workers", [1, 2])
def test_passes_prepare_their_weights_before_the_parts_start(workers, monkeypatch):
    """Every derived weight a pass reads (folded conv + batchnorm and its Winograd
    transform at evaluation, cut kernels and transforms in training) is prepared before
    the parts run, so no part prepares one while the others wait: inside the pass,
    PassCache.get only finds them. Results equal a pass that prepared lazily."""
    from cnncli.engine.model import Model
    from cnncli.ops import conv

    _threads.set_workers(workers)
    try:
        model = build_model("architectures/resnet18.yaml", seed=0, input_shape=(16, 16, 3))
        lazy = build_model("architectures/resnet18.yaml", seed=0, input_shape=(16, 16, 3))
        monkeypatch.setattr(lazy, "_prepare", lambda shared, direction: None)
        x = np.random.default_rng(4).standard_normal((16, 3, 16, 16)).astype(np.float32)
        prepared = {"eval": 0, "pass": 0}
        get, prep = conv.PassCache.get, Model._prepare

        def counting_get(self, key, make):
            def counted():
                prepared[phase[0]] += 1
                return make()
            return get(self, key, counted)

        phase = ["pass"]

        def counting_prepare(self, shared, direction):
            phase[0] = "eval"
            try:
                return prep(self, shared, direction)
            finally:
                phase[0] = "pass"

        monkeypatch.setattr(conv.PassCache, "get", counting_get)
        monkeypatch.setattr(Model, "_prepare", counting_prepare)
        for training in (False, True):
            prepared.update({"eval": 0, "pass": 0})
            y = model.forward(x, training=training, logits=True)
            assert prepared["eval"] > 0 and prepared["pass"] == 0, (training, prepared)
            np.testing.assert_allclose(y, lazy.forward(x, training=training, logits=True),
                                       rtol=1e-6, atol=1e-6)
    finally:
        _threads.set_workers(None)
