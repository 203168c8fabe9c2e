"""The spec loader: sources, defaults, names, YAML features and every bad-input case.

Each error test checks the three things a user needs to find the problem: the file, the YAML
line (1-based, as an editor shows it) and the layer, all in the one-line message.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from cnncli.errors import ExitCode, SpecError
from cnncli.spec import Network, Spec, load_spec, parse_hwc, parse_spec, resolve

FILE = "net.yaml"

LENET = """\
name: LeNet-5
input: [32, 32, 1]                 # height, width, channels
layers:
  - conv: {name: C1, filters: 6, kernel: 5, activation: tanh}
  - pool: {name: S2, type: avg, size: 2}
  - conv: {name: C3, filters: 16, kernel: 5, activation: tanh}
  - pool: {name: S4, type: avg, size: 2}
  - conv: {name: C5, filters: 120, kernel: 5, activation: tanh}
  - flatten
  - dense: {name: F6, units: 84, activation: tanh}
  - dense: {name: output, units: 10, activation: softmax}
"""

LENET_NAMES = ["C1", "S2", "C3", "S4", "C5", "flatten1", "F6", "output"]


def y(text: str) -> str:
    """Dedent a YAML literal; its first line is line 1."""
    return textwrap.dedent(text).lstrip("\n")


def net(text: str, **kw) -> Network:
    return resolve(parse_spec(y(text), file=FILE, **kw))


def names(text: str) -> list[str]:
    return [n.path for n in net(text).rows()]


def fail(text: str, *, file: str = FILE) -> SpecError:
    """The SpecError that loading + resolving ``text`` raises."""
    with pytest.raises(SpecError) as info:
        resolve(parse_spec(y(text), file=file))
    return info.value


def located(exc: SpecError, line: int | None, layer: str | None = None, file: str = FILE) -> str:
    """Assert the error names file, line and layer, in the message and as attributes."""
    msg = str(exc)
    assert "\n" not in msg
    assert exc.file == file
    assert exc.line == line, msg
    prefix = f"{file}:{line}:" if line is not None else f"{file}:"
    assert msg.startswith(prefix), msg
    if layer is not None:
        assert exc.layer == layer, msg
        assert f"layer '{layer}'" in msg
    assert exc.exit_code == ExitCode.BAD_INPUT == 2
    return msg


# -- sources -----------------------------------------------------------------------------------


def _check_lenet(spec: Spec) -> None:
    assert spec.name == "LeNet-5"
    assert spec.input == (32, 32, 1)
    assert [layer.name for layer in spec.layers] == LENET_NAMES
    assert resolve(spec).output == (10,)


def test_load_from_path_str_and_path_object(tmp_path):
    p = tmp_path / "lenet.yaml"
    p.write_text(LENET)
    for source in (p, str(p)):
        spec = load_spec(source)
        _check_lenet(spec)
        assert spec.file == str(p)
        assert spec.text == LENET


def test_load_from_yaml_text():
    spec = load_spec(LENET)
    _check_lenet(spec)
    assert spec.file is None


def test_load_from_single_line_yaml_text():
    spec = load_spec("{name: tiny, input: [8, 8, 1], layers: [flatten]}")
    assert spec.name == "tiny"
    assert resolve(spec).output == (64,)


def test_load_from_dict_does_not_mutate_it():
    data = {
        "name": "LeNet-5",
        "input": [32, 32, 1],
        "layers": [
            {"conv": {"name": "C1", "filters": 6, "kernel": 5, "activation": "tanh"}},
            {"pool": {"name": "S2", "type": "avg", "size": 2}},
            {"conv": {"name": "C3", "filters": 16, "kernel": 5, "activation": "tanh"}},
            {"pool": {"name": "S4", "type": "avg", "size": 2}},
            {"conv": {"name": "C5", "filters": 120, "kernel": 5, "activation": "tanh"}},
            "flatten",
            {"dense": {"name": "F6", "units": 84, "activation": "tanh"}},
            {"dense": {"name": "output", "units": 10, "activation": "softmax"}},
        ],
    }
    import copy

    before = copy.deepcopy(data)
    _check_lenet(load_spec(data))
    _check_lenet(load_spec(data))  # loading twice gives the same network
    assert data == before


def test_dict_errors_have_no_file_or_line():
    with pytest.raises(SpecError) as info:
        load_spec({"input": [8, 8, 1], "layers": [{"conv": {"filters": 2}}]})
    assert info.value.file is None and info.value.line is None
    assert str(info.value).startswith("<spec>: layer 'conv1':")
    assert "missing required parameter 'kernel'" in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpecError, match="no such file") as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.file == str(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="directory"):
        load_spec(tmp_path)


def test_input_override_and_missing_input_with_override():
    spec = load_spec(LENET, input_shape=(28, 28, 1))
    assert spec.input == (28, 28, 1)
    text = "name: x\nlayers: [flatten]\n"
    assert resolve(parse_spec(text, input_shape=(4, 5, 2))).output == (40,)
    # resolve() can also take another input size for the same spec
    assert resolve(load_spec(LENET), (36, 36, 1)).nodes[0].out_shape == (32, 32, 6)


def test_input_forms():
    assert parse_spec("input: [8, 9]\nlayers: [relu]").input == (8, 9, 1)
    assert parse_spec("input: 8x9x3\nlayers: [relu]").input == (8, 9, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32x32x3", (32, 32, 3)), ("32,32,3", (32, 32, 3)), ("224X224X3", (224, 224, 3))],
)
def test_parse_hwc(text, expected):
    assert parse_hwc(text) == expected


@pytest.mark.parametrize("text", ["32x32", "0x32x3", "axbxc", "32x32x3x1", "-1x2x3", ""])
def test_parse_hwc_rejects(text):
    with pytest.raises(SpecError, match="HxWxC"):
        parse_hwc(text)


# -- defaults ----------------------------------------------------------------------------------


def test_defaults_of_every_documented_layer():
    spec = parse_spec(
        y(
            """
            input: [32, 32, 8]
            layers:
              - conv: {filters: 8, kernel: 3}
              - deconv: {filters: 8, kernel: 3}
              - pool
              - batchnorm
              - lrn
              - dropout
              - leaky_relu
              - elu
              - residual: {body: [relu]}
              - parallel: {branches: [[relu], []]}
              - global_pool
            """
        )
    )
    assert spec.name == "network"
    by = {layer.type: layer.cfg for layer in spec.layers}
    assert by["conv"] == {
        "filters": 8,
        "kernel": (3, 3),
        "stride": (1, 1),
        "padding": "valid",
        "dilation": (1, 1),
        "groups": 1,
        "bias": True,
        "activation": None,
    }
    d = by["deconv"]
    assert (d["stride"], d["padding"], d["output_padding"], d["groups"], d["bias"]) == (
        (1, 1),
        (0, 0),
        (0, 0),
        1,
        True,
    )
    p = by["pool"]
    assert (p["type"], p["size"], p["stride"], p["padding"], p["ceil"], p["over"]) == (
        "max",
        (2, 2),
        (2, 2),  # stride defaults to the window size
        (0, 0),
        False,
        "space",
    )
    assert by["batchnorm"] == {"momentum": 0.1, "eps": 1e-5}
    assert by["lrn"]["size"] == 5
    assert (by["lrn"]["alpha"], by["lrn"]["beta"], by["lrn"]["k"]) == (1e-4, 0.75, 2.0)
    assert by["dropout"] == {"rate": 0.5}
    assert by["leaky_relu"] == {"slope": 0.01}
    assert by["elu"] == {"alpha": 1.0}
    assert by["residual"]["scale"] == 1.0
    assert by["residual"]["activation"] == ("relu", {})
    assert by["residual"]["shortcut"] == []
    assert by["parallel"]["merge"] == "concat"
    assert by["global_pool"]["type"] == "avg"


def test_pool_stride_follows_non_square_size():
    spec = parse_spec("input: [8, 9, 1]\nlayers: [pool: {size: [2, 3]}]")
    assert spec.layers[0].cfg["stride"] == (2, 3)
    assert resolve(spec).output == (4, 3, 1)


def test_padding_aliases_and_pairs():
    spec = parse_spec(
        y(
            """
            input: [32, 32, 3]
            layers:
              - conv: {filters: 4, kernel: 5, padding: half}
              - conv: {filters: 4, kernel: [3, 5], padding: [1, 2]}
              - conv: {filters: 4, kernel: 3, padding: FULL}
            """
        )
    )
    assert [layer.cfg["padding"] for layer in spec.layers] == ["same", (1, 2), "full"]
    assert resolve(spec).output == (34, 34, 4)


def test_activation_forms():
    spec = parse_spec(
        y(
            """
            input: [8, 8, 1]
            layers:
              - conv: {filters: 2, kernel: 3, activation: none}
              - conv: {filters: 2, kernel: 3, activation: {leaky_relu: {slope: 0.2}}}
              - conv: {filters: 2, kernel: 1, activation: ELU}
              - leaky_relu: {slope: 0.3}
            """
        )
    )
    acts = [layer.cfg.get("activation") for layer in spec.layers[:3]]
    assert acts == [None, ("leaky_relu", {"slope": 0.2}), ("elu", {"alpha": 1.0})]
    assert spec.layers[3].cfg == {"slope": 0.3}


def test_training_and_description_top_level_keys_are_accepted():
    spec = parse_spec("description: d\ntraining: {epochs: 2}\ninput: [4, 4, 1]\nlayers: [relu]")
    assert spec.training == {"epochs": 2}


# -- names -------------------------------------------------------------------------------------


def test_default_names_count_per_type():
    got = names(
        """
        input: [32, 32, 3]
        layers:
          - conv: {filters: 4, kernel: 3}
          - relu
          - conv: {filters: 4, kernel: 3}
          - pool
          - conv: {name: mine, filters: 4, kernel: 3}
          - conv: {filters: 4, kernel: 3}
          - relu
          - flatten
          - dense: {units: 3}
        """
    )
    assert got == [
        "conv1",
        "relu1",
        "conv2",
        "pool1",
        "mine",
        "conv3",
        "relu2",
        "flatten1",
        "dense1",
    ]


def test_lenet_names():
    assert [n.path for n in resolve(load_spec(LENET)).rows()] == LENET_NAMES


NESTED = """
input: [32, 32, 8]
layers:
  - sequential:
      name: layer2
      layers:
        - repeat:
            times: 2
            layers:
              - conv: {filters: 8, kernel: 3, padding: same}
              - conv: {filters: 8, kernel: 3, padding: same}
        - residual:
            name: res
            body:
              - conv: {filters: 8, kernel: 3, padding: same}
            shortcut:
              - conv: {filters: 8, kernel: 1}
        - repeat:
            name: r
            times: 2
            layers:
              - conv: {filters: 8, kernel: 3, padding: same}
        - parallel:
            name: mix
            branches:
              - [conv: {filters: 2, kernel: 1}]
              - []
              - [pool: {size: 3, stride: 1, padding: 1}]
  - conv: {filters: 4, kernel: 1}
"""


def test_nested_dotted_names():
    assert names(NESTED) == [
        "layer2.repeat1.0.conv1",
        "layer2.repeat1.0.conv2",
        "layer2.repeat1.1.conv1",
        "layer2.repeat1.1.conv2",
        "layer2.res.conv1",
        "layer2.res.shortcut.conv1",
        "layer2.res",
        "layer2.r.0",  # a repeat of one layer names each copy by its index
        "layer2.r.1",
        "layer2.mix.branch1.conv1",
        "layer2.mix.branch3.pool1",
        "layer2.mix",
        "conv1",  # counters are per scope: the top level has its own conv1
    ]
    assert net(NESTED).output == (32, 32, 4)


def test_resnet_style_names():
    got = names(
        """
        input: [8, 8, 4]
        layers:
          - repeat:
              name: layer2
              times: 2
              layers:
                - residual:
                    name: block
                    body:
                      - conv: {name: conv1, filters: 4, kernel: 3, padding: same}
                      - batchnorm: {name: bn1}
        """
    )
    assert got == [
        # one layer per copy: the copy is named by its index, as torchvision's layer2.0.conv1
        "layer2.0.conv1",
        "layer2.0.bn1",
        "layer2.0",
        "layer2.1.conv1",
        "layer2.1.bn1",
        "layer2.1",
    ]


def test_same_name_in_different_scopes_is_fine():
    got = names(
        """
        input: [8, 8, 4]
        layers:
          - conv: {name: a, filters: 4, kernel: 1}
          - sequential: {name: s, layers: [conv: {name: a, filters: 4, kernel: 1}]}
        """
    )
    assert got == ["a", "s.a"]


# -- YAML anchors, aliases and merges ------------------------------------------------------------


def test_anchor_alias_and_merge_with_override():
    spec = parse_spec(
        y(
            """
            input: [32, 32, 3]
            layers:
              - conv: &c3 {filters: 16, kernel: 3, padding: same, activation: relu}
              - conv: *c3
              - conv: {<<: *c3, filters: 32, name: wide}
              - pool
            """
        )
    )
    convs = [layer for layer in spec.layers if layer.type == "conv"]
    assert [c.name for c in convs] == ["conv1", "conv2", "wide"]
    assert [c.filters for c in convs] == [16, 16, 32]
    assert all(c.cfg["padding"] == "same" and c.cfg["activation"] == ("relu", {}) for c in convs)
    assert resolve(spec).output == (16, 16, 32)


def test_merge_list_precedence():
    spec = parse_spec(
        y(
            """
            input: [32, 32, 3]
            layers:
              - conv: &a {filters: 8, kernel: 3}
              - conv: &b {filters: 4, kernel: 5, stride: 2}
              - conv: {<<: [*a, *b], name: m}
            """
        )
    )
    m = spec.layers[2]
    # earlier mappings in the merge list win, explicit keys win over all
    assert (m.filters, m.kernel, m.stride) == (8, (3, 3), (2, 2))


def test_anchored_layer_list_reused():
    got = names(
        """
        input: [16, 16, 4]
        layers:
          - sequential:
              name: a
              layers: &stage
                - conv: {filters: 4, kernel: 3, padding: same}
                - relu
          - sequential: {name: b, layers: *stage}
        """
    )
    assert got == ["a.conv1", "a.relu1", "b.conv1", "b.relu1"]


def test_aliased_named_layer_is_a_duplicate():
    e = fail(
        """
        input: [16, 16, 4]
        layers:
          - conv: &c {name: c, filters: 4, kernel: 3}
          - conv: *c
        """
    )
    located(e, 4, "c")
    assert "duplicate layer name 'c' (first used on line 3)" in str(e)


# -- bad input: YAML syntax ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (  # wrong closing bracket
            """
            input: [32, 32, 3]
            layers:
              - conv: {filters: 6, kernel: 5]
              - relu
            """,
            3,
        ),
        (  # a tab cannot start a token
            "input: [32, 32, 3]\nlayers:\n\t- relu\n",
            3,
        ),
        (  # bad indentation of a later item
            """
            input: [32, 32, 3]
            layers:
              - conv: {filters: 6, kernel: 5}
               - relu
              - relu
            """,
            4,
        ),
    ],
    ids=["bracket", "tab", "indent"],
)
def test_yaml_syntax_error(text, line):
    msg = located(fail(text), line)
    assert "YAML syntax error" in msg


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            """
            input: [32, 32, 3]
            layers:
              - conv: {filters: 6, kernel: 5}
              - pool: {size: 2
              - relu
              - relu
            """,
            4,
        ),
        ('name: "LeNet\ninput: [32, 32, 3]\nlayers:\n  - relu\n', 1),
    ],
    ids=["unclosed-brace", "unclosed-quote"],
)
def test_yaml_unclosed_error_points_at_the_opening_line(text, line):
    e = fail(text)
    n_lines = len(y(text).splitlines())
    assert e.line is not None and e.line <= n_lines, f"line {e.line} of a {n_lines}-line file"
    located(e, line)


def test_yaml_duplicate_key_is_an_error():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - conv: {filters: 6, kernel: 5, filters: 3}
        """
    )
    assert "duplicate key 'filters'" in located(e, 3)


def test_yaml_python_tags_never_run_code():
    # no python/* constructor runs; the tagged sequence is not a valid layer entry either
    e = fail("input: [8, 8, 1]\nlayers:\n  - !!python/object/apply:os.system ['false']\n")
    assert e.line == 3


def test_unknown_scalar_tag_is_a_one_line_error():
    e = fail("input: [8, 8, 1]\nlayers:\n  - !!python/name:os.system\n")
    located(e, 3)


@pytest.mark.parametrize(
    "text",
    [
        "input: !!python/tuple [8, 8, 1]\nlayers: [relu]\n",
        "input: [8, 8, 1]\nlayers:\n  - conv: !!python/object/new:os.system"
        " {filters: 1, kernel: 1}\n",
    ],
    ids=["tuple", "object-new"],
)
def test_unsafe_collection_tags_are_rejected_like_safe_load(text):
    import yaml

    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    fail(text)


# -- bad input: layer types and parameters -------------------------------------------------------


def test_unknown_layer_type_suggests_closest():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - conv: {filters: 6, kernel: 5}
          - covn: {filters: 6, kernel: 5}
        """
    )
    msg = located(e, 4)
    assert "unknown layer type 'covn' (did you mean 'conv'?)" in msg


@pytest.mark.parametrize(("typo", "right"), [("maxpool", "pool"), ("batchnrom", "batchnorm")])
def test_unknown_bare_layer_type_suggests_closest(typo, right):
    e = fail(f"input: [8, 8, 1]\nlayers:\n  - relu\n  - {typo}\n")
    assert f"unknown layer type '{typo}' (did you mean '{right}'?)" in located(e, 4)


def test_unknown_layer_type_names_the_layer():
    e = fail("input: [8, 8, 1]\nlayers:\n  - covn: {name: C1, filters: 6, kernel: 5}\n")
    located(e, 3, "C1")


def test_unknown_parameter_flow_style():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - conv: {name: C1, filters: 6, kernel: 5, strides: 2}
        """
    )
    msg = located(e, 3, "C1")
    assert "unknown parameter 'strides' (did you mean 'stride'?)" in msg
    assert "parameters: filters, kernel, stride, padding" in msg


def test_unknown_parameter_block_style_points_at_the_key():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - conv: {filters: 6, kernel: 5}
          - conv:
              filters: 6
              kernal: 5
        """
    )
    assert "unknown parameter 'kernal' (did you mean 'kernel'?)" in located(e, 6, "conv2")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ("stride: '2'", "'stride' must be a positive integer, got '2'"),
        ("activation: rleu", "got 'rleu' (did you mean 'relu'?)"),
        ("padding: sme", "'padding' must be valid, same (half), full"),
        ("bias: 'yes'", "'bias' must be true or false"),
        ("dilation: [1, 1, 1]", "'dilation' must be an integer or [height, width]"),
        ("activation: {leaky_relu: {slop: 0.1}}", "no parameter 'slop' (did you mean 'slope'?)"),
    ],
)
def test_mistyped_parameter_values(params, fragment):
    e = fail(
        f"""
        input: [32, 32, 3]
        layers:
          - relu
          - conv:
              name: C1
              filters: 6
              kernel: 3
              {params}
        """
    )
    msg = located(e, 8, "C1")
    assert "(conv)" in msg
    assert fragment in msg


def test_mistyped_pool_type_suggests():
    e = fail("input: [8, 8, 1]\nlayers:\n  - pool: {type: maxx}\n")
    assert "'type' must be one of max, avg, l2; got 'maxx' (did you mean 'max'?)" in located(
        e, 3, "pool1"
    )


def test_missing_required_parameter():
    e = fail("input: [8, 8, 1]\nlayers:\n  - relu\n  - conv: {kernel: 3}\n")
    assert "missing required parameter 'filters'" in located(e, 4, "conv1")


def test_layer_entry_shapes():
    e = fail("input: [8, 8, 1]\nlayers:\n  - conv: {filters: 1, kernel: 1}\n    kernel: 3\n")
    assert "one-key mapping" in located(e, 3)
    e = fail("input: [8, 8, 1]\nlayers:\n  - relu\n  - conv: 3\n")
    assert "parameters of 'conv' must be a mapping" in located(e, 4)
    e = fail("input: [8, 8, 1]\nlayers:\n  - 5\n")
    assert "type name or a one-key mapping" in located(e, 3)


@pytest.mark.parametrize("layers", ["layers: []", "layers: relu", "layers:"])
def test_layers_must_be_a_non_empty_list(layers):
    e = fail(f"input: [8, 8, 1]\n{layers}\n")
    assert "'layers' must be a non-empty list" in located(e, 2)


# -- bad input: missing input, sizes --------------------------------------------------------------


def test_missing_input():
    e = fail("name: x\nlayers:\n  - conv: {filters: 6, kernel: 5}\n")
    assert e.file == FILE
    assert str(e).startswith(f"{FILE}:")
    assert "missing 'input: [height, width, channels]'" in str(e)


@pytest.mark.parametrize(
    "value", ["[0, 32, 3]", "[32, -1, 3]", "[32, 32.5, 3]", "[32]", "[32, 32, 3, 1]", "[a, b, c]"]
)
def test_bad_input_sizes(value):
    e = fail(f"name: x\ninput: {value}\nlayers: [relu]\n")
    assert "'input' must be [height, width, channels] with positive integers" in located(e, 2)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("filters", "0", "'filters' must be a positive integer, got 0"),
        ("filters", "-6", "'filters' must be a positive integer, got -6"),
        ("filters", "6.0", "'filters' must be a positive integer, got 6.0"),
        ("filters", "true", "'filters' must be a positive integer, got True"),
        ("filters", "six", "'filters' must be a positive integer, got 'six'"),
        ("kernel", "2.5", "'kernel' must be a positive integer, got 2.5"),
        ("kernel", "[3, 0]", "'kernel' must be a positive integer, got 0"),
        ("stride", "0", "'stride' must be a positive integer, got 0"),
        ("padding", "-1", "'padding' must be a non-negative integer, got -1"),
        ("dilation", "0", "'dilation' must be a positive integer, got 0"),
        ("groups", "0", "'groups' must be a positive integer, got 0"),
    ],
)
def test_non_positive_or_non_integer_sizes(key, value, fragment):
    params = {"filters": "6", "kernel": "3", key: value}
    body = "".join(f"      {k}: {v}\n" for k, v in params.items() if k != key)
    text = f"input: [32, 32, 3]\nlayers:\n  - conv:\n      name: C1\n      {key}: {value}\n{body}"
    # the line is the offending key's own line (5) in a block mapping
    assert fragment in located(fail(text), 5, "C1")


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ("dense: {units: 0}", "'units' must be a positive integer"),
        ("dropout: {rate: 1.0}", "'rate' must be in [0, 1)"),
        ("pool: {size: 0}", "'size' must be a positive integer"),
        ("repeat: {times: 0, layers: [relu]}", "'times' must be a positive integer"),
        ("batchnorm: {eps: 0}", "'eps' must be positive"),
        ("lrn: {size: 2.5}", "'size' must be a positive integer"),
    ],
)
def test_bad_values_of_other_layers(layer, fragment):
    e = fail(f"input: [8, 8, 4]\nlayers:\n  - {layer}\n")
    assert fragment in located(e, 3, layer.split(":")[0] + "1")


# -- bad input: arithmetic ----------------------------------------------------------------------


def test_kernel_larger_than_padded_input_shows_arithmetic():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - conv: {filters: 4, kernel: 3, stride: 8}
          - conv: {name: big, filters: 6, kernel: 7, padding: 1}
        """
    )
    assert "kernel 7 is larger than the padded input H: 4 + 2*1 = 6 < 7" in located(e, 4, "big")


def test_dilated_kernel_larger_than_input():
    e = fail("input: [6, 6, 1]\nlayers:\n  - conv: {filters: 1, kernel: 3, dilation: 3}\n")
    assert "kernel 7 is larger than the padded input H: 6 + 2*0 = 6 < 7" in located(e, 3, "conv1")


def test_pool_window_larger_than_input():
    e = fail("input: [32, 16, 3]\nlayers:\n  - pool: {size: [2, 20]}\n")
    assert "window 20 is larger than the padded input W: 16 + 2*0 = 16 < 20" in located(
        e, 3, "pool1"
    )


def test_same_padding_with_even_kernel():
    e = fail(
        "input: [32, 32, 3]\nlayers:\n  - relu\n  - conv: {filters: 6, kernel: 4, padding: same}\n"
    )
    msg = located(e, 4, "conv1")
    assert "padding 'same' needs an odd kernel extent" in msg


def test_same_padding_with_even_kernel_but_odd_dilated_extent_is_fine():
    # F = 4, D = 2: F' = 2*3 + 1 = 7 is odd, so half padding 3 keeps the size
    n = net(
        "input: [32, 32, 3]\nlayers:\n  - conv: {filters: 6, kernel: 4, dilation: 2, padding: 1}\n"
    )
    assert n.output == (28, 28, 6)
    n = net(
        "input: [32, 32, 3]\nlayers:\n  - conv: {filters: 6, kernel: 4, dilation: 2, padding: same}"
    )
    assert n.output == (32, 32, 6)


def test_residual_channel_mismatch():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - conv: {filters: 8, kernel: 3, padding: same}
          - residual:
              name: res
              body:
                - conv: {filters: 16, kernel: 3, padding: same}
        """
    )
    msg = located(e, 4, "res")
    assert "cannot add: body gives 32x32x16 but the identity shortcut gives 32x32x8" in msg
    assert "projection shortcut" in msg


def test_residual_projection_mismatch():
    e = fail(
        """
        input: [32, 32, 8]
        layers:
          - residual:
              body: [conv: {filters: 16, kernel: 3, stride: 2, padding: 1}]
              shortcut: [conv: {filters: 16, kernel: 1}]
        """
    )
    assert "body gives 16x16x16 but the shortcut gives 32x32x16" in located(e, 3, "residual1")


def test_parallel_add_channel_mismatch():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - parallel:
              merge: add
              branches:
                - [conv: {filters: 8, kernel: 1}]
                - [conv: {filters: 4, kernel: 1}]
        """
    )
    assert "cannot add branches of different shapes: 32x32x8, 32x32x4" in located(e, 3, "parallel1")


def test_parallel_concat_needs_same_spatial_size():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - parallel:
              name: inc
              branches:
                - [conv: {filters: 8, kernel: 1}]
                - [conv: {filters: 4, kernel: 3}]
        """
    )
    assert "concat needs branches with the same H x W; got 32x32x8, 30x30x4" in located(e, 3, "inc")


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        (
            "conv: {filters: 6, kernel: 3, groups: 2}",
            "groups=2 must divide both input channels (3)",
        ),
        ("conv: {filters: 4, kernel: 3, groups: 3}", "and filters (4)"),
        ("deconv: {filters: 6, kernel: 3, groups: 2}", "groups=2 must divide"),
    ],
)
def test_groups_must_divide_channels(layer, fragment):
    e = fail(f"input: [32, 32, 3]\nlayers:\n  - {layer}\n")
    assert fragment in located(e, 3, layer.split(":")[0] + "1")


def test_depthwise_groups_are_fine():
    n = net("input: [8, 8, 6]\nlayers:\n  - conv: {filters: 12, kernel: 3, groups: 6}\n")
    assert n.nodes[0].params["weight"] == (12, 1, 3, 3)


def test_spatial_layer_after_flatten():
    e = fail("input: [8, 8, 3]\nlayers:\n  - flatten\n  - conv: {filters: 2, kernel: 1}\n")
    assert "needs a feature map (H x W x C) but receives a vector of 192 units" in located(
        e, 4, "conv1"
    )


# -- bad input: names, files, top level -----------------------------------------------------------


def test_duplicate_names():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - conv: {name: a, filters: 6, kernel: 3}
          - relu
          - conv: {name: a, filters: 6, kernel: 3}
        """
    )
    assert "duplicate layer name 'a' (first used on line 3)" in located(e, 5, "a")


def test_duplicate_names_nested():
    e = fail(
        """
        input: [32, 32, 3]
        layers:
          - sequential:
              name: s
              layers:
                - relu: {name: r}
                - relu: {name: r}
        """
    )
    assert "duplicate layer name 's.r' (first used on line 6)" in located(e, 7, "s.r")


def test_explicit_name_colliding_with_a_default_name():
    e = fail("input: [8, 8, 3]\nlayers:\n  - relu: {name: relu2}\n  - relu\n  - relu\n")
    assert "duplicate layer name 'relu2'" in located(e, 5, "relu2")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_files(text, tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert str(info.value).startswith(f"{p}:")
    assert "empty spec" in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"), [("- conv\n- relu\n", 1), ("# a comment\n\n[1, 2]\n", 3)]
)
def test_top_level_must_be_a_mapping(text, line):
    e = fail(text)
    assert "a spec must be a mapping with 'name', 'input' and 'layers'" in located(e, line)


@pytest.mark.parametrize("text", ["just some text\n", "42\n"])
def test_top_level_scalar_is_not_a_spec(text):
    e = fail(text)
    assert str(e).startswith(f"{FILE}:")
    assert "a spec must be a mapping" in str(e)


def test_unknown_top_level_key_suggests():
    e = fail("name: x\ninput: [32, 32, 3]\nlayer:\n  - relu\n")
    assert "unknown top-level key 'layer' (did you mean 'layers'?)" in located(e, 3)
    e = fail("name: x\ninput: [32, 32, 3]\nlayers:\n  - relu\ninptu: 3\n")
    assert "unknown top-level key 'inptu' (did you mean 'input'?)" in located(e, 5)


# -- dense after a spatial layer ----------------------------------------------------------------


def test_dense_after_spatial_layer_flattens_implicitly_with_a_warning():
    n = net(
        """
        input: [8, 8, 3]
        layers:
          - conv: {filters: 6, kernel: 3}
          - dense: {name: fc, units: 10}
        """
    )
    fc = n.nodes[-1]
    assert fc.out_shape == (10,)
    assert fc.params["weight"] == (10, 6 * 6 * 6)
    assert len(n.warnings) == 1
    w = n.warnings[0]
    assert w.startswith(f"{FILE}:4: layer 'fc':")
    assert "input 6x6x6 is a feature map: flattened implicitly to 216 units" in w
    assert "flatten" in w


def test_dense_after_1x1_map_or_flatten_does_not_warn():
    assert net(LENET).warnings == []
    n = net("input: [8, 8, 3]\nlayers:\n  - global_pool\n  - dense: {units: 2}\n")
    assert n.warnings == []


# -- alias bombs and other expansion attacks -----------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

LAYER_BOMB = """\
input: [8, 8, 3]
x: &a [relu, relu, relu, relu, relu, relu, relu, relu, relu, relu]
y: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
z: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
w: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
v: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
u: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
layers: *f
"""

MERGE_BOMB = """\
a: &a {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}
b: &b {<<: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]}
c: &c {<<: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]}
d: &d {<<: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]}
e: &e {<<: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}
f: &f {<<: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]}
g: &g {<<: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]}
"""


@pytest.mark.parametrize(
    "text", [BILLION_LAUGHS, LAYER_BOMB, MERGE_BOMB], ids=["lol", "layers", "merge"]
)
def test_alias_bomb_fails_fast_without_exhausting_memory(text):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            parse_spec(text, file="bomb.yaml")
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert str(info.value).startswith("bomb.yaml:")
    assert "alias bomb" in str(info.value)


def test_moderate_aliasing_is_fine():
    text = y(
        """
        input: [8, 8, 3]
        layers:
          - repeat:
              times: 10
              layers: &ten [relu, relu, relu, relu, relu, relu, relu, relu, relu, relu]
          - sequential: {layers: *ten}
        """
    )
    assert len(resolve(parse_spec(text)).rows()) == 110


REPEAT_BOMB = """\
input: [8, 8, 3]
layers:
  - repeat:
      times: 100000
      layers:
        - repeat:
            times: 100000
            layers: [relu]
"""


def test_repeat_bomb_fails_fast(tmp_path):
    p = tmp_path / "repeat_bomb.yaml"
    p.write_text(REPEAT_BOMB)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))\n"
        "from cnncli.errors import SpecError\n"
        "from cnncli.spec import load_spec, resolve\n"
        "try:\n"
        f"    resolve(load_spec({str(p)!r}))\n"
        "except SpecError as e:\n"
        "    print(e); sys.exit(2)\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=3
        )
    except subprocess.TimeoutExpired:
        pytest.fail("loading a 7-line repeat bomb did not finish in 3 s")
    assert proc.returncode == 2, proc.stderr[-500:]


def test_deeply_nested_yaml_is_a_spec_error():
    text = "input: [8, 8, 1]\nlayers: " + "[" * 3000 + "]" * 3000 + "\n"
    with pytest.raises(SpecError):
        parse_spec(text, file="deep.yaml")


def test_spec_is_plain_data(tmp_path):
    # the loader keeps the raw mapping and the text for later commands (train, checkpoints)
    p = Path(tmp_path / "l.yaml")
    p.write_text(LENET)
    spec = load_spec(p)
    assert spec.raw["name"] == "LeNet-5"
    assert spec.raw.line == 1  # YAML line info survives on the mapping


def test_a_control_character_after_non_ascii_text_names_its_line_and_column():
    """libyaml's parser (used when PyYAML has it) counts bytes; the error still names the
    character's line and column as the text has them."""
    from cnncli.yamlsrc import load_yaml

    text = 'name: "é测试"\ninput: [8, 8, 1]\nlayers: [flatten]\x00\n'
    with pytest.raises(SpecError) as err:
        load_yaml(text, file="s.yaml")
    assert err.value.line == 3
    assert "unacceptable character #x0000 at column 18" in str(err.value)


@pytest.mark.parametrize("text", ["[" * 200_000, "- " * 40_000 + "1"], ids=["flow", "block"])
def test_nesting_too_deep_for_libyaml_is_an_error_not_a_crash(text):
    """libyaml's C composer crashes the process (segfault) past some 10,000 levels; such a
    text must reach the pure-Python parser, whose RecursionError becomes a SpecError. Run
    in a child process, so that a crash fails this test instead of the whole suite."""
    code = ("import sys\nfrom cnncli.errors import SpecError\nfrom cnncli.yamlsrc import "
            "load_yaml\ntry:\n    load_yaml(sys.stdin.read(), file='deep.yaml')\n"
            "except SpecError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-500:]
    assert "YAML nesting is too deep" in res.stdout
