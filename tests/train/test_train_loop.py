"""The training loop (``cnncli.train.loop.train``) on tiny networks and data sets.

What is checked is behaviour a user relies on: the run folder and its files, bit-identical
reruns with the same seed, exact resume (dropout, batchnorm and a validation split included),
optimizers and learning-rate schedules as configured, early stopping, non-finite values never
reaching a checkpoint, and settings precedence. Every run is a few milliseconds of arithmetic
on 12x12 images; the real LeNet-5 run is in test_cli_train.py.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

import cnncli.train.loop as loop
from cnncli.checkpoint import load_checkpoint
from cnncli.errors import CnnError, DataError
from cnncli.optim import lr_at, make_schedule
from cnncli.train.config import TrainConfig, resolve_config
from cnncli.train.loop import NonFiniteLoss, train

# A small conv + pool + dense network for 12x12 grey images with 4 classes.
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
# The same with batchnorm and dropout: state (running statistics) and randomness (masks)
# that resume must carry over exactly.
TINY_BN_DROPOUT = {
    "name": "tiny-bn-dropout",
    "input": [12, 12, 1],
    "layers": [
        {"conv": {"filters": 4, "kernel": 3}},
        "batchnorm",
        "relu",
        {"pool": {"type": "max", "size": 2}},
        "flatten",
        {"dropout": {"rate": 0.3}},
        {"dense": {"units": 4}},
    ],
}
TIMING = {"epoch_train_seconds", "images_per_second"}  # the only run-to-run differences


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic writes still go through a temporary file and a rename; only the flush to disk
    (tens of ms per checkpoint on a busy disk) is skipped, to keep these tests fast."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def make_images(n: int, seed: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 12, 12] images: class c is a bright band at rows 3c..3c+2, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes)
    x = rng.normal(0.3, 0.25, (n, 12, 12))
    for i, c in enumerate(y):
        x[i, 3 * c : 3 * c + 3] += 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


def write_npz(path: Path, n_train: int = 192, n_test: int = 64) -> Path:
    xtr, ytr = make_images(n_train, 1)
    xte, yte = make_images(n_test, 2)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data") / "bands.npz")


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


def cfg(**settings: Any) -> TrainConfig:
    return resolve_config(None, None, {"epochs": 3, "batch_size": 32, **settings})


def weights(run_or_ckpt: Path) -> dict[str, np.ndarray]:
    """Every array of a checkpoint (model, optimizer state), read without pickle."""
    path = run_or_ckpt / "checkpoints" / "last.npz" if run_or_ckpt.is_dir() else run_or_ckpt
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__meta__"}


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# -- the run folder -------------------------------------------------------------------------


def test_run_folder_contents(tmp_path: Path, npz: Path, spec_file: Path) -> None:
    run = tmp_path / "run"
    config = cfg(epochs=3)
    result = train(spec_file, data=npz, out=run, config=config)

    assert {p.name for p in run.iterdir()} == {
        "config.yaml", "spec.yaml", "metrics.csv", "metrics.jsonl", "curves.png",
        "summary.json", "checkpoints",
    }  # fmt: skip
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.npz", "best.npz"}

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"] == config.to_dict()
    assert saved["training"]["momentum"] == 0.9  # the resolved value, not "default"
    assert saved["spec"] == str(spec_file) and saved["data"] == str(npz)
    assert (run / "spec.yaml").read_text() == spec_file.read_text()

    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    with open(run / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    for row, line in zip(rows, table):
        assert set(line) == set(row)
        for k, v in row.items():
            assert float(line[k]) == v, k  # the CSV holds the same numbers, exactly
        assert row["train_images"] == 192
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"])
    assert rows == result.history

    png = (run / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(run / "curves.png") as im:
        im.verify()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["checkpoint"] == str(run / "checkpoints/last.npz")
    assert summary["test_accuracy"] == result.test["accuracy"] == rows[-1]["test_accuracy"]
    assert summary["test_loss"] == rows[-1]["test_loss"]  # the final model is last.npz's
    assert summary["train_images_per_second"] > 0 and summary["stopped_early"] is False

    for name in ("last", "best"):
        with np.load(run / "checkpoints" / f"{name}.npz", allow_pickle=False) as z:
            assert "model/conv1.weight" in z.files and "optim/step" in z.files
        arrays, meta = load_checkpoint(run / "checkpoints" / f"{name}.npz")
        assert meta["kind"] == "cnncli-train" and meta["classes"] == ["0", "1", "2", "3"]
        assert meta["config"] == config.to_dict() and meta["input"] == [12, 12, 1]
        assert all(np.isfinite(a).all() for a in arrays.values())
    _, last = load_checkpoint(run / "checkpoints" / "last.npz")
    assert last["epoch"] == 3 and last["history"] == rows


def test_best_is_lowest_training_loss_without_validation(
    tmp_path: Path, npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make epoch 2 the best by training loss: later epochs report a worse loss.
    real = loop.train_step
    calls = {"n": 0}
    per_epoch = 192 // 32

    def step(*args: Any, **kw: Any) -> Any:
        loss, scores = real(*args, **kw)
        calls["n"] += 1
        epoch = (calls["n"] - 1) // per_epoch + 1
        return loss + (0.0 if epoch <= 2 else 10.0), scores

    monkeypatch.setattr(loop, "train_step", step)
    run = tmp_path / "run"
    result = train(TINY, data=npz, out=run, config=cfg(epochs=4))
    assert result.best_checkpoint == run / "checkpoints" / "best.npz"
    _, best = load_checkpoint(run / "checkpoints" / "best.npz")
    _, last = load_checkpoint(run / "checkpoints" / "last.npz")
    assert best["epoch"] == 2 and best["monitor"] == "train_loss" and last["epoch"] == 4


def test_best_is_highest_validation_accuracy(tmp_path: Path, npz: Path) -> None:
    run = tmp_path / "run"
    train(TINY, data=npz, out=run, config=cfg(epochs=4, val_split=0.25))
    rows = metrics(run)
    assert all(r["train_images"] == 144 for r in rows)  # 48 of 192 held out
    _, best = load_checkpoint(run / "checkpoints" / "best.npz")
    accs = [r["val_accuracy"] for r in rows]
    assert best["monitor"] == "val_accuracy"
    assert best["epoch"] == accs.index(max(accs)) + 1  # the first epoch with the best value
    assert best["best_value"] == max(accs)


# -- reproducibility ------------------------------------------------------------------------


def test_same_seed_is_bit_identical_and_seed_matters(tmp_path: Path, npz: Path) -> None:
    spec = TINY_BN_DROPOUT
    a = train(spec, data=npz, out=tmp_path / "a", config=cfg(seed=7, val_split=0.25))
    b = train(spec, data=npz, out=tmp_path / "b", config=cfg(seed=7, val_split=0.25))
    c = train(spec, data=npz, out=tmp_path / "c", config=cfg(seed=8, val_split=0.25))
    assert without_timing(a.history) == without_timing(b.history)
    assert a.test == b.test
    for name in ("last.npz", "best.npz"):
        assert_same_arrays(
            weights(tmp_path / "a" / "checkpoints" / name),
            weights(tmp_path / "b" / "checkpoints" / name),
        )
    wa, wc = weights(tmp_path / "a"), weights(tmp_path / "c")
    assert not np.array_equal(wa["model/conv1.weight"], wc["model/conv1.weight"])
    assert without_timing(a.history) != without_timing(c.history)


# -- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "settings"),
    [
        (TINY, {}),
        (TINY_BN_DROPOUT, {"val_split": 0.25}),
        (TINY_BN_DROPOUT, {"optimizer": "adam", "lr": 0.01, "schedule": "cosine", "warmup": 1}),
        (TINY, {"augment": "digits"}),
    ],
    ids=["sgd", "bn-dropout-val", "adam-cosine-warmup", "augment"],
)
def test_interrupted_and_resumed_equals_uninterrupted(
    tmp_path: Path, npz: Path, spec: dict, settings: dict
) -> None:
    config = cfg(epochs=4, seed=3, **settings)
    whole = train(spec, data=npz, out=tmp_path / "whole", config=config)

    part = train(spec, data=npz, out=tmp_path / "part", config=config, max_epochs_this_call=2)
    assert part.epochs == 2 and load_checkpoint(part.checkpoint)[1]["epoch"] == 2
    # The settings come from the checkpoint: what is passed here is ignored.
    resumed = train(None, data=npz, out=tmp_path / "ignored", config=TrainConfig(lr=9.0),
                    resume=tmp_path / "part")  # fmt: skip
    assert not (tmp_path / "ignored").exists()
    assert resumed.epochs == 4 and resumed.run_dir == tmp_path / "part"

    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "part"))
    assert_same_arrays(
        weights(tmp_path / "whole" / "checkpoints" / "best.npz"),
        weights(tmp_path / "part" / "checkpoints" / "best.npz"),
    )
    assert without_timing(metrics(tmp_path / "whole")) == without_timing(metrics(tmp_path / "part"))
    assert whole.test == resumed.test


def test_resume_extends_a_finished_run_and_refuses_to_shorten(tmp_path: Path, npz: Path) -> None:
    whole = train(TINY, data=npz, out=tmp_path / "whole", config=cfg(epochs=4))
    train(TINY, data=npz, out=tmp_path / "run", config=cfg(epochs=2))
    more = train(None, data=npz, out=tmp_path / "run", config=TrainConfig(),
                 resume=tmp_path / "run", epochs=4)  # fmt: skip
    assert more.epochs == 4
    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "run"))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]["epochs"] == 2
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.npz")
    assert meta["config"]["epochs"] == 4 == meta["epoch"]
    assert whole.test == more.test

    with pytest.raises(CnnError, match="already done 4 epochs"):
        train(None, data=npz, out=tmp_path / "run", config=TrainConfig(),
              resume=tmp_path / "run", epochs=3)  # fmt: skip


def test_early_stopping_state_survives_resume(tmp_path: Path, npz: Path) -> None:
    config = cfg(epochs=12, val_split=0.25, patience=2, lr=0.2)
    whole = train(TINY, data=npz, out=tmp_path / "whole", config=config)
    assert whole.stopped_early and whole.epochs < 12
    stop = whole.epochs
    part = train(TINY, data=npz, out=tmp_path / "part", config=config,
                 max_epochs_this_call=stop - 1)  # fmt: skip
    assert not part.stopped_early
    resumed = train(None, data=npz, out=tmp_path / "part", config=config, resume=tmp_path / "part")
    assert resumed.stopped_early and resumed.epochs == stop
    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "part"))


def test_resume_rejects_bad_checkpoints(tmp_path: Path, npz: Path) -> None:
    with pytest.raises(DataError, match="no checkpoints/last.npz"):
        train(None, data=npz, out=tmp_path, config=TrainConfig(), resume=tmp_path)
    run = tmp_path / "run"
    train(TINY, data=npz, out=run, config=cfg(epochs=1))
    last = run / "checkpoints" / "last.npz"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="last.npz"):
        train(None, data=npz, out=run, config=TrainConfig(), resume=run)


# -- optimizers and schedules ----------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "sgd", "nesterov": True, "weight_decay": 1e-4},
        {"optimizer": "sgd", "momentum": 0.0, "schedule": "step", "step_size": 2},
        {"optimizer": "adam", "lr": 0.01, "schedule": "cosine"},
        {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01, "schedule": "exponential"},
        {"optimizer": "rmsprop", "lr": 0.005, "schedule": "exponential", "gamma": 0.5},
        {"optimizer": "adam", "lr": 0.01, "schedule": "step", "step_size": 1, "warmup": 2},
        {
            "optimizer": "rmsprop",
            "lr": 0.005,
            "momentum": 0.5,
            "schedule": "cosine",
            "warmup": 1,
            "min_lr": 0.001,
        },
    ],  # fmt: skip
    ids=lambda s: "-".join(str(s[k]) for k in ("optimizer", "schedule") if k in s),
)
def test_optimizers_and_schedules_train(tmp_path: Path, npz: Path, settings: dict) -> None:
    config = cfg(epochs=5, **settings)
    result = train(TINY, data=npz, out=tmp_path / "run", config=config)
    schedule = make_schedule(config.schedule, config.lr, step_size=config.step_size,
                             gamma=config.gamma, min_lr=config.min_lr, total=config.epochs,
                             warmup=config.warmup)  # fmt: skip
    assert [r["lr"] for r in result.history] == [lr_at(schedule, e) for e in range(5)]
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    arrays, meta = load_checkpoint(result.checkpoint)
    assert int(arrays["optim/step"]) == 5 * (192 // 32)
    assert meta["config"]["optimizer"] == settings["optimizer"]


def test_schedule_and_optimizer_mistakes_are_caught_before_training() -> None:
    with pytest.raises(CnnError, match="--momentum does not apply to adam"):
        resolve_config(None, None, {"optimizer": "adam", "momentum": 0.9})
    with pytest.raises(CnnError, match="unknown optimizer 'adagrad'"):
        resolve_config(None, None, {"optimizer": "adagrad"})
    with pytest.raises(CnnError, match="unknown lr schedule 'linear'"):
        resolve_config(None, None, {"schedule": "linear"})
    with pytest.raises(CnnError, match="total must exceed warmup"):
        resolve_config(None, None, {"schedule": "cosine", "epochs": 2, "warmup": 2})


# -- settings precedence --------------------------------------------------------------------


def test_settings_precedence(tmp_path: Path) -> None:
    assert resolve_config(None, None, {}) == TrainConfig(momentum=0.9)
    default = TrainConfig()
    assert (default.optimizer, default.lr, default.batch_size, default.epochs) == (
        "sgd", 0.05, 64, 20,
    )  # fmt: skip
    spec_section = {"epochs": 3, "lr": 0.1, "batch-size": 16, "seed": 5}
    file = tmp_path / "train.yaml"
    file.write_text("training:\n  lr: 0.2\n  batch_size: 32\n  optimizer: rmsprop\n")
    got = resolve_config(spec_section, file, {"batch_size": 64, "lr": None})
    assert (got.epochs, got.seed) == (3, 5)  # from the spec
    assert (got.lr, got.optimizer) == (0.2, "rmsprop")  # the file over the spec
    assert got.batch_size == 64  # the flag over both
    assert got.momentum == 0.0  # rmsprop's default, written in

    file.write_text("lr: 0.2\nbatchsize: 32\n")
    with pytest.raises(CnnError, match=r"train\.yaml: unknown training setting 'batchsize'"):
        resolve_config(None, file, {})
    file.write_text("epochs: three\n")
    with pytest.raises(CnnError, match="train.yaml: training setting 'epochs' must be a int"):
        resolve_config(None, file, {})
    with pytest.raises(CnnError, match="spec 'training' section: learning rate must be > 0"):
        resolve_config({"lr": 0}, None, {})


# -- non-finite values ----------------------------------------------------------------------


def test_nan_loss_stops_before_reaching_a_checkpoint(
    tmp_path: Path, npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop.loss_and_grad
    calls = {"n": 0}

    def poisoned(kind: str, out: np.ndarray, y: np.ndarray) -> Any:
        loss, dout, scores = real(kind, out, y)
        if len(y) == 32:  # training batches (evaluation uses the whole split)
            calls["n"] += 1
            if calls["n"] == 6 + 3:  # epoch 2, batch 3
                return float("nan"), dout, scores
        return loss, dout, scores

    monkeypatch.setattr(loop, "loss_and_grad", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as info:
        train(TINY, data=npz, out=run, config=cfg(epochs=3))
    message = str(info.value)
    assert "loss became nan at epoch 2, batch 3" in message
    assert "lower the learning rate" in message and str(run / "checkpoints/last.npz") in message
    assert info.value.exit_code == 1
    arrays, meta = load_checkpoint(run / "checkpoints" / "last.npz")
    assert meta["epoch"] == 1 and all(np.isfinite(a).all() for a in arrays.values())
    assert len(metrics(run)) == 1


def test_weights_overflowing_in_the_last_batch_never_reach_a_checkpoint(
    tmp_path: Path, npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loss of a batch is finite but its update overflows: the epoch must not be saved.
    real = loop.train_step
    calls = {"n": 0}

    def step(model: Any, *args: Any, **kw: Any) -> Any:
        out = real(model, *args, **kw)
        calls["n"] += 1
        if calls["n"] == 12:  # the last batch of epoch 2
            model.params["dense1.weight"][0, 0] = np.inf
        return out

    monkeypatch.setattr(loop, "train_step", step)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"dense1\.weight.*end of epoch 2.*learning rate"):
        train(TINY, data=npz, out=run, config=cfg(epochs=3))
    arrays, meta = load_checkpoint(run / "checkpoints" / "last.npz")
    assert meta["epoch"] == 1 and all(np.isfinite(a).all() for a in arrays.values())


# -- run folders ----------------------------------------------------------------------------


def test_existing_run_is_refused_or_replaced_cleanly(tmp_path: Path, npz: Path) -> None:
    run = tmp_path / "run"
    train(TINY, data=npz, out=run, config=cfg(epochs=2, val_split=0.25))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CnnError, match="already holds a run; pass --overwrite"):
        train(TINY, data=npz, out=run, config=cfg(epochs=1))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # A bad data set with --overwrite still leaves the old run alone.
    with pytest.raises(DataError, match="missing.npz"):
        train(TINY, data=tmp_path / "missing.npz", out=run, config=cfg(), overwrite=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # --overwrite replaces the run; nothing of the old one (a spec file, a summary) stays.
    train({**TINY, "name": "other"}, data=npz, out=run, config=cfg(epochs=1), overwrite=True)
    assert not (run / "spec.yaml").exists()  # the new spec came as a dict, with no text
    assert len(metrics(run)) == 1
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["val_split"] == 0.0


def test_network_output_must_match_the_classes(tmp_path: Path, npz: Path) -> None:
    five = {**TINY, "layers": [*TINY["layers"][:-1], {"dense": {"units": 3}}]}
    with pytest.raises(DataError, match=r"bands\.npz \(y_train\): label 3 .*out of range 0\.\.2"):
        train(five, data=npz, out=tmp_path / "run", config=cfg())
    assert not (tmp_path / "run").exists()
    conv_out = {**TINY, "layers": TINY["layers"][:2]}
    with pytest.raises(CnnError, match="classification needs a vector"):
        train(conv_out, data=npz, out=tmp_path / "run", config=cfg())


def test_augmentation(tmp_path: Path, npz: Path) -> None:
    plain = train(TINY, data=npz, out=tmp_path / "plain", config=cfg(epochs=1))
    shifted = train(TINY, data=npz, out=tmp_path / "aug", config=cfg(epochs=1, augment="shift"))
    assert plain.history[0]["train_loss"] != shifted.history[0]["train_loss"]
    assert load_checkpoint(shifted.checkpoint)[1]["config"]["augment"] == "shift"
    with pytest.raises(CnnError, match=r"turns 12x12x1 images into 6x6x1"):
        train(TINY, data=npz, out=tmp_path / "crop", config=cfg(augment="crop(size=0.5)"))
    with pytest.raises(CnnError, match="unknown op 'nosuch'"):
        train(TINY, data=npz, out=tmp_path / "bad", config=cfg(augment="nosuch"))
    assert not (tmp_path / "crop").exists() and not (tmp_path / "bad").exists()
