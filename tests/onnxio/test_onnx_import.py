"""``cnn shapes model.onnx``: ONNX graphs read into our spec and reported with our arithmetic.

The PyTorch fixtures (tests/data/onnx, made by make_fixtures.py) must give the reports of
their hand-written specs; small graphs built here with onnx.helper cover each operator and
each way a graph can fail to fit our vocabulary (one line naming the node, exit code 2).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.cli.app import app
from cnncli.shapes import shapes

DATA = Path(__file__).resolve().parents[1] / "data" / "onnx"
ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = ("name", "type", "depth", "input", "output", "params", "weights", "biases",
            "non_trainable", "macs", "receptive_field", "jump")

runner = CliRunner()


def cnn(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def report_json(*args) -> dict:
    result = cnn("shapes", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows(report: dict) -> list[dict]:
    return [{k: r[k] for k in ROW_KEYS} for r in report["layers"]]


def error_line(*args) -> str:
    result = cnn("shapes", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# -- building small graphs -------------------------------------------------------------------


class G:
    """A tiny graph builder: data flows through ``self.x``; constants become initializers."""

    def __init__(self, shape=("N", 3, 8, 8), opset: int = 19) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.opset = opset
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
        self.k = 0
        self.x = "x"

    def const(self, value, dtype=np.float32) -> str:
        self.k += 1
        name = f"c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, name: str | None = None, outputs: int = 1,
           **attrs) -> str:
        self.k += 1
        outs = [f"t{self.k}"] + [f"t{self.k}_{j}" for j in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=name if name is not None else f"n{self.k}",
                                           **attrs))
        return outs[0]

    def then(self, op_type: str, *consts, **attrs) -> G:
        self.x = self.op(op_type, self.x, *consts, **attrs)
        return self

    def conv(self, c_in: int, c_out: int, k: int = 3, **attrs) -> G:
        w = self.const(np.zeros((c_out, c_in, k, k)))
        return self.then("Conv", w, **attrs)

    def save(self, path: Path, outputs: list[str] | None = None) -> Path:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                for o in (outputs or [self.x])]
        graph = helper.make_graph(self.nodes, "test net", [self.input], outs,
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        onnx.save(model, str(path))
        return path


# -- PyTorch exports ---------------------------------------------------------------------------


def test_torch_lenet_with_shape_gather_concat_reshape():
    model = onnx.load(str(DATA / "lenet5_torch.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= ops  # the folded pattern
    got = report_json(DATA / "lenet5_torch.onnx")
    want = shapes(DATA / "lenet5_torch.yaml")
    assert rows(got) == rows(want)
    assert got["totals"] == want["totals"]
    assert got["totals"]["trainable_params"] == 61_706  # the published LeNet-5 figures
    assert got["totals"]["macs"] == 416_520
    assert got["layers"][8]["type"] == "flatten"  # the Reshape, fed by the folded shape


def test_torch_tiny_resnet_blocks_batchnorm_and_names():
    got = report_json(DATA / "tiny_resnet_torch.onnx")
    want = shapes(DATA / "tiny_resnet.yaml")
    assert rows(got) == rows(want)
    assert got["totals"] == want["totals"]
    names = [r["name"] for r in got["layers"]]
    assert "layer1.0.shortcut.downsample.0" in names and "layer1.1" in names
    assert got["layers"][names.index("layer1.0")]["detail"] == "add, scale 1, relu"


def test_every_format_and_explain_work_on_onnx(tmp_path: Path):
    path = DATA / "tiny_resnet_torch.onnx"
    table = cnn("shapes", path, "--explain")
    assert table.exit_code == 0, table.output
    assert "H2 = W2 = floor((16 + 2*1 - 3)/1) + 1 = 16" in table.stdout
    assert "Total params: 8,930" in table.stdout
    md = cnn("shapes", path, "-f", "markdown")
    assert md.exit_code == 0 and "| layer1.0.conv1 | conv |" in md.stdout
    csv_rows = list(csv.DictReader(io.StringIO(cnn("shapes", path, "-f", "csv").stdout)))
    assert [r["name"] for r in csv_rows] == [r["name"] for r in report_json(path)["layers"]]
    # --format yaml writes a spec that gives the same report
    text = cnn("shapes", path, "-f", "yaml").stdout
    spec = tmp_path / "tiny.yaml"
    spec.write_text(text)
    assert rows(report_json(spec)) == rows(report_json(path))
    assert report_json(spec)["totals"] == report_json(path)["totals"]


def test_input_override_on_onnx(tmp_path: Path):
    got = report_json(DATA / "tiny_resnet_torch.onnx", "--input", "32x32x3")
    want = shapes(DATA / "tiny_resnet.yaml", input_shape=(32, 32, 3))
    assert rows(got) == rows(want) and got["input"] == [32, 32, 3]
    assert got["warnings"] == []  # global pooling: fc still gets 16 units
    lenet = report_json(DATA / "lenet5_torch.onnx", "--input", "32x32x1")
    assert lenet["layers"][9]["params"] == 480 * 84 + 84  # as the YAML spec would say...
    assert len(lenet["warnings"]) == 1  # ...but the model's own weight takes 120 units
    assert "layer 'F6': receives 480 units at input 32x32x1 but the model's weight takes 120" \
        in lenet["warnings"][0]
    assert report_json(DATA / "lenet5_torch.onnx")["warnings"] == []
    line = error_line(DATA / "tiny_resnet_torch.onnx", "--input", "32x32x1")
    assert "tiny_resnet_torch.onnx" in line and "3 channels, --input gives 1" in line


def test_symbolic_input_needs_input_size(tmp_path: Path):
    g = G(shape=("N", 3, "H", "W")).conv(3, 4, pads=[1, 1, 1, 1]).then("Relu")
    path = g.save(tmp_path / "dyn.onnx")
    assert "give its size with --input" in error_line(path)
    report = report_json(path, "--input", "10x12x3")
    assert report["output"] == [10, 12, 4]


# -- each operator -----------------------------------------------------------------------------


def test_dense_forms_globals_and_activations(tmp_path: Path):
    g = G()
    g.conv(3, 4, name="c", pads=[1, 1, 1, 1], strides=[2, 2]).then("Clip", g.const(0.0),
                                                                   g.const(6.0), name="c/relu6")
    g.then("GlobalAveragePool", name="gap")  # no flatten after it: a pool over the 4x4 map
    g.conv(4, 4, 1, name="head")
    g.then("Flatten", name="flat")
    g.then("MatMul", g.const(np.zeros((4, 5))), name="fc1/MatMul")
    g.then("Add", g.const(np.zeros(5)), name="fc1/Add")
    g.then("LeakyRelu", alpha=0.25, name="fc1/act")
    g.then("Gemm", g.const(np.zeros((5, 3))), name="fc2")  # transB = 0: W is [in, out]
    g.then("Dropout", g.const(np.array(0.25)), name="drop")
    g.then("Elu", alpha=0.5, name="elu")
    g.then("Clip", g.const(0.0), name="relu")
    g.then("Softmax", axis=-1, name="prob")
    got = report_json(g.save(tmp_path / "m.onnx"))
    summary = [(r["name"], r["type"], r["detail"], r["output"], r["params"]) for r in
               got["layers"]]
    assert summary == [
        ("c", "conv", "3x3/2, pad 1, relu6", [4, 4, 4], 108),
        ("gap", "pool", "avg 4x4/1", [1, 1, 4], 0),
        ("head", "conv", "1x1/1, pad valid", [1, 1, 4], 16),
        ("flat", "flatten", "", [4], 0),
        ("fc1", "dense", "leaky_relu", [5], 25),
        ("fc2", "dense", "", [3], 15),
        ("drop", "dropout", "rate 0.25", [3], 0),
        ("elu", "elu", "", [3], 0),
        ("relu", "relu", "", [3], 0),
        ("prob", "softmax", "", [3], 0),
    ]
    assert got["layers"][1]["receptive_field"] == 9  # a real pool: 3 + (4 - 1)*2


def test_pools_deconv_lrn_and_concat(tmp_path: Path):
    g = G(shape=(1, 4, 9, 9))
    x0 = g.x
    a = g.op("MaxPool", x0, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             ceil_mode=1, name="mp")
    b = g.op("AveragePool", x0, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             count_include_pad=1, name="ap")
    c = g.op("LpPool", x0, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], p=2,
             name="lp")
    g.x = g.op("Concat", a, b, c, axis=1, name="cat")
    g.then("LRN", size=3, alpha=3e-4, beta=0.75, bias=1.0, name="lrn")
    g.then("ConvTranspose", g.const(np.zeros((12, 2, 3, 3))), g.const(np.zeros(6)),
           strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], group=3, name="up")
    g.then("BatchNormalization", *(g.const(np.ones(6)) for _ in range(4)), epsilon=1e-3,
           momentum=0.99, name="bn")
    g.then("GlobalMaxPool", name="gmp").then("Flatten", name="gmp/flatten")
    got = report_json(g.save(tmp_path / "m.onnx"))
    summary = [(r["name"], r["type"], r["output"], r["params"], r["non_trainable"])
               for r in got["layers"]]
    assert summary == [
        ("cat.branch1.mp", "pool", [5, 5, 4], 0, 0),
        ("cat.branch2.ap", "pool", [5, 5, 4], 0, 0),
        ("cat.branch3.lp", "pool", [5, 5, 4], 0, 0),
        ("cat", "parallel", [5, 5, 12], 0, 0),
        ("lrn", "lrn", [5, 5, 12], 0, 0),
        ("up", "deconv", [10, 10, 6], 12 * 2 * 9 + 6, 0),
        ("bn", "batchnorm", [10, 10, 6], 12, 12),
        ("gmp", "global_pool", [6], 0, 0),
    ]
    text = cnn("shapes", tmp_path / "m.onnx", "-f", "yaml").stdout
    assert "convention: torch" in text and "momentum: 0.01" in text and "eps: 0.001" in text


def test_residual_scale_and_sum(tmp_path: Path):
    g = G(shape=("N", 4, 6, 6))
    x0 = g.x
    body = g.op("Conv", x0, g.const(np.zeros((4, 4, 3, 3))), pads=[1, 1, 1, 1],
                name="/r/conv/Conv")
    scaled = g.op("Mul", x0, g.const(0.2), name="/r/Mul")
    s = g.op("Add", body, scaled, name="/r/Add")
    g.x = g.op("Relu", s, name="/r/relu/Relu")
    x1 = g.x
    one = g.op("Relu", x1, name="/p/a/Relu")
    g.x = g.op("Sum", x1, one, name="/p/Sum")
    path = g.save(tmp_path / "m.onnx")
    got = report_json(path)
    summary = [(r["name"], r["type"], r["detail"]) for r in got["layers"]]
    assert summary == [("r.conv", "conv", "3x3/1, pad 1"),
                       ("r", "residual", "add, scale 0.2, relu"),
                       ("p.branch2.a", "relu", ""),
                       ("p", "parallel", "add")]
    assert "scale: 0.2\n" in cnn("shapes", path, "-f", "yaml").stdout


def test_unnamed_nodes_get_type_names(tmp_path: Path):
    g = G()
    g.conv(3, 2, name="").then("Relu", name="").then("Flatten", name="")
    got = report_json(g.save(tmp_path / "m.onnx"))
    assert [(r["name"], r["detail"]) for r in got["layers"]] == [
        ("conv1", "3x3/1, pad valid, relu"), ("flatten1", "")]


# -- what cannot be expressed ------------------------------------------------------------------


def _bad(tmp_path: Path, g: G, *needles: str, outputs=None) -> str:
    line = error_line(g.save(tmp_path / "bad.onnx", outputs))
    assert "bad.onnx" in line
    for needle in needles:
        assert needle in line, line
    return line


def test_unsupported_operator_names_node_and_type(tmp_path: Path):
    g = G().conv(3, 4, name="/stem/conv/Conv").then("HardSwish", name="/stem/act/HardSwish")
    _bad(tmp_path, g, "node '/stem/act/HardSwish' (HardSwish)", "no equivalent")


def test_squeeze_excitation_style_mul_is_refused(tmp_path: Path):
    g = G()
    x0 = g.x
    gate = g.op("Sigmoid", g.op("GlobalAveragePool", x0, name="se/pool"), name="se/gate")
    g.x = g.op("Mul", x0, gate, name="se/mul")
    _bad(tmp_path, g, "node 'se/mul' (Mul)", "combines 2 tensors")


@pytest.mark.parametrize("build, needles", [
    (lambda g: g.conv(3, 4, pads=[0, 0, 1, 1], name="pad"), ("node 'pad' (Conv)", "symmetric")),
    (lambda g: g.then("Clip", g.const(-1.0), g.const(1.0), name="clip"),
     ("node 'clip' (Clip)", "clips to [-1.0, 1.0]")),
    (lambda g: g.then("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="ap"),
     ("node 'ap' (AveragePool)", "count_include_pad=0")),
    (lambda g: g.then("LRN", size=4, name="lrn"), ("node 'lrn' (LRN)", "even size 4")),
    (lambda g: g.then("LpPool", kernel_shape=[2, 2], p=3, name="lp"), ("p = 3",)),
    (lambda g: g.then("Reshape", g.const([0, 3, 64], np.int64), name="rs"),
     ("node 'rs' (Reshape)", "flattens each image")),
    (lambda g: g.then("Mul", g.const(2.0), name="m").then("Relu"),
     ("node 'm' (Mul)",)),  # not right at the input: ... see test below
    (lambda g: g.then("Relu").then("Mul", g.const(2.0), name="m2"),
     ("node 'm2' (Mul)", "residual shortcut's scale")),
    (lambda g: g.then("Softmax", axis=2, name="sm"), ("node 'sm' (Softmax)", "axis 2")),
    (lambda g: g.then("MaxPool", kernel_shape=[2, 2], dilations=[2, 2], name="dil"),
     ("dilated pooling",)),
])
def test_inexpressible_nodes(tmp_path: Path, build, needles):
    g = G()
    build(g)
    if needles == ("node 'm' (Mul)",):  # a Mul right at the input is normalisation
        report = report_json(g.save(tmp_path / "ok.onnx"))
        assert [r["type"] for r in report["layers"]] == ["relu"]
        assert "preprocessing" in cnn("shapes", tmp_path / "ok.onnx", "-f", "yaml").stdout
        return
    _bad(tmp_path, g, *needles)


def test_graph_shape_errors(tmp_path: Path):
    g = G().then("Relu", name="a")
    first = g.x
    g.then("Tanh", name="b")
    _bad(tmp_path, g, "has 2 outputs", outputs=[first, g.x])
    g2 = G(shape=("N", 3 * 8 * 8))
    g2.then("Relu")
    _bad(tmp_path, g2, "has 2 dimensions")
    g3 = G()
    g3.then("Gemm", g3.const(np.zeros((3, 3))), alpha=2.0, name="scaled")
    _bad(tmp_path, g3, "node 'scaled' (Gemm)")


def test_not_an_onnx_file(tmp_path: Path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    assert "junk.onnx: not a readable ONNX model" in error_line(junk)
    assert "missing.onnx: no such file" in error_line(tmp_path / "missing.onnx")
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    assert "is a directory" in error_line(folder)


def test_spec_errors_name_the_onnx_file(tmp_path: Path):
    g = G(shape=("N", 3, 4, 4)).then("MaxPool", kernel_shape=[3, 3], pads=[2, 2, 2, 2],
                                     name="/features/pool/MaxPool")
    line = _bad(tmp_path, g, "layer 'features.pool'", "padding 2 must be at most half")
    assert line.startswith("error: " + str(tmp_path / "bad.onnx"))


# -- lazy imports --------------------------------------------------------------------------------


def test_help_and_yaml_shapes_do_not_import_onnx():
    spec = ROOT / "architectures" / "lenet5.yaml"
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import cnncli.cli.main\n"
        "from cnncli.cli.app import app\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "assert r.invoke(app, ['export', '--help']).exit_code == 0\n"
        f"assert r.invoke(app, ['shapes', {str(spec)!r}]).exit_code == 0\n"
        f"assert r.invoke(app, ['shapes', {str(spec)!r}, '-f', 'yaml']).exit_code == 0\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_onnx_missing_is_a_clear_error(tmp_path: Path):
    code = (
        "import sys\n"
        "sys.modules['onnx'] = None\n"  # as if it were not installed
        "from typer.testing import CliRunner\n"
        "import cnncli.cli.main\n"
        "from cnncli.cli.app import app\n"
        f"r = CliRunner().invoke(app, ['shapes', {str(DATA / 'lenet5_torch.onnx')!r}])\n"
        "print(r.exit_code, r.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.startswith("2 error: ONNX support needs the onnx package"), proc.stdout
    assert 'pip install -e ".[onnx]"' in proc.stdout
