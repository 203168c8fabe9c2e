"""``cnn train``, ``cnn evaluate`` and ``cnn predict`` through the command line (CliRunner).

Data (the JSON summary, tables, JSON lines) goes to stdout; progress, warnings and errors go
to stderr. Bad input exits 2 with one line naming the file and changes nothing; a non-finite
loss exits 1; Ctrl-C exits 130 with a resumable checkpoint. One real LeNet-5 epoch on the
shipped MNIST subset checks that training actually learns.
"""

from __future__ import annotations

import csv
import gzip
import inspect
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands on the app)
import cnncli.train.loop as loop
from cnncli.checkpoint import load_checkpoint, save_checkpoint
from cnncli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "sample_data" / "mnist"
LENET5 = ROOT / "architectures" / "lenet5.yaml"

# click < 8.2 mixes stderr into stdout unless told not to; 8.2+ always keeps both apart.
if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
    runner = CliRunner(mix_stderr=False)
else:
    runner = CliRunner()

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
TIMING = {"epoch_train_seconds", "images_per_second"}


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic writes still go through a temporary file and a rename; only the flush to disk
    is skipped, to keep these tests fast on a busy disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


# -- running the CLI --------------------------------------------------------------------------


def cnn(*args: Any, input: str | None = None) -> Any:
    return runner.invoke(app, [str(a) for a in args], input=input)


def ok(*args: Any, input: str | None = None) -> Any:
    result = cnn(*args, input=input)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def fails(code: int, *args: Any, input: str | None = None) -> str:
    """Run a command that must fail cleanly with ``code``; return its stderr."""
    result = cnn(*args, input=input)
    assert result.exit_code == code, result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


def one_error(code: int, *args: Any) -> str:
    """Run a command that must fail with exactly one ``error:`` line on stderr; return it."""
    lines = fails(code, *args).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# -- data sets --------------------------------------------------------------------------------


def make_images(n: int, seed: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 12, 12] images: class c is a bright band at rows 3c..3c+2 (mod 12), plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes)
    x = rng.normal(0.3, 0.25, (n, 12, 12))
    for i, c in enumerate(y):
        x[i, (3 * c) % 12 : (3 * c) % 12 + 3] += 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


def idx_bytes(a: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
    return header + a.astype(np.uint8).tobytes()


def write_idx(folder: Path, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    files = {
        "train-images-idx3-ubyte.gz": idx_bytes(x, 2051),
        "train-labels-idx1-ubyte.gz": idx_bytes(y, 2049),
        "t10k-images-idx3-ubyte.gz": idx_bytes(xt, 2051),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(yt, 2049),
    }
    for name, data in files.items():
        (folder / name).write_bytes(gzip.compress(data))
    return folder


def write_image_folder(root: Path, n_classes: int = 4, per_class: int = 6) -> Path:
    """root/{train,test}/c<k>/*.png: 16x16 images (grey, one class in RGB) to be fitted."""
    for split, seed in (("train", 3), ("test", 4)):
        x, y = make_images(n_classes * per_class, seed, n_classes)
        for i, (a, c) in enumerate(zip(x, y)):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(a).resize((16, 16), Image.Resampling.NEAREST)
            (img.convert("RGB") if c == 1 else img).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    x, y = make_images(192, 1)
    xt, yt = make_images(64, 2)
    np.savez(root / "bands.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    spec = root / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    write_idx(root / "idx", x, y, xt, yt)
    x10, y10 = make_images(40, 5, classes=10)
    write_idx(root / "idx10", x10, y10, x10[:10], y10[:10])
    noisy = y.copy()
    noisy[::5] = (noisy[::5] + 1) % 4  # a fifth mislabelled: the loss cannot reach zero
    np.savez(root / "noisy.npz", x_train=x, y_train=noisy, x_test=xt, y_test=yt)
    write_image_folder(root / "images")
    write_image_folder(root / "images10", n_classes=10, per_class=1)
    return {
        "root": root,
        "npz": root / "bands.npz",
        "noisy": root / "noisy.npz",
        "spec": spec,
        "idx": root / "idx",
        "idx10": root / "idx10",
        "images": root / "images",
        "images10": root / "images10",
    }


@pytest.fixture(scope="module")
def trained(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch run on the npz, with a validation split (best != last possible)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    ok("train", "--arch", data["spec"], "--data", data["npz"], "--epochs", 3,
       "--batch-size", 32, "--val-split", 0.25, "--out", run, "-q")  # fmt: skip
    return run


@pytest.fixture(scope="module")
def trained_images(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "images"
    ok("train", "--arch", data["spec"], "--data", data["images"], "--epochs", 3,
       "--batch-size", 8, "--out", run, "-q")  # fmt: skip
    return run


def weights(run: Path, name: str = "last") -> dict[str, np.ndarray]:
    with np.load(run / "checkpoints" / f"{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__meta__"}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def files_of(run: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def tiny_train(
    data: dict[str, Path], out: Path, *args: Any, data_key: str = "npz", path: Path | None = None
) -> list:
    """``cnn train`` arguments for the tiny network (on ``path`` if given)."""
    source = path if path is not None else data[data_key]
    return ["train", "--arch", data["spec"], "--data", source, "--batch-size", 32,
            "--out", out, *args]  # fmt: skip


# -- cnn train ----------------------------------------------------------------------------------


def test_lenet5_learns_in_one_epoch_json_summary(tmp_path: Path) -> None:
    run = tmp_path / "lenet"
    result = ok("train", "--arch", LENET5, "--data", MNIST, "--epochs", 1, "--out", run,
                "--format", "json")  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object on stdout, nothing else
    summary = json.loads(lines[0])
    assert isinstance(summary, dict)
    assert summary["epochs"] == 1
    assert 0.8 < summary["test_accuracy"] <= 1.0  # a fraction, not a percentage
    assert 0 < summary["test_loss"] < 1.0
    assert summary["train_images_per_second"] > 0
    assert Path(summary["checkpoint"]).is_file()
    assert Path(summary["checkpoint"]) == run / "checkpoints" / "last.npz"
    assert "{" not in result.stderr  # no JSON on stderr; progress is off in JSON mode


def test_table_output_and_progress_on_stderr(tmp_path: Path, data: dict[str, Path]) -> None:
    run = tmp_path / "run"
    result = ok(*tiny_train(data, run, "--epochs", 2))
    assert result.stdout.startswith("done: 2 epochs, test accuracy ")
    assert f"checkpoint: {run / 'checkpoints' / 'last.npz'}" in result.stdout
    assert "epoch" not in result.stdout.replace("2 epochs", "")
    err = result.stderr
    assert "data: 192 train, 0 val, 64 test images, 4 classes" in err
    assert "input rule: npz" in err and "12x12 used as is" in err
    assert "epoch   1 | lr 0.05 | loss" in err and "epoch   2 |" in err
    assert ok(*tiny_train(data, tmp_path / "quiet", "--epochs", 1, "-q")).stderr == ""


@pytest.mark.parametrize(
    ("data_key", "rule"),
    [
        ("idx", "MNIST IDX files in"),
        ("images", "16x16 resized to 12x12 (bilinear, aspect kept) and center-cropped"),
    ],
)
def test_idx_and_image_folder_data(
    tmp_path: Path, data: dict[str, Path], data_key: str, rule: str
) -> None:
    run = tmp_path / "run"
    result = ok(*tiny_train(data, run, "--epochs", 2, "--format", "json", data_key=data_key))
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 2 and 0 <= summary["test_accuracy"] <= 1
    assert "input rule" not in result.stderr  # JSON mode is quiet
    text = ok(*tiny_train(data, tmp_path / "again", "--epochs", 1, data_key=data_key)).stderr
    assert rule in text
    if data_key == "images":
        assert "colour converted to grey" in text
        _, meta = load_checkpoint(run / "checkpoints" / "last.npz")
        assert meta["classes"] == ["c0", "c1", "c2", "c3"]


def test_settings_precedence_and_saved_config(tmp_path: Path, data: dict[str, Path]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({**TINY, "training": {"epochs": 2, "lr": 0.1, "batch_size": 16,
                                             "seed": 5, "weight_decay": 0.001}})
    )  # fmt: skip
    config = tmp_path / "settings.yaml"
    config.write_text("lr: 0.02\nbatch_size: 48\nschedule: step\nstep_size: 1\n")
    run = tmp_path / "run"
    ok("train", "--arch", spec, "--data", data["npz"], "--config", config,
       "--batch-size", 64, "--out", run, "-q")  # fmt: skip
    saved = yaml.safe_load((run / "config.yaml").read_text())["training"]
    assert saved["epochs"] == 2 and saved["seed"] == 5 and saved["weight_decay"] == 0.001
    assert saved["lr"] == 0.02 and saved["schedule"] == "step"  # the file over the spec
    assert saved["batch_size"] == 64  # the flag over the file and the spec
    assert saved["optimizer"] == "sgd" and saved["momentum"] == 0.9  # defaults, resolved
    rows = metrics(run)
    assert [r["lr"] for r in rows] == [0.02, 0.02 * 0.1]
    assert load_checkpoint(run / "checkpoints" / "last.npz")[1]["config"] == saved
    assert int(weights(run)["optim/step"]) == 2 * 3  # 192 images in batches of 64


def test_bad_settings_exit_2_before_reading_data(tmp_path: Path, data: dict[str, Path]) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("lr: 0.02\nlearning-rate-decay: 0.5\n")
    line = one_error(2, *tiny_train(data, tmp_path / "run", "--config", config))
    assert str(config) in line and "unknown training setting 'learning-rate-decay'" in line
    line = one_error(2, *tiny_train(data, tmp_path / "run", "--optimizer", "adam",
                                    "--momentum", 0.9))  # fmt: skip
    assert "--momentum does not apply to adam" in line
    line = one_error(2, *tiny_train(data, tmp_path / "run", "--config", tmp_path / "no.yaml"))
    assert "no.yaml: cannot read training config" in line
    assert not (tmp_path / "run").exists()


def test_early_stopping_says_so(tmp_path: Path, data: dict[str, Path]) -> None:
    run = tmp_path / "run"
    result = ok(*tiny_train(data, run, "--epochs", 30, "--val-split", 0.25, "--patience", 1,
                            "--lr", 0.2))  # fmt: skip
    rows = metrics(run)
    assert len(rows) < 30
    assert rows[-1]["val_accuracy"] <= max(r["val_accuracy"] for r in rows[:-1])
    assert f"early stopping after epoch {len(rows)}: no improvement for 1 epoch" in result.stderr
    assert "stopped early" in result.stdout
    assert json.loads((run / "summary.json").read_text())["stopped_early"] is True


def test_resume_extends_a_finished_run(tmp_path: Path, data: dict[str, Path]) -> None:
    ok(*tiny_train(data, tmp_path / "whole", "--epochs", 4, "--val-split", 0.25, "-q"))
    ok(*tiny_train(data, tmp_path / "run", "--epochs", 2, "--val-split", 0.25, "-q"))
    result = ok("train", "--resume", tmp_path / "run", "--epochs", 4)  # data from the checkpoint
    assert "resuming after epoch 2" in result.stderr and "epoch   3 |" in result.stderr
    assert_same_weights(tmp_path / "whole", tmp_path / "run")
    assert len(metrics(tmp_path / "run")) == 4

    line = one_error(2, "train", "--resume", tmp_path / "run", "--lr", 0.1, "--out", tmp_path)
    assert "only --epochs and --data may be given (got --lr, --out)" in line
    line = one_error(2, "train", "--resume", tmp_path / "run", "--epochs", 3)
    assert "already done 4 epochs" in line
    line = one_error(2, "train", "--resume", tmp_path / "nothing")
    assert "nothing: no such run folder or checkpoint" in line


def test_ctrl_c_exits_130_and_resumes_exactly(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(*tiny_train(data, tmp_path / "whole", "--epochs", 3, "-q"))

    real = loop.train_step
    calls = {"n": 0}

    def interrupted(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 6 + 2:  # epoch 2, batch 2 (6 batches of 32 per epoch)
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_step", interrupted)
    run = tmp_path / "run"
    err = fails(130, *tiny_train(data, run, "--epochs", 3))
    assert f"continue with cnn train --resume {run}" in err
    _, meta = load_checkpoint(run / "checkpoints" / "last.npz")
    assert meta["epoch"] == 1 and len(metrics(run)) == 1
    assert not (run / "summary.json").exists()

    monkeypatch.setattr(loop, "train_step", real)
    ok("train", "--resume", run, "-q")
    assert_same_weights(tmp_path / "whole", run)
    assert [r["test_loss"] for r in metrics(run)] == [r["test_loss"] for r in metrics(
        tmp_path / "whole")]  # fmt: skip


def test_ctrl_c_in_the_first_epoch(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_step", interrupted)
    err = fails(130, *tiny_train(data, tmp_path / "run", "--epochs", 3, "-q"))
    assert "interrupted before the first epoch ended" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.npz").exists()


def test_exploding_learning_rate_exits_1_keeping_the_last_good_checkpoint(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    # A network without activations on labels it cannot fit exactly; lr 0.05 in epoch 1,
    # then 0.05 * 1e6 from epoch 2 on (an exponential schedule): the weights overflow.
    linear = tmp_path / "linear.yaml"
    linear.write_text(yaml.safe_dump({"name": "linear", "input": [12, 12, 1], "layers": [
        {"conv": {"filters": 4, "kernel": 3}}, {"pool": {"type": "avg", "size": 2}},
        "flatten", {"dense": {"units": 4}}]}))  # fmt: skip
    config = tmp_path / "boom.yaml"
    config.write_text("schedule: exponential\ngamma: 1000000.0\n")
    run = tmp_path / "run"
    line = one_error(1, "train", "--arch", linear, "--data", data["noisy"], "--out", run,
                     "--epochs", 4, "--batch-size", 32, "--config", config, "-q")  # fmt: skip
    assert "became nan" in line or "became inf" in line or "non-finite" in line
    assert "hint: lower the learning rate, now 50000" in line
    assert str(run / "checkpoints" / "last.npz") in line
    arrays, meta = load_checkpoint(run / "checkpoints" / "last.npz")
    assert meta["epoch"] == 1
    assert all(np.isfinite(a).all() for a in arrays.values())
    assert len(metrics(run)) == 1


# -- bad input: exit 2, one line naming the file, nothing written -------------------------------


def test_bad_data_exits_2_naming_the_file(tmp_path: Path, data: dict[str, Path]) -> None:
    root = tmp_path / "bad"
    x, y = make_images(32, 9)
    cases: list[tuple[Path, str]] = []

    cases.append((root / "missing", "missing: no such file or folder"))

    truncated = write_idx(root / "truncated", x, y, x, y)
    blob = (truncated / "train-images-idx3-ubyte.gz").read_bytes()
    (truncated / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    cases.append((truncated, "train-images-idx3-ubyte.gz: corrupt or truncated gzip data"))

    garbage = write_idx(root / "garbage", x, y, x, y)
    (garbage / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x08\x03" + bytes(40)))
    cases.append((garbage, "t10k-labels-idx1-ubyte.gz: not an IDX file"))

    short = write_idx(root / "short", x, y[:-1], x, y)
    cases.append((short, "32 images but 31 labels in the train split"))

    np.savez(root / "range.npz", x_train=x, y_train=np.where(y == 3, 4, y))
    cases.append((root / "range.npz", "range.npz (y_train): label 4 at index"))

    np.savez(root / "negative.npz", x_train=x, y_train=y - 1)
    cases.append((root / "negative.npz", "negative.npz (y_train): negative label -1"))

    (root / "notzip.npz").write_bytes(b"not a zip file")
    cases.append((root / "notzip.npz", "notzip.npz: not an .npz archive"))

    for path, message in cases:
        out = tmp_path / "run"
        line = one_error(2, *tiny_train(data, out, "--epochs", 1, path=path))
        assert message in line, line
        assert not out.exists(), path


def test_output_size_must_match_the_number_of_classes(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    five = tmp_path / "five.yaml"
    five.write_text(yaml.safe_dump({**TINY, "layers": [*TINY["layers"][:-1],
                                                       {"dense": {"units": 5}}]}))  # fmt: skip
    line = one_error(2, "train", "--arch", five, "--data", data["idx10"], "--out", tmp_path / "r")
    assert "train-labels-idx1-ubyte.gz: label" in line and "out of range 0..4" in line
    line = one_error(
        2, "train", "--arch", five, "--data", data["images10"], "--out", tmp_path / "r"
    )
    assert f"{data['images10']}: has 10 classes but the network has 5 outputs" in line
    assert not (tmp_path / "r").exists()
    line = one_error(2, "train", "--arch", tmp_path / "nope.yaml", "--data", data["npz"])
    assert "nope.yaml" in line and "no such file" in line


def test_existing_run_is_not_overwritten(
    tmp_path: Path, data: dict[str, Path], trained: Path
) -> None:
    before = files_of(trained)
    line = one_error(2, *tiny_train(data, trained, "--epochs", 1))
    assert f"{trained}: already holds a run; pass --overwrite" in line
    # --overwrite with bad data: refused before anything of the old run is touched
    line = one_error(2, *tiny_train(data, trained, "--overwrite", path=tmp_path / "gone"))
    assert "gone: no such file or folder" in line
    assert files_of(trained) == before

    copy = tmp_path / "copy"
    copy.mkdir()
    for p in trained.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(trained)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(trained)).write_bytes(p.read_bytes())
    ok(*tiny_train(data, copy, "--epochs", 1, "--overwrite", "-q"))
    assert len(metrics(copy)) == 1
    assert yaml.safe_load((copy / "config.yaml").read_text())["training"]["val_split"] == 0.0


def test_bad_checkpoints_for_evaluate_and_predict(
    tmp_path: Path, data: dict[str, Path], trained: Path
) -> None:
    image = next((data["images"] / "test" / "c0").iterdir())
    last = trained / "checkpoints" / "last.npz"
    truncated = tmp_path / "truncated.npz"
    blob = last.read_bytes()
    truncated.write_bytes(blob[: len(blob) - 200])
    arrays, meta = load_checkpoint(last)
    other = {**TINY, "layers": [{"conv": {"filters": 6, "kernel": 3}}, *TINY["layers"][1:]]}
    mismatched = save_checkpoint(tmp_path / "other-spec.npz", arrays,
                                 {**meta, "spec_text": yaml.safe_dump(other)})  # fmt: skip
    flipped = tmp_path / "flipped.npz"  # one byte changed inside an array: the zip CRC fails
    member = blob.index(b"conv1.weight.npy") + 200
    flipped.write_bytes(blob[:member] + bytes([blob[member] ^ 0xFF]) + blob[member + 1 :])
    not_ours = tmp_path / "plain.npz"
    np.savez(not_ours, w=np.zeros(3))

    for path, message in [
        (truncated, "truncated.npz: not a checkpoint (not an .npz archive, or truncated)"),
        (flipped, "flipped.npz: corrupt or truncated checkpoint"),
        (mismatched, "other-spec.npz: checkpoint does not match its spec"),
        (not_ours, "plain.npz: not a cnncli checkpoint"),
        (tmp_path / "none.npz", "none.npz: no such run folder or checkpoint"),
    ]:
        line = one_error(2, "evaluate", path, "--data", data["npz"])
        assert message in line, line
        line = one_error(2, "predict", path, image)
        assert message in line, line
    # a run folder without checkpoints
    (tmp_path / "empty").mkdir()
    line = one_error(2, "evaluate", tmp_path / "empty")
    assert "no checkpoints/best.npz in this run folder" in line


# -- cnn evaluate -------------------------------------------------------------------------------


def test_evaluate_report_matches_training(tmp_path: Path, trained: Path) -> None:
    rows = metrics(trained)
    summary = json.loads((trained / "summary.json").read_text())

    # last.npz is the final model that training reported on
    last = json.loads(ok("evaluate", trained / "checkpoints" / "last.npz", "--format",
                         "json").stdout)  # fmt: skip
    assert last["accuracy"] == summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert last["loss"] == pytest.approx(summary["test_loss"], rel=1e-12)
    assert last["split"] == "test" and last["images"] == 64

    # a run folder means its best checkpoint (highest validation accuracy)
    csv_path, png_path = tmp_path / "cm.csv", tmp_path / "cm.png"
    args = ["--top-k", 2, "--confusion-csv", csv_path, "--confusion-png", png_path]
    rep = json.loads(ok("evaluate", trained, "--format", "json", *args).stdout)
    _, best = load_checkpoint(trained / "checkpoints" / "best.npz")
    assert rep["checkpoint"] == str(trained / "checkpoints" / "best.npz")
    assert rep["accuracy"] == rows[best["epoch"] - 1]["test_accuracy"]
    assert rep["loss"] >= 0 and rep["top_k"] == 2 and rep["top2_accuracy"] >= rep["accuracy"]
    cm = np.array(rep["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == rep["images"] == 64
    assert np.trace(cm) / cm.sum() == rep["accuracy"]
    assert [r["class"] for r in rep["per_class"]] == ["0", "1", "2", "3"]
    for k, r in enumerate(rep["per_class"]):
        assert r["support"] == cm[k].sum()
        assert r["recall"] == pytest.approx(cm[k, k] / cm[k].sum())
        if cm[:, k].sum():
            assert r["precision"] == pytest.approx(cm[k, k] / cm[:, k].sum())
        p, q = r["precision"], r["recall"]
        assert r["f1"] == pytest.approx(2 * p * q / (p + q) if p + q else 0.0)

    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["true\\pred", "0", "1", "2", "3"]
    assert [[int(v) for v in row[1:]] for row in table[1:]] == cm.tolist()
    with Image.open(png_path) as im:
        assert im.format == "PNG" and im.size[0] > 100

    text = ok("evaluate", trained, "--top-k", 2).stdout
    assert f"accuracy {rep['accuracy']:.2%}" in text and "top-2" in text
    assert "confusion matrix (rows: true class, columns: predicted)" in text
    per_class = ok("evaluate", trained, "--format", "csv").stdout.splitlines()
    assert per_class[0] == "class,precision,recall,f1,support" and len(per_class) == 5


def test_evaluate_on_other_data(data: dict[str, Path], trained: Path) -> None:
    rep = json.loads(ok("evaluate", trained, "--data", data["idx"], "--format", "json").stdout)
    npz = json.loads(ok("evaluate", trained, "--format", "json").stdout)
    assert rep["data"] == str(data["idx"]) and rep["images"] == 64
    assert rep["accuracy"] == npz["accuracy"]  # the same images, stored as IDX
    line = one_error(2, "evaluate", trained, "--data", data["idx10"])
    assert "label" in line and "out of range 0..3" in line


# -- cnn predict --------------------------------------------------------------------------------


def test_predict_table_json_lines_and_stdin(data: dict[str, Path], trained_images: Path) -> None:
    folder = data["images"] / "test" / "c2"
    files = sorted(folder.iterdir())
    lines = ok("predict", trained_images, folder, "--format", "json", "-k", 3).stdout
    results = [json.loads(line) for line in lines.strip().splitlines()]
    assert [r["path"] for r in results] == [str(p) for p in files]
    for r in results:
        assert len(r["top"]) == 3
        probs = [t["probability"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
        assert all(t["label"] in ("c0", "c1", "c2", "c3") for t in r["top"])
    all4 = json.loads(ok("predict", trained_images, files[0], "--format", "json", "-k", 9).stdout)
    assert len(all4["top"]) == 4 and sum(t["probability"] for t in all4["top"]) == pytest.approx(1)

    table = ok("predict", trained_images, files[0], files[1]).stdout
    assert files[0].name in table and "#1" in table and "#3" in table and "%)" in table

    stdin = "\n".join(str(p) for p in files[:2]) + "\n"
    piped = ok("predict", trained_images, "-", "--format", "json", input=stdin).stdout
    assert [json.loads(x)["path"] for x in piped.splitlines()] == [str(p) for p in files[:2]]


def test_predict_reports_unreadable_files_and_goes_on(
    tmp_path: Path, data: dict[str, Path], trained_images: Path
) -> None:
    good = sorted((data["images"] / "test" / "c1").iterdir())[:2]
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = cnn("predict", trained_images, good[0], text, fake, good[1], "--format", "json")
    assert result.exit_code == 1
    assert [json.loads(x)["path"] for x in result.stdout.splitlines()] == [str(p) for p in good]
    err = result.stderr.strip().splitlines()
    assert len(err) == 2
    assert str(text) in err[0] and "not a readable image" in err[0]
    assert str(fake) in err[1]
    only_bad = cnn("predict", trained_images, text, "--format", "json")
    assert only_bad.exit_code == 1 and only_bad.stdout == ""
