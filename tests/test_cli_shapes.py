"""``cnn shapes``, ``cnn layers`` and ``cnn calc`` through the command line (CliRunner).

Data goes to stdout, warnings and errors to stderr; a bad spec exits with code 2 and one
line naming file, line and layer, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands on the app)
from cnncli.cli.app import app
from cnncli.layers.registry import layer_types

SPECS = Path(__file__).parent / "data" / "specs"
LENET = SPECS / "lenet5.yaml"

runner = CliRunner()


def cnn(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def ok(*args: str, input: str | None = None):
    result = cnn(*args, input=input)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def bad(*args: str, input: str | None = None) -> str:
    """Run a command that must fail cleanly; return its one stderr line."""
    result = cnn(*args, input=input)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "net.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# -- cnn shapes: formats -------------------------------------------------------------------------


def test_table_is_the_default():
    out = ok("shapes", str(LENET)).stdout
    assert "LeNet-5" in out and "(input 32 x 32 x 1)" in out
    for name in ("C1", "S2", "C3", "S4", "C5", "flatten1", "F6", "output"):
        assert name in out
    assert "28 x 28 x 6" in out and "48,120" in out
    assert "Total params: 61,706 (trainable 61,706, non-trainable 0)" in out
    assert "Multiply-adds: 416,520" in out and "FLOPs: 833,040" in out
    assert "1 MAC = 2 FLOPs" in out


def test_json_format_parses():
    report = json.loads(ok("shapes", str(LENET), "--format", "json").stdout)
    assert report["name"] == "LeNet-5"
    assert report["input"] == [32, 32, 1]
    assert [r["name"] for r in report["layers"]][:2] == ["C1", "S2"]
    assert report["layers"][0]["params"] == 156
    assert report["totals"]["trainable_params"] == 61_706
    assert report["totals"]["macs"] == 416_520
    assert report["totals"]["flops"] == 833_040
    assert report["warnings"] == []


def test_csv_format():
    out = ok("shapes", str(LENET), "-f", "csv").stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == [
        "name",
        "type",
        "detail",
        "output",
        "params",
        "weights",
        "biases",
        "non_trainable",
        "macs",
        "receptive_field",
        "jump",
    ]
    assert len(rows) == 1 + 8
    c1 = dict(zip(rows[0], rows[1]))
    assert c1["name"] == "C1" and c1["output"] == "28x28x6" and c1["params"] == "156"
    assert c1["receptive_field"] == "5" and c1["jump"] == "1"
    f6 = dict(zip(rows[0], rows[7]))
    assert f6["output"] == "84" and f6["receptive_field"] == "" and f6["macs"] == "10080"


def test_markdown_format():
    out = ok("shapes", str(LENET), "--format", "markdown").stdout
    lines = out.splitlines()
    assert lines[0] == "## LeNet-5: input 32 x 32 x 1"
    assert "| layer | type | detail | output | params | MACs | RF | jump |" in lines
    table = [ln for ln in lines if ln.startswith("| ")]
    assert len(table) == 2 + 8  # header, separator, one row per layer
    assert "| C1 | conv | 5x5/1, pad valid, tanh | 28 x 28 x 6 | 156 | 117,600 | 5 | 1 |" in lines
    assert all(ln.count("|") == 9 for ln in table)
    assert "- Total params: 61,706 (trainable 61,706, non-trainable 0)" in lines


def test_explain():
    out = ok("shapes", str(LENET), "--explain").stdout
    assert "H2 = W2 = floor((32 + 2*0 - 5)/1) + 1 = 28" in out
    assert "5*5*1*6 + 6 = 156" in out
    assert "H2 = W2 = floor((28 + 2*0 - 2)/2) + 1 = 14" in out
    assert "receptive field 32, jump 4" in out


def test_explain_shows_both_axes_when_they_differ(tmp_path):
    spec = write(tmp_path, "input: [32, 30, 3]\nlayers:\n  - conv: {filters: 6, kernel: 5}\n")
    out = ok("shapes", spec, "-e").stdout
    assert "H2 = floor((32 + 2*0 - 5)/1) + 1 = 28" in out
    assert "W2 = floor((30 + 2*0 - 5)/1) + 1 = 26" in out


def test_stdin():
    report = json.loads(ok("shapes", "-", "-f", "json", input=LENET.read_text()).stdout)
    assert report["totals"]["trainable_params"] == 61_706
    line = bad("shapes", "-", input="input: [8, 8, 1]\nlayers:\n  - covn: {filters: 1}\n")
    assert line.startswith("error: <stdin>:3:")
    assert "did you mean 'conv'" in line


def test_input_override():
    report = json.loads(ok("shapes", str(LENET), "--input", "36x36x1", "-f", "json").stdout)
    assert report["input"] == [36, 36, 1]
    assert report["layers"][0]["output"] == [32, 32, 6]
    report = json.loads(ok("shapes", str(LENET), "-i", "64,64,3", "-f", "json").stdout)
    assert report["layers"][0]["params"] == 5 * 5 * 3 * 6 + 6


def test_input_override_replaces_a_missing_input(tmp_path):
    spec = write(tmp_path, "name: x\nlayers:\n  - conv: {filters: 4, kernel: 3}\n")
    assert "missing 'input" in bad("shapes", spec)
    report = json.loads(ok("shapes", spec, "--input", "8x8x1", "-f", "json").stdout)
    assert report["output"] == [6, 6, 4]


@pytest.mark.parametrize("value", ["32x32", "0x32x1", "axbxc"])
def test_bad_input_override(value):
    assert "HxWxC" in bad("shapes", str(LENET), "--input", value)


def test_batch():
    report = json.loads(ok("shapes", str(LENET), "--batch", "64", "-f", "json").stdout)
    t = report["totals"]
    assert t["batch"] == 64
    assert t["activation_bytes_batch"] == 64 * t["activation_bytes_per_image"]
    out = ok("shapes", str(LENET), "-b", "64").stdout
    assert "for batch 64" in out
    assert cnn("shapes", str(LENET), "--batch", "0").exit_code == 2


# -- cnn shapes: warnings and errors --------------------------------------------------------------

WARNS = """\
name: warns
input: [32, 32, 3]
layers:
  - conv: {name: c, filters: 6, kernel: 5, stride: 2}
  - dense: {name: fc, units: 10}
"""


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "markdown"])
def test_warnings_go_to_stderr_not_stdout(tmp_path, fmt):
    spec = write(tmp_path, WARNS)
    result = ok("shapes", spec, "-f", fmt)
    assert "warning:" not in result.stdout
    if fmt != "json":  # JSON carries them as data, in "warnings"
        assert "not divisible" not in result.stdout
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"warning: {spec}:4: layer 'c':")
    assert "the last 1 row and column" in warnings[0]
    assert warnings[1].startswith(f"warning: {spec}:5: layer 'fc':")
    assert "flattened implicitly" in warnings[1]
    if fmt == "json":
        report = json.loads(result.stdout)
        assert len(report["warnings"]) == 2


BAD_SPECS = {
    "syntax": ("input: [32, 32, 3]\nlayers:\n  - conv: {filters: 6, kernel: 5]\n", ":3:", None),
    "unknown-type": (
        "input: [32, 32, 3]\nlayers:\n  - relu\n  - covn: {filters: 6}\n",
        ":4:",
        "did you mean 'conv'",
    ),
    "unknown-param": (
        "input: [32, 32, 3]\nlayers:\n  - conv:\n      filters: 6\n      kernal: 5\n",
        ":5: layer 'conv1':",
        "did you mean 'kernel'",
    ),
    "missing-input": ("name: x\nlayers: [relu]\n", ":", "missing 'input"),
    "non-positive": (
        "input: [32, 32, 3]\nlayers:\n  - conv: {name: C1, filters: 0, kernel: 5}\n",
        ":3: layer 'C1':",
        "positive integer",
    ),
    "kernel-too-big": (
        "input: [4, 4, 3]\nlayers:\n  - conv: {filters: 6, kernel: 7, padding: 1}\n",
        ":3: layer 'conv1':",
        "4 + 2*1 = 6 < 7",
    ),
    "same-even": (
        "input: [8, 8, 3]\nlayers:\n  - conv: {filters: 6, kernel: 4, padding: same}\n",
        ":3: layer 'conv1':",
        "odd kernel",
    ),
    "add-mismatch": (
        "input: [8, 8, 3]\nlayers:\n  - residual: {body: [conv: {filters: 4, kernel: 1}]}\n",
        ":3: layer 'residual1':",
        "cannot add",
    ),
    "groups": (
        "input: [8, 8, 3]\nlayers:\n  - conv: {filters: 6, kernel: 1, groups: 2}\n",
        ":3: layer 'conv1':",
        "groups=2 must divide",
    ),
    "duplicate": (
        "input: [8, 8, 3]\nlayers:\n  - relu: {name: a}\n  - relu: {name: a}\n",
        ":4: layer 'a':",
        "duplicate layer name",
    ),
    "empty": ("", ":", "empty spec"),
    "not-a-mapping": ("- relu\n", ":1:", "must be a mapping"),
    "top-level-key": ("input: [8, 8, 1]\nlayer: [relu]\n", ":2:", "did you mean 'layers'"),
    "alias-bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcdefg", "bcdefgh")
        ),
        ":",
        "alias bomb",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_exits_2_with_one_line_on_stderr(tmp_path, case):
    text, where, fragment = BAD_SPECS[case]
    spec = write(tmp_path, text)
    line = bad("shapes", spec, "-f", "json")
    assert line.startswith(f"error: {spec}{where}"), line
    if fragment:
        assert fragment in line


def test_missing_file():
    line = bad("shapes", "no/such/spec.yaml")
    assert line == "error: no/such/spec.yaml: no such file"


def test_unknown_tag_is_one_line(tmp_path):
    spec = write(tmp_path, "input: [8, 8, 1]\nlayers:\n  - !!python/name:os.system\n")
    assert bad("shapes", spec).startswith(f"error: {spec}:3:")


def test_deeply_nested_yaml_exits_2(tmp_path):
    spec = write(tmp_path, "input: [8, 8, 1]\nlayers: " + "[" * 3000 + "]" * 3000 + "\n")
    bad("shapes", spec)


# -- cnn layers -----------------------------------------------------------------------------------


def test_layers_table_lists_every_registered_type():
    out = ok("layers").stdout
    for name, cls in layer_types().items():
        assert f"{name}: " in out, name
        for p in cls.params_spec:
            assert p.name in out


def test_layers_json_is_generated_from_the_registry():
    vocab = json.loads(ok("layers", "--format", "json").stdout)
    types = layer_types()
    assert [e["type"] for e in vocab] == list(types)
    for entry in vocab:
        cls = types[entry["type"]]
        assert [p["name"] for p in entry["params"]] == [p.name for p in cls.params_spec]
        assert entry["doc"] == cls.doc
        for p, spec in zip(entry["params"], cls.params_spec):
            assert (p["default"] == "required") == spec.required
    conv = next(e for e in vocab if e["type"] == "conv")
    defaults = {p["name"]: p["default"] for p in conv["params"]}
    assert defaults == {
        "filters": "required",
        "kernel": "required",
        "stride": "1",
        "padding": "valid",
        "dilation": "1",
        "groups": "1",
        "bias": "true",
        "activation": "-",
    }


def test_layers_markdown_has_a_section_per_type():
    out = ok("layers", "--format", "markdown").stdout
    for name in layer_types():
        assert f"### `{name}`" in out
    assert "| `filters` | int > 0 | required | number of filters K (output channels) |" in out


def test_documented_vocabulary_is_registered():
    documented = {
        "conv",
        "deconv",
        "pool",
        "global_pool",
        "flatten",
        "dense",
        "dropout",
        "batchnorm",
        "lrn",
        "relu",
        "relu6",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "elu",
        "softmax",
        "residual",
        "parallel",
        "repeat",
        "sequential",
    }
    assert documented <= set(layer_types())


def test_layers_markdown_rows_have_four_cells():
    out = ok("layers", "--format", "markdown").stdout
    for line in out.splitlines():
        if line.startswith("| "):
            cells = line.replace("\\|", "").count("|") - 1
            assert cells == 4, line


def test_layers_csv_is_csv():
    out = ok("layers", "--format", "csv").stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:2] == ["type", "parameter"] or "type" in rows[0]
    assert not out.startswith("###")


# -- cnn calc -------------------------------------------------------------------------------------


def test_calc_conv_worked_example():
    out = ok(
        "calc",
        "conv",
        "--input",
        "32x32x3",
        "--filters",
        "6",
        "--kernel",
        "5",
        "--stride",
        "1",
        "--padding",
        "valid",
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("conv: 32 x 32 x 3 -> 28 x 28 x 6")
    assert "  H2 = W2 = floor((32 + 2*0 - 5)/1) + 1 = 28" in lines
    assert "  params = 5*5*3*6 + 6 = 456" in lines


@pytest.mark.parametrize(
    ("args", "head"),
    [
        (
            ["conv", "-i", "32x32x3", "--filters", "6", "--kernel", "5", "--stride", "2"],
            "14 x 14 x 6",
        ),
        (
            ["conv", "-i", "32x32x3", "--filters", "6", "--kernel", "5", "--padding", "same"],
            "32 x 32 x 6",
        ),
        (
            ["conv", "-i", "32x32x3", "--filters", "6", "--kernel", "5", "--padding", "full"],
            "36 x 36 x 6",
        ),
        (
            ["conv", "-i", "9x9x4", "--filters", "8", "--kernel", "3", "--dilation", "2"],
            "5 x 5 x 8",
        ),
        (
            ["conv", "-i", "9x9x4", "--filters", "8", "--groups", "4", "--kernel", "3x1"],
            "7 x 9 x 8",
        ),
        (["pool", "-i", "7x7x1", "--kernel", "3", "--stride", "1"], "5 x 5 x 1"),
        (["pool", "-i", "7x7x1", "--kernel", "3", "--stride", "2"], "3 x 3 x 1"),
        (["pool", "-i", "28x28x6", "--kernel", "2", "--type", "avg"], "14 x 14 x 6"),
        (["pool", "-i", "6x6x1", "--kernel", "3", "--stride", "2", "--ceil"], "3 x 3 x 1"),
        (
            ["deconv", "-i", "14x14x6", "--filters", "3", "--kernel", "5", "--stride", "2"]
            + ["--output-padding", "1"],
            "32 x 32 x 3",
        ),
        (["deconv", "-i", "5x5x1", "--filters", "1", "--kernel", "3"], "7 x 7 x 1"),
    ],
)
def test_calc(args, head):
    out = ok("calc", *args).stdout
    first = out.splitlines()[0]
    assert first.startswith(f"{args[0]}: ")
    assert f"-> {head}" in first


def test_calc_warning_on_stderr():
    result = ok("calc", "conv", "-i", "32x32x3", "--filters", "6", "--kernel", "5", "--stride", "2")
    assert "not divisible by stride 2" in result.stderr
    assert "not divisible" not in result.stdout


def test_calc_json():
    out = ok("calc", "pool", "-i", "7x7x1", "--kernel", "3", "--stride", "2", "-f", "json").stdout
    report = json.loads(out)
    assert report["layers"][0]["output"] == [3, 3, 1]
    assert report["layers"][0]["type"] == "pool"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["conv", "-i", "32x32x3", "--kernel", "5"], "conv needs --filters"),
        (["foo", "-i", "32x32x3"], "calc knows conv, deconv and pool"),
        (["conv", "-i", "32x32", "--filters", "1"], "HxWxC"),
        (["conv", "-i", "4x4x1", "--filters", "1", "--kernel", "7"], "4 + 2*0 = 4 < 7"),
        (["conv", "-i", "8x8x1", "--filters", "1", "--kernel", "4", "--padding", "same"], "odd"),
        (["conv", "-i", "8x8x3", "--filters", "4", "--groups", "2"], "groups=2 must divide"),
        (["conv", "-i", "8x8x1", "--filters", "1", "--kernel", "x"], "--kernel must be"),
    ],
)
def test_calc_errors(args, fragment):
    assert fragment in bad("calc", *args)


# -- no heavy imports for the shape commands -------------------------------------------------------


def test_shapes_and_help_do_not_import_numpy():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import cnncli.cli.main\n"
        "from cnncli.cli.app import app\n"
        "r = CliRunner()\n"
        f"assert r.invoke(app, ['shapes', {str(LENET)!r}, '--explain']).exit_code == 0\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "assert r.invoke(app, ['layers']).exit_code == 0\n"
        "heavy = [m for m in ('numpy', 'numba', 'PIL', 'torch') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
