"""Fine-tuning (``cnn train --init-from``) and frozen layers (``trainable: false``,
``--freeze``): what is copied, what stays fixed, what the engine skips, and the messages.

The transfer test is LeNet-5 (modern) trained on digits 0-4 of the shipped MNIST subset,
then given a new 5-class head and trained on digits 5-9 (20 images per class) with C1 and
C3 frozen: it reaches 65% test accuracy after one epoch, which training from scratch on the
same images does not (it needs more epochs).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands on the app)
from cnncli.cli.app import app
from cnncli.data.idx import read_idx_images, read_idx_labels
from cnncli.engine.model import build_model
from cnncli.errors import CnnError, DataError, SpecError
from cnncli.spec import load_spec
from cnncli.train.config import TrainConfig
from cnncli.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "sample_data" / "mnist"
LENET = (ROOT / "architectures" / "lenet5_modern.yaml").read_text()

if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
    runner = CliRunner(mix_stderr=False)
else:
    runner = CliRunner()

BN_NET = """
name: bn-net
input: [12, 12, 1]
layers:
  - conv: {name: c1, filters: 4, kernel: 3, bias: false}
  - batchnorm: {name: bn1}
  - relu
  - sequential:
      name: block
      trainable: false
      layers:
        - conv: {name: c2, filters: 4, kernel: 3, padding: 1}
        - batchnorm: {name: bn2}
        - relu
  - pool: {type: max, size: 2}
  - flatten
  - dense: {name: head, units: 3}
"""


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Specs and .npz data sets: digits 0-4 (200 a class) and 5-9 relabelled 0-4 (20 a
    class), each with every test image of its digits; a pretrained 0-4 run."""
    tmp = tmp_path_factory.mktemp("digits")
    xt = read_idx_images(MNIST / "train-images-idx3-ubyte.gz")
    yt = read_idx_labels(MNIST / "train-labels-idx1-ubyte.gz")
    xs = read_idx_images(MNIST / "t10k-images-idx3-ubyte.gz")
    ys = read_idx_labels(MNIST / "t10k-labels-idx1-ubyte.gz")

    def subset(lo: int, per: int, name: str) -> Path:
        tr = np.concatenate([np.flatnonzero(yt == c)[:per] for c in range(lo, lo + 5)])
        te = np.concatenate([np.flatnonzero(ys == c) for c in range(lo, lo + 5)])
        np.savez(tmp / name, x_train=xt[tr], y_train=yt[tr] - lo, x_test=xs[te],
                 y_test=ys[te] - lo)
        return tmp / name

    old_spec = tmp / "lenet_0to4.yaml"
    old_spec.write_text(LENET.replace("units: 10}", "units: 5}"))
    new_spec = tmp / "lenet_5to9.yaml"  # a new head: other name, so left fresh
    new_spec.write_text(LENET.replace("{name: output, units: 10}", "{name: head, units: 5}"))
    paths = {"low": subset(0, 200, "low.npz"), "high": subset(5, 20, "high.npz"),
             "old_spec": old_spec, "new_spec": new_spec, "run": tmp / "run_0to4"}
    train(load_spec(old_spec), data=paths["low"], out=paths["run"],
          config=TrainConfig(epochs=2, batch_size=32, lr=0.02))
    return paths


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- transfer --------------------------------------------------------------------------------


def test_fine_tuning_with_frozen_convs_learns_faster_than_from_scratch(digits, tmp_path):
    before = _tree_digest(digits["run"])
    cfg = {"epochs": 2, "batch_size": 10, "optimizer": "adam", "lr": 3e-3}
    tuned = train(load_spec(digits["new_spec"]), data=digits["high"], out=tmp_path / "ft",
                  config=TrainConfig(**cfg, init_from=str(digits["run"]), freeze="C1,C3"))
    scratch = train(load_spec(digits["new_spec"]), data=digits["high"], out=tmp_path / "sc",
                    config=TrainConfig(**cfg))
    acc_tuned = [h["test_accuracy"] for h in tuned.history]
    acc_scratch = [h["test_accuracy"] for h in scratch.history]
    assert acc_tuned[0] >= 0.65, acc_tuned  # the stated accuracy, after one epoch
    assert acc_scratch[0] < 0.65, acc_scratch  # from scratch: not yet
    assert _tree_digest(digits["run"]) == before  # the old run is only read


def test_frozen_weights_are_bit_identical_after_training(digits, tmp_path):
    from cnncli.checkpoint import load_checkpoint

    old, _ = load_checkpoint(digits["run"] / "checkpoints" / "best.npz")
    train(load_spec(digits["new_spec"]), data=digits["high"], out=tmp_path / "ft",
          config=TrainConfig(epochs=1, batch_size=10, init_from=str(digits["run"]),
                             freeze="C1,C3,C5"))
    new, _ = load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.npz")
    for name in ("C1.weight", "C1.bias", "C3.weight", "C3.bias", "C5.weight", "C5.bias"):
        assert np.array_equal(new[f"model/{name}"], old[f"model/{name}"]), name
        assert f"optim/momentum_buffer/{name}" not in new  # no optimizer state either
    assert not np.array_equal(new["model/F6.weight"], old["model/F6.weight"])  # trained
    assert "model/head.weight" in new


def test_cli_init_from_prints_the_table_and_resume_keeps_the_freeze(digits, tmp_path):
    out = tmp_path / "ft"
    r = runner.invoke(app, ["train", "--arch", str(digits["new_spec"]), "--data",
                            str(digits["high"]), "--init-from", str(digits["run"]),
                            "--freeze", "C1,C3", "--epochs", "1", "--batch-size", "10",
                            "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "8 arrays copied, 2 left fresh, 0 skipped" in err
    assert "head" in err and "fresh" in err and "copied" in err
    r = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert r.exit_code == 0, r.stderr
    from cnncli.checkpoint import load_checkpoint

    a, meta = load_checkpoint(out / "checkpoints" / "last.npz")
    old, _ = load_checkpoint(digits["run"] / "checkpoints" / "best.npz")
    assert meta["config"]["freeze"] == "C1,C3" and meta["epoch"] == 2
    assert np.array_equal(a["model/C3.weight"], old["model/C3.weight"])


def test_a_shape_mismatch_is_skipped_and_reported(digits, tmp_path):
    spec = tmp_path / "ten.yaml"  # same head name, 10 classes instead of 5
    spec.write_text(LENET)
    events = []
    train(load_spec(spec), data=digits["low"], out=tmp_path / "ft",
          config=TrainConfig(epochs=1, init_from=str(digits["run"])),
          on_event=lambda kind, d: events.append((kind, d)))
    report = next(d for kind, d in events if kind == "init_from")
    assert (report["copied"], report["fresh"], report["skipped"]) == (8, 0, 2)
    row = next(r for r in report["rows"] if r[0] == "output")
    assert row[1] == "skipped" and "weight 5x84 -> 10x84" in row[2]


# -- errors ----------------------------------------------------------------------------------


def _bad(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), r.stderr
    return lines[-1]


def test_no_match_at_all_is_a_clear_error(digits, tmp_path):
    spec = tmp_path / "other.yaml"
    spec.write_text(LENET.replace("name: C", "name: K").replace("name: F6", "name: G6")
                    .replace("name: output", "name: out"))
    msg = _bad("train", "--arch", str(spec), "--data", str(digits["low"]), "--init-from",
               str(digits["run"]), "--out", str(tmp_path / "x"), "--epochs", "1")
    assert "no parameter of the new network matches" in msg
    assert not (tmp_path / "x").exists()


def test_unreadable_or_missing_checkpoint_is_a_clear_error(digits, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    args = ["train", "--arch", str(digits["new_spec"]), "--data", str(digits["high"]),
            "--out", str(tmp_path / "x"), "--epochs", "1", "--init-from"]
    assert "not a checkpoint" in _bad(*args, str(junk))
    assert "no such run folder or checkpoint" in _bad(*args, str(tmp_path / "nope"))


def test_output_inside_the_init_run_is_refused(digits):
    msg = _bad("train", "--arch", str(digits["new_spec"]), "--data", str(digits["high"]),
               "--init-from", str(digits["run"]), "--out", str(digits["run"] / "ft"))
    assert "--init-from run" in msg
    msg = _bad("train", "--arch", str(digits["new_spec"]), "--data", str(digits["high"]),
               "--init-from", str(digits["run"]), "--out", str(digits["run"]))
    assert "--init-from" in msg
    # Given as one of its checkpoints, the run it belongs to is just as read-only.
    msg = _bad("train", "--arch", str(digits["new_spec"]), "--data", str(digits["high"]),
               "--init-from", str(digits["run"] / "checkpoints" / "last.npz"),
               "--out", str(digits["run"] / "ft"))
    assert "lies inside the --init-from run" in msg


def test_unknown_freeze_name_lists_close_names(digits, tmp_path):
    msg = _bad("train", "--arch", str(digits["new_spec"]), "--data", str(digits["high"]),
               "--freeze", "C1,C2", "--out", str(tmp_path / "x"))
    assert "no layer or block named 'C2'" in msg and "'C3'" in msg and "'C1'" not in msg.split(
        "did you mean")[0].split("'C2'")[1]
    assert "did you mean" in msg


def test_everything_frozen_is_refused(digits, tmp_path):
    msg = _bad("train", "--arch", str(digits["new_spec"]), "--data", str(digits["high"]),
               "--freeze", "C1,C3,C5,F6,head", "--out", str(tmp_path / "x"))
    assert "every parameter is frozen" in msg


def test_trainable_must_be_a_boolean():
    with pytest.raises(SpecError, match="'trainable' must be true or false"):
        load_spec(BN_NET.replace("trainable: false", "trainable: maybe"))


# -- the engine ------------------------------------------------------------------------------


def _step(model, x, seed=0):
    out = model.forward(x, training=True, logits=True)
    dy = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
    model.backward(dy, input_grad=False)


def test_frozen_block_gets_no_gradients_and_its_batchnorm_uses_running_stats():
    model = build_model(load_spec(BN_NET))
    assert model.frozen == {"block", "block.c2", "block.bn2", "block.relu1"}
    assert set(model.trainable_params) == {"c1.weight", "bn1.weight", "bn1.bias",
                                           "head.weight", "head.bias"}
    rm = model.get("block.bn2.running_mean").copy()
    rm1 = model.get("bn1.running_mean").copy()
    x = np.random.default_rng(1).standard_normal((6, 1, 12, 12)).astype(np.float32)
    _step(model, x)
    assert set(model.grads) == set(model.trainable_params)
    assert np.array_equal(model.get("block.bn2.running_mean"), rm)  # not updated
    assert not np.array_equal(model.get("bn1.running_mean"), rm1)  # a trainable one is
    # in training a frozen batchnorm normalises as at evaluation: with bn1 frozen too,
    # the block's output is the same in both modes
    model.freeze(["bn1"])
    model.taps = {"block"}
    model.forward(x, training=True)
    train_out = model.tapped["block"]
    model.forward(x, training=False)  # (batchnorm folded into the conv: rounding differs)
    np.testing.assert_allclose(train_out, model.tapped["block"], rtol=1e-5, atol=1e-5)


def test_gradients_through_a_frozen_block_match_an_unfrozen_run():
    """Freezing only skips parameter gradients: what reaches the layers before a frozen
    block equals the gradient when the block's convs train (its batchnorm frozen in both,
    so that both forward passes are the same)."""
    frozen = build_model(load_spec(BN_NET))
    live = build_model(load_spec(BN_NET.replace("trainable: false", "trainable: true")))
    live.freeze(["block.bn2"])
    x = np.random.default_rng(2).standard_normal((6, 1, 12, 12)).astype(np.float32)
    _step(frozen, x)
    _step(live, x)
    assert set(live.grads) - set(frozen.grads) == {"block.c2.weight", "block.c2.bias"}
    for name, g in frozen.grads.items():
        np.testing.assert_allclose(g, live.grads[name], rtol=1e-6, atol=1e-7)


def test_frozen_convs_never_run_their_weight_gradient(monkeypatch):
    """Every conv dW path records the layer (by its output channels) it runs for: none
    runs for a frozen conv, and the leading frozen steps are not even run backward."""
    import cnncli.ops.conv as conv

    calls: list[int] = []

    def recording(fn):
        def wrapper(x, dz, *a, **k):
            calls.append(dz.shape[1])
            return fn(x, dz, *a, **k)
        return wrapper

    for path, fn in list(conv._WEIGHT_GRAD.items()):
        monkeypatch.setitem(conv._WEIGHT_GRAD, path, recording(fn))
    monkeypatch.setattr(conv.winograd, "weight_grad", recording(conv.winograd.weight_grad))
    real = conv.im2col.backward

    def im2col_backward(x, dy, *a, need_dw, **k):
        if need_dw:
            calls.append(dy.shape[1])
        return real(x, dy, *a, need_dw=need_dw, **k)

    monkeypatch.setattr(conv.im2col, "backward", im2col_backward)
    x = np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32)
    model = build_model(load_spec(LENET))
    _step(model, x)
    assert sorted(set(calls)) == [6, 16, 120]  # unfrozen: C1, C3 and C5 (the recorder works)
    calls.clear()
    model.freeze(["C1", "C3", "C5"])
    assert model._idle_head() == (6, "F6")  # the backward pass starts and ends in the dense
    _step(model, x)
    assert calls == []
    assert sorted(model.grads) == ["F6.bias", "F6.weight", "output.bias", "output.weight"]
    model.freeze(["C3", "C5"])  # frozen convs after a trainable one: their dx runs, not dW
    _step(model, x)
    assert set(calls) == {6}
    assert "C1.weight" in model.grads and "C3.weight" not in model.grads


@pytest.mark.parametrize("shape", [((2, 8, 6, 6), (8, 8, 3, 3), 1, 1, 1),   # winograd
                                   ((2, 3, 9, 9), (4, 3, 3, 3), 2, 1, 1),   # im2col
                                   ((2, 6, 5, 5), (6, 1, 3, 3), 1, 1, 6),   # depthwise
                                   ((2, 8, 5, 5), (4, 8, 1, 1), 1, 0, 1)])  # pointwise
def test_input_gradient_alone_equals_the_full_backward(shape):
    from cnncli.ops import conv

    xs, ws, stride, pad, groups = shape
    rng = np.random.default_rng(4)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    g = conv.geometry(xs[2:], ws, stride, pad, 1, groups)
    for algo in conv.candidates(g, xs[1], ws[0], np.float32, conv.EngineOptions()):
        y, cache = conv.conv2d_forward(x, w, b, stride, pad, 1, groups, act="relu", algo=algo)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw, db = conv.conv2d_backward(dy, cache, act=("relu", y))
        dx2, dw2, db2 = conv.conv2d_backward(dy, cache, act=("relu", y), need_dw=False)
        assert dw2 is None and db2 is None and dw is not None
        np.testing.assert_allclose(dx2, dx, rtol=1e-5, atol=1e-5, err_msg=str(algo))
        assert conv.conv2d_backward(dy, cache, need_dx=False, need_dw=False) == (None,) * 3


def test_freeze_prefixes_stop_at_dots():
    from cnncli.freeze import frozen_paths
    from cnncli.spec import resolve

    spec = load_spec("""
name: n
input: [8, 8, 1]
layers:
  - sequential: {name: layer1, layers: [{conv: {name: a, filters: 2, kernel: 3}}]}
  - sequential: {name: layer10, layers: [{conv: {name: a, filters: 2, kernel: 3}}]}
  - flatten
  - dense: {units: 2}
""")
    nodes = resolve(spec).nodes
    assert frozen_paths(nodes, ["layer1"]) == {"layer1", "layer1.a"}
    with pytest.raises(CnnError, match="did you mean 'layer1'"):
        build_model(spec).freeze(["layer"])


# -- cnn shapes ------------------------------------------------------------------------------


def test_shapes_counts_trainable_and_frozen(tmp_path):
    from cnncli.shapes import shapes

    rep = shapes(load_spec(LENET), freeze=("C1", "C3", "C5"))
    t = rep["totals"]
    assert t["frozen_params"] == 156 + 2416 + 48120
    assert t["trainable_params"] == 10164 + 850
    assert t["non_trainable_params"] == t["frozen_params"]
    assert t["params"] == 61706
    rows = {r["name"]: r for r in rep["layers"]}
    assert rows["C3"]["frozen"] and rows["C3"]["frozen_params"] == 2416
    assert rows["F6"]["trainable_params"] == 10164 and rows["F6"]["frozen_params"] == 0
    spec = tmp_path / "bn.yaml"
    spec.write_text(BN_NET)
    r = runner.invoke(app, ["shapes", str(spec)])
    assert r.exit_code == 0, r.stderr
    assert "Trainable" in r.stdout and "Frozen" in r.stdout
    # c2 (4*4*9 + 4 = 148) and bn2 (8) frozen; the running statistics (16) are non-trainable
    assert "non-trainable 172, of which frozen 156" in " ".join(r.stdout.split())


def test_unknown_name_in_a_resumed_or_config_freeze_is_checked(tmp_path, digits):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("freeze: [C1, nope]\nepochs: 1\n")
    msg = _bad("train", "--arch", str(digits["new_spec"]), "--data", str(digits["high"]),
               "--config", str(cfg), "--out", str(tmp_path / "x"))
    assert "no layer or block named 'nope'" in msg
    with pytest.raises(DataError):
        from cnncli.train.finetune import open_init

        open_init(tmp_path / "missing")
