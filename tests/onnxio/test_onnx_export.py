"""``cnn export``: onnx.checker passes and onnxruntime computes what our engine computes.

Every shipped architecture (random weights, small inputs) and a zoo of small specs that
covers every layer type and option is exported, run by onnxruntime and compared with
``Model.forward`` (probabilities within 1e-5, same top-1); ``cnn shapes`` on the exported
graph must then give the YAML's report. A LeNet-5 trained for one epoch is exported from
its run folder and checked on every image of the sample MNIST test split.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.cli.app import app
from cnncli.engine import build_model
from cnncli.layers.registry import layer_types
from cnncli.onnxio.export import (
    META_CLASSES,
    META_NORMALIZER,
    META_SPEC,
    _Exporter,
    _Graph,
    exportable_types,
    to_onnx,
)
from cnncli.onnxio.importer import model_spec_dict
from cnncli.onnxio.verify import TOLERANCE, compare
from cnncli.shapes import shape_report
from cnncli.spec import load_spec, parse_hwc, resolve, spec_from_dict

ROOT = Path(__file__).resolve().parents[2]
ARCH = sorted((ROOT / "architectures").glob("*.yaml"))
MNIST = ROOT / "sample_data" / "mnist"
#: Small inputs at which each shipped architecture is valid (the others use their own).
SMALL = {"alexnet": "64x64x3", "googlenet": "32x32x3", "vgg16": "32x32x3",
         "resnet18": "32x32x3", "resnet50": "32x32x3", "mobilenet_v2": "32x32x3"}
#: What the report comparison looks at, per row.
ROW_KEYS = ("name", "type", "depth", "input", "output", "params", "weights", "biases",
            "non_trainable", "macs", "receptive_field", "jump")

runner = CliRunner()


def cnn(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def randomize(model, rng: np.random.Generator) -> None:
    """Batchnorm statistics and affine terms away from the identity, biases non-zero, so
    that a mistake in converting them shows."""
    for name, arr in model.state_dict().items():
        if name.endswith("running_var"):
            arr[...] = rng.uniform(0.5, 2.0, arr.shape)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            arr[...] = rng.normal(0.0, 0.1, arr.shape)
        elif arr.ndim == 1 and name.endswith(".weight"):  # batchnorm gamma
            arr[...] = rng.uniform(0.8, 1.2, arr.shape)


def calibrate(model, x: np.ndarray) -> None:
    """Scale the last layer so the largest output is about 8: random deep networks give
    logits in the hundreds, whose softmax is one-hot and would hide differences."""
    weights = [k for k in model.params if k.endswith(".weight")]
    y = np.abs(model.forward(x)).max()
    model.release()
    if weights and y > 8:
        last = weights[-1]
        model.params[last][...] *= 8 / y
        bias = last[: -len("weight")] + "bias"
        if bias in model.params:
            model.params[bias][...] *= 8 / y


def report_rows(report: dict) -> list[dict]:
    return [{k: r[k] for k in ROW_KEYS} for r in report["layers"] if r["type"] != "dropout"]


def totals(report: dict) -> dict:
    t = dict(report["totals"])
    t.pop("activation_bytes_per_image")  # dropout rows count activations; the graph has none
    t.pop("activation_bytes_batch")
    return t


def check_round_trip(model, proto) -> None:
    """``cnn shapes`` on the exported graph == the report on the spec (dropout aside)."""
    data = model_spec_dict(proto, "exported.onnx")
    ours = shape_report(model.network)
    theirs = shape_report(resolve(spec_from_dict(data)))
    assert report_rows(theirs) == report_rows(ours)
    assert totals(theirs) == totals(ours)
    assert theirs["input"] == ours["input"] and theirs["output"] == ours["output"]
    for key in ("warnings", "notes"):  # the same messages, located in another file
        assert [unlocated(m) for m in theirs[key]] == [unlocated(m) for m in ours[key]]


def unlocated(message: str) -> str:
    return re.sub(r"^.*?layer '", "layer '", message)


def export_and_compare(model, *, seed: int = 0, n: int = 4, check: bool = True) -> dict:
    """Export (to_onnx runs onnx.checker itself; ``check`` runs it here too), compare with
    onnxruntime, round-trip the report."""
    rng = np.random.default_rng(seed)
    randomize(model, rng)
    x = rng.standard_normal((n, *model.input_shape)).astype(np.float32)
    calibrate(model, x)
    proto = to_onnx(model)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    result = compare(model, proto, x)
    assert result["max_abs_diff"] <= TOLERANCE, result
    assert result["top1_agree"] == n, result
    check_round_trip(model, proto)
    return {"proto": proto, "result": result}


# -- coverage of the vocabulary --------------------------------------------------------------


def test_every_layer_type_is_exported():
    missing = set(layer_types()) - exportable_types()
    assert not missing, f"layer types without an ONNX export: {sorted(missing)}"


def test_a_type_without_export_is_refused_naming_the_layer():
    class Fake:
        type = "mystery"
        path = "block.odd"

    with pytest.raises(Exception, match=r"layer 'block\.odd': layer type 'mystery' cannot be "
                                        r"exported"):
        _Exporter(None, _Graph(onnx)).run([Fake()], "input")  # type: ignore[list-item]


# -- shipped architectures ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ARCH, ids=[p.stem for p in ARCH])
def test_shipped_architecture_matches_onnxruntime_and_round_trips(path: Path):
    size = SMALL.get(path.stem)
    model = build_model(path, input_shape=parse_hwc(size) if size else None, seed=1)
    out = export_and_compare(model, check=False)  # to_onnx checked it (big: once is enough)
    graph = out["proto"].graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert out["proto"].opset_import[0].version >= 19


# -- every option of every layer type ----------------------------------------------------------

ZOO = {
    "conv_options": ("12x12x4", [
        {"conv": {"filters": 6, "kernel": [3, 5], "stride": [1, 2], "padding": [1, 2],
                  "dilation": 2, "groups": 2, "activation": {"leaky_relu": {"slope": 0.2}}}},
        {"conv": {"filters": 6, "kernel": 3, "padding": "same", "bias": False,
                  "activation": {"elu": {"alpha": 0.7}}}},
        "relu6", "sigmoid", "tanh",
        {"conv": {"filters": 4, "kernel": 2, "stride": 2, "padding": "full",
                  "activation": "relu6"}},
        {"global_pool": {"type": "max"}},
        {"dense": {"units": 5, "activation": "softmax"}},
    ]),
    "deconv": ("5x6x4", [
        {"deconv": {"filters": 6, "kernel": 3, "stride": 2, "padding": 1, "output_padding": 1,
                    "groups": 2, "activation": "relu"}},
        {"deconv": {"filters": 3, "kernel": [2, 3], "dilation": 2, "bias": False}},
        "batchnorm",
        {"leaky_relu": {"slope": 0.3}},
    ]),
    "pools": ("9x11x3", [
        {"pool": {"type": "avg", "size": 3, "stride": 2, "padding": 1, "ceil": True}},
        {"pool": {"type": "l2", "size": 2, "stride": 1, "padding": 1, "ceil": True}},
        {"pool": {"type": "max", "size": 3, "stride": 2, "ceil": True}},
        {"conv": {"filters": 7, "kernel": 1}},
        {"pool": {"type": "max", "size": 2, "over": "depth"}},
        {"pool": {"type": "avg", "size": 2, "stride": 1, "over": "depth"}},
        {"pool": {"type": "l2", "size": 1, "over": "depth"}},
        {"pool": {"type": "avg", "size": [1, 2], "stride": [1, 1]}},
        {"pool": {"type": "l2", "size": 2}},
    ]),
    "lrn": ("6x6x9", [
        {"lrn": {"size": 5, "alpha": 1e-2, "beta": 0.75, "k": 2.0}},
        {"lrn": {"size": 4, "alpha": 0.5, "beta": 0.6, "k": 1.0}},
        {"lrn": {"size": 2, "alpha": 0.3, "convention": "torch"}},
        {"lrn": {"size": 3, "alpha": 0.4, "k": 1.5, "convention": "torch"}},
    ]),
    "blocks": ("8x8x4", [
        {"residual": {"body": [{"conv": {"filters": 8, "kernel": 3, "stride": 2, "padding": 1}},
                               "batchnorm"],
                      "shortcut": [{"conv": {"filters": 8, "kernel": 1, "stride": 2}}],
                      "scale": 0.5, "activation": "none"}},
        {"residual": {"body": [{"conv": {"filters": 8, "kernel": 3, "padding": 1}}],
                      "scale": 2.0, "activation": {"leaky_relu": {"slope": 0.1}}}},
        {"parallel": {"branches": [[{"conv": {"filters": 3, "kernel": 1}}], [],
                                   [{"pool": {"size": 3, "stride": 1, "padding": 1}}]]}},
        {"parallel": {"merge": "add",
                      "branches": [[{"conv": {"filters": 4, "kernel": 1}}],
                                   [{"conv": {"filters": 4, "kernel": 3, "padding": 1}}],
                                   [{"pool": {"type": "avg", "size": 1}},
                                    {"conv": {"filters": 4, "kernel": 1}}]]}},
        {"parallel": {"merge": "add", "branches": [[], ["relu"]]}},
        {"repeat": {"times": 2, "layers": [{"conv": {"filters": 4, "kernel": 1}}, "relu"]}},
        {"sequential": {"name": "head", "layers": ["global_pool", {"dense": {"units": 3}}]}},
    ]),
    "dense_head": ("6x6x2", [
        {"conv": {"filters": 3, "kernel": 3}},
        {"dense": {"units": 7, "activation": "tanh"}},  # the implicit flatten
        "batchnorm",
        {"dropout": {"rate": 0.3}},
        {"dense": {"units": 4, "bias": False}},
        "softmax",
    ]),
    "softmax_map": ("5x5x3", [
        {"conv": {"filters": 4, "kernel": 3, "activation": "softmax"}},
        {"dropout": {"rate": 0.5}},
        "flatten",
        {"dense": {"units": 3}},
    ]),
}


@pytest.mark.parametrize("case", list(ZOO))
def test_zoo_matches_onnxruntime_and_round_trips(case: str):
    size, layers = ZOO[case]
    spec = load_spec({"name": case, "input": size, "layers": layers})
    model = build_model(spec, seed=3)
    export_and_compare(model, seed=4, n=5)


def test_graph_uses_the_documented_operators():
    size, layers = ZOO["pools"]
    model = build_model(load_spec({"name": "p", "input": size, "layers": layers}))
    nodes = {n.name: n for n in to_onnx(model).graph.node}
    avg = nodes["pool1"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in avg.attribute}
    assert avg.op_type == "AveragePool" and attrs["count_include_pad"] == 1
    assert attrs["ceil_mode"] == 1 and attrs["pads"] == [1, 1, 1, 1]
    assert nodes["pool2"].op_type == "LpPool"
    assert [nodes[k].op_type for k in ("pool4/reshape", "pool4", "pool4/unshape")] == \
        ["Reshape", "MaxPool", "Reshape"]
    lrn = build_model(load_spec({"name": "l", "input": "4x4x6", "layers": [
        {"lrn": {"size": 5, "alpha": 1e-4}}, {"lrn": {"size": 4}}, "relu6", "dropout"]}))
    graph = to_onnx(lrn).graph
    ops = [n.op_type for n in graph.node]
    assert ops == ["LRN", "Pow", "Reshape", "Conv", "Reshape", "Mul", "Add", "Pow", "Mul",
                   "Clip"]  # an even size written out; dropout left out
    first = {a.name: onnx.helper.get_attribute_value(a) for a in graph.node[0].attribute}
    assert first["alpha"] == pytest.approx(5e-4)  # the textbook alpha times the size


# -- a trained LeNet-5 with its normalisation ---------------------------------------------------


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory) -> Path:
    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import train

    out = tmp_path_factory.mktemp("onnx") / "run"
    train(ROOT / "architectures" / "lenet5.yaml", data=MNIST, out=out,
          config=TrainConfig(epochs=1, batch_size=64, lr=0.05))
    return out


def _mnist_test_raw(hwc) -> tuple[np.ndarray, np.ndarray]:
    """The sample MNIST test split fitted to the network's input, before normalisation."""
    from cnncli.data.dataset import Normalizer, load_dataset

    identity = Normalizer(np.zeros(hwc[2]), np.ones(hwc[2]))
    splits = load_dataset(MNIST, tuple(hwc), normalizer=identity)
    return splits.test.x, splits.test.y


def test_trained_lenet_on_every_mnist_test_image(lenet_run: Path, tmp_path: Path):
    from cnncli.data.dataset import Normalizer
    from cnncli.onnxio.export import run_onnxruntime
    from cnncli.train.predict import load_trained

    out = tmp_path / "lenet.onnx"
    result = cnn("export", lenet_run, "--out", out)
    assert result.exit_code == 0, result.output
    assert "normalisation in the graph" in result.stderr
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    model, ckpt_meta, _ = load_trained(lenet_run)
    assert json.loads(meta[META_CLASSES]) == ckpt_meta["classes"] == [str(i) for i in range(10)]
    assert meta[META_SPEC] == ckpt_meta["spec_text"]
    assert json.loads(meta[META_NORMALIZER]) == ckpt_meta["normalizer"]
    assert [n.op_type for n in proto.graph.node[:2]] == ["Sub", "Div"]

    x, y = _mnist_test_raw(ckpt_meta["input"])
    assert len(x) == 1000
    theirs = run_onnxruntime(proto, x)
    xn = Normalizer.from_dict(ckpt_meta["normalizer"]).apply(x.copy())
    ours = model.forward(xn)
    assert np.abs(ours.astype(np.float64) - theirs).max() <= 1e-5
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    assert (theirs.argmax(1) == y).mean() > 0.8  # it did learn: the check is not vacuous

    # --no-normalize: the graph takes normalised images instead
    raw = tmp_path / "raw.onnx"
    assert cnn("export", lenet_run, "--out", raw, "--no-normalize").exit_code == 0
    bare = onnx.load(str(raw))
    assert bare.graph.node[0].op_type == "Conv"
    assert np.abs(run_onnxruntime(bare, xn) - theirs).max() <= 1e-5

    # and cnn shapes reads it back as the spec it came from, normalisation left out
    shown = cnn("shapes", out, "--format", "json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report_rows(report) == report_rows(shape_report(model.network))
    assert "preprocessing" in cnn("shapes", out, "-f", "yaml").stdout


def test_export_verify_and_json(tmp_path: Path, lenet_run: Path):
    out = tmp_path / "v.onnx"
    result = cnn("export", lenet_run, "--out", out, "--verify", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["verify"]["ok"] and summary["verify"]["top1_agree"] == 8
    assert summary["params"] == 61_706 and summary["output"]["shape"] == ["N", 10]
    assert summary["input"] == {"name": "input", "shape": ["N", 1, 32, 32]}


# -- a spec with fresh weights, and the CLI's guards -------------------------------------------


def test_export_a_spec_with_seed_and_input(tmp_path: Path):
    spec = ROOT / "architectures" / "cifar_cnn.yaml"
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    assert cnn("export", spec, "--out", a, "--seed", "1").exit_code == 0
    assert cnn("export", spec, "--out", b, "--seed", "1").exit_code == 0
    assert cnn("export", spec, "--out", c, "--seed", "2").exit_code == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    small = tmp_path / "small.onnx"
    result = cnn("export", ROOT / "architectures" / "resnet18.yaml", "--out", small,
                 "--input", "32x32x3", "--verify")
    assert result.exit_code == 0, result.output
    dims = onnx.load(str(small)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 32, 32]


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_export_never_writes_over_its_input(tmp_path: Path, lenet_run: Path):
    spec = tmp_path / "net.yaml"
    spec.write_text((ROOT / "architectures" / "lenet5.yaml").read_text())
    before = spec.read_bytes()
    line = _one_error_line(cnn("export", spec, "--out", spec))
    assert "is the input" in line and spec.read_bytes() == before
    best = lenet_run / "checkpoints" / "best.npz"
    ckpt = best.read_bytes()
    line = _one_error_line(cnn("export", lenet_run, "--out", best))
    assert "is the input" in line and best.read_bytes() == ckpt
    last = lenet_run / "checkpoints" / "last.npz"  # not read, but not to be lost either
    kept = last.read_bytes()
    line = _one_error_line(cnn("export", lenet_run, "--out", last))
    assert "exists and is not an .onnx file" in line and last.read_bytes() == kept


def test_export_errors_are_one_line_and_leave_files_alone(tmp_path: Path, lenet_run: Path):
    old = tmp_path / "old.onnx"
    old.write_bytes(b"keep me")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [8, 8, 1]\nlayers:\n  - conv: {filters: 2, kernel: 9}\n")
    line = _one_error_line(cnn("export", bad, "--out", old))
    assert "bad.yaml:3" in line and "kernel 9" in line
    assert old.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml", "old.onnx"]  # no temporary left
    assert "is a folder" in _one_error_line(cnn("export", bad, "--out", tmp_path))
    assert "no such" in _one_error_line(cnn("export", tmp_path / "nope.npz", "--out", old))
    assert "--input is for a spec" in _one_error_line(
        cnn("export", lenet_run, "--out", old, "--input", "28x28x1"))
    assert "knows opsets up to" in _one_error_line(
        cnn("export", ROOT / "architectures" / "lenet5.yaml", "--out", old, "--opset", "99"))
    assert "--opset must be 19" in _one_error_line(
        cnn("export", ROOT / "architectures" / "lenet5.yaml", "--out", old, "--opset", "17"))
    assert old.read_bytes() == b"keep me"
