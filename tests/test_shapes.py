"""The shape report: the notes' worked examples, counts, cost, receptive fields, warnings,
totals, the JSON contract and the ``--explain`` formulas.

Networks are written inline (as dicts or YAML text) so these tests do not depend on the
shipped ``architectures/`` files.
"""

from __future__ import annotations

import json
import re
import textwrap
import tracemalloc
from math import prod

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnncli import arith
from cnncli.cli.render import explain_text
from cnncli.shapes import MAC_CONVENTION, shapes

prop = settings(max_examples=80, deadline=None)

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


def one(layer: dict | str, input: list[int]) -> dict:
    """The report row of a one-layer network."""
    report = shapes({"name": "t", "input": input, "layers": [layer]})
    assert len(report["layers"]) == 1
    return report["layers"][0] | {"warnings": report["warnings"], "notes": report["notes"]}


def conv(**kw) -> dict:
    return {"conv": {"filters": 6, **kw}}


# -- the notes' worked examples -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "input", "output"),
    [
        (conv(kernel=5), [32, 32, 3], [28, 28, 6]),  # 32x32x3 with 5x5 filters -> 28x28
        (conv(kernel=5, stride=2), [32, 32, 3], [14, 14, 6]),  # stride 2 -> 14x14
        ({"pool": {"size": 3, "stride": 1}}, [7, 7, 1], [5, 5, 1]),  # 7x7 map, 3x3 pool, s1
        ({"pool": {"size": 3, "stride": 2}}, [7, 7, 1], [3, 3, 1]),  # ... stride 2 -> 3x3
        (conv(kernel=5, padding="same"), [32, 32, 3], [32, 32, 6]),  # half padding keeps 32
        (conv(kernel=5, padding="half"), [32, 32, 3], [32, 32, 6]),
        (conv(kernel=5, padding="full"), [32, 32, 3], [36, 36, 6]),  # full padding -> 36x36
        (conv(kernel=3), [5, 5, 1], [3, 3, 6]),  # "a 3x3 filter on a 5x5 input: 3x3"
        ({"deconv": {"filters": 1, "kernel": 3}}, [5, 5, 1], [7, 7, 1]),  # o' = i' + (k - 1)
    ],
)
def test_worked_examples(layer, input, output):
    assert one(layer, input)["output"] == output


def test_worked_example_explain_lines():
    row = one({"conv": {"filters": 6, "kernel": 5}}, [32, 32, 1])
    assert row["explain"][0] == "H2 = W2 = floor((32 + 2*0 - 5)/1) + 1 = 28"
    assert row["explain"][1] == "params = 5*5*1*6 + 6 = 156"
    assert row["explain"][2] == "MACs = 28*28*6 outputs * 5*5*1 = 117,600"
    row = one(conv(kernel=5, padding="same"), [32, 32, 3])
    assert "H2 = W2 = floor((32 + 2*2 - 5)/1) + 1 = 32" in row["explain"]
    row = one(conv(kernel=5, padding="full"), [32, 32, 3])
    assert "H2 = W2 = floor((32 + 2*4 - 5)/1) + 1 = 36" in row["explain"]
    row = one({"pool": {"size": 3, "stride": 2}}, [7, 7, 1])
    assert "H2 = W2 = floor((7 + 2*0 - 3)/2) + 1 = 3" in row["explain"]


def test_explain_lines_for_unequal_axes_dilation_and_deconv():
    row = one(conv(kernel=[3, 5], stride=[1, 2], padding=[1, 0]), [10, 11, 2])
    assert row["explain"][:2] == [
        "H2 = floor((10 + 2*1 - 3)/1) + 1 = 10",
        "W2 = floor((11 + 2*0 - 5)/2) + 1 = 4",
    ]
    assert row["output"] == [10, 4, 6]
    row = one(conv(kernel=3, dilation=2), [9, 9, 1])
    assert row["explain"][0] == "H2 = W2 = floor((9 + 2*0 - (2*(3-1)+1))/1) + 1 = 5"
    row = one(
        {"deconv": {"filters": 3, "kernel": 5, "stride": 2, "output_padding": 1}}, [14, 14, 6]
    )
    assert row["explain"][0] == "H2 = W2 = (14-1)*2 - 2*0 + 1*(5-1) + 1 + 1 = 32"
    assert row["output"] == [32, 32, 3]
    row = one({"pool": {"size": 3, "stride": 2, "ceil": True}}, [6, 6, 1])
    assert row["explain"][0] == "H2 = W2 = ceil((6 + 2*0 - 3)/2) + 1 = 3"


def test_explain_text_renders_every_layer():
    text = explain_text(shapes(LENET))
    assert text.startswith("Input: 32 x 32 x 1\n")
    assert "C1 (conv, 5x5/1, pad valid, tanh) -> 28 x 28 x 6" in text
    assert "    H2 = W2 = floor((32 + 2*0 - 5)/1) + 1 = 28" in text
    assert "    params = 5*5*1*6 + 6 = 156" in text
    assert "    params = 5*5*6*16 + 16 = 2,416" in text
    assert "    receptive field 32, jump 4" in text
    assert "    params = 84*10 + 10 = 850" in text


# -- LeNet-5, every number -----------------------------------------------------------------------


def test_lenet5_rows():
    r = shapes(LENET)
    rows = {x["name"]: x for x in r["layers"]}
    assert list(rows) == ["C1", "S2", "C3", "S4", "C5", "flatten1", "F6", "output"]
    assert [x["output"] for x in r["layers"]] == [
        [28, 28, 6],
        [14, 14, 6],
        [10, 10, 16],
        [5, 5, 16],
        [1, 1, 120],
        [120],
        [84],
        [10],
    ]
    assert [x["params"] for x in r["layers"]] == [156, 0, 2416, 0, 48120, 0, 10164, 850]
    assert [x["macs"] for x in r["layers"]] == [117600, 0, 240000, 0, 48000, 0, 10080, 840]
    assert [x["receptive_field"] for x in r["layers"]] == [5, 6, 14, 16, 32, None, None, None]
    assert [x["jump"] for x in r["layers"]] == [1, 2, 2, 4, 4, None, None, None]
    assert rows["C1"]["weights"] == 150 and rows["C1"]["biases"] == 6
    assert rows["C1"]["line"] == 4
    assert r["warnings"] == []


def test_lenet5_totals():
    t = shapes(LENET, batch=32)["totals"]
    assert t["params"] == t["trainable_params"] == 61_706
    assert t["non_trainable_params"] == 0
    assert t["macs"] == 416_520
    assert t["flops"] == 833_040
    assert t["param_bytes"] == 61_706 * 4
    values = 28 * 28 * 6 + 14 * 14 * 6 + 10 * 10 * 16 + 5 * 5 * 16 + 120 + 120 + 84 + 10
    assert t["activation_bytes_per_image"] == values * 4
    assert t["activation_bytes_batch"] == values * 4 * 32
    assert t["input_bytes_per_image"] == 32 * 32 * 4
    assert t["batch"] == 32
    assert t["convention"] == MAC_CONVENTION
    assert "1 MAC = 2 FLOPs" in MAC_CONVENTION


# -- parameters and MACs ------------------------------------------------------------------------


@prop
@given(
    f=st.integers(1, 7),
    d=st.integers(1, 16),
    k=st.integers(1, 64),
    stride=st.integers(1, 3),
    bias=st.booleans(),
    size=st.integers(8, 24),
)
def test_conv_params_are_f_f_d_k_plus_k(f, d, k, stride, bias, size):
    row = one(conv(filters=k, kernel=f, stride=stride, bias=bias), [size, size, d])
    assert row["params"] == f * f * d * k + (k if bias else 0)
    assert row["weights"] == f * f * d * k
    assert row["biases"] == (k if bias else 0)
    o = arith.conv_output_size(size, f, stride, 0)
    assert row["output"] == [o, o, k]
    assert row["macs"] == o * o * k * f * f * d


@prop
@given(
    g=st.integers(1, 4),
    per_in=st.integers(1, 4),
    per_out=st.integers(1, 4),
    fh=st.integers(1, 5),
    fw=st.integers(1, 5),
)
def test_grouped_conv_params_and_macs(g, per_in, per_out, fh, fw):
    d, k = g * per_in, g * per_out
    row = one(conv(filters=k, kernel=[fh, fw], groups=g), [9, 9, d])
    assert row["params"] == fh * fw * (d // g) * k + k
    oh, ow = 9 - fh + 1, 9 - fw + 1
    assert row["macs"] == oh * ow * k * fh * fw * (d // g)


@prop
@given(
    c=st.integers(1, 8),
    k=st.integers(1, 8),
    f=st.integers(1, 5),
    s=st.integers(1, 3),
    size=st.integers(1, 10),
)
def test_deconv_params_and_macs(c, k, f, s, size):
    row = one({"deconv": {"filters": k, "kernel": f, "stride": s}}, [size, size, c])
    assert row["params"] == f * f * c * k + k
    assert row["macs"] == size * size * c * f * f * k  # every input scattered through F*F*K
    o = arith.deconv_output_size(size, f, s, 0)
    assert row["output"] == [o, o, k]


@pytest.mark.parametrize(
    ("input", "before", "n_in"),
    [([1, 1, 120], ["flatten"], 120), ([1, 1, 120], [], 120), ([4, 5, 6], ["flatten"], 120)],
)
def test_dense_params_and_macs(input, before, n_in):
    row = shapes({"input": input, "layers": [*before, {"dense": {"units": 10}}]})["layers"][-1]
    assert row["params"] == n_in * 10 + 10
    assert row["macs"] == n_in * 10
    assert row["output"] == [10]
    assert row["explain"][-2:] == [
        f"params = {n_in}*10 + 10 = {n_in * 10 + 10:,}",
        f"MACs = {n_in}*10 = {n_in * 10:,}",
    ]


def test_batchnorm_counts_running_stats_as_non_trainable():
    r = shapes(
        {"input": [8, 8, 16], "layers": [conv(filters=32, kernel=3, bias=False), "batchnorm"]}
    )
    bn = r["layers"][1]
    assert bn["params"] == 64 and bn["non_trainable"] == 64 and bn["macs"] == 0
    t = r["totals"]
    assert t["trainable_params"] == 3 * 3 * 16 * 32 + 64
    assert t["non_trainable_params"] == 64
    assert t["params"] == t["trainable_params"] + t["non_trainable_params"]
    assert t["param_bytes"] == 4 * t["params"]


def test_parameter_free_layers():
    r = shapes(
        {
            "input": [16, 16, 8],
            "layers": [
                "relu",
                "lrn",
                {"pool": {"size": 3, "stride": 2, "type": "l2"}},
                {"pool": {"size": 2, "over": "depth"}},
                {"dropout": {"rate": 0.2}},
                "global_pool",
            ],
        }
    )
    assert [x["params"] for x in r["layers"]] == [0] * 6
    assert [x["macs"] for x in r["layers"]] == [0] * 6
    assert [x["output"] for x in r["layers"]] == [
        [16, 16, 8],
        [16, 16, 8],
        [7, 7, 8],
        [7, 7, 4],  # pooling over depth: 8 channels in windows of 2
        [7, 7, 4],
        [4],
    ]


def test_blocks_sum_their_children_and_get_a_row():
    r = shapes(
        textwrap.dedent(
            """
            input: [8, 8, 4]
            layers:
              - residual:
                  name: res
                  body:
                    - conv: {filters: 4, kernel: 3, padding: same}
                    - conv: {filters: 4, kernel: 3, padding: same}
              - parallel:
                  name: inc
                  branches:
                    - [conv: {filters: 2, kernel: 1}]
                    - []
              - repeat:
                  name: rep
                  times: 3
                  layers: [conv: {filters: 6, kernel: 1}]
            """
        )
    )
    by = {x["name"]: x for x in r["layers"]}
    assert by["res"]["output"] == [8, 8, 4] and by["res"]["params"] == 0
    assert by["inc"]["output"] == [8, 8, 6]  # concat: 2 + identity 4
    assert "inc.branch2" not in str(list(by))  # the identity branch has no rows
    # each repeat copy has its own weights
    assert [by[f"rep.{i}"]["params"] for i in range(3)] == [6 * 6 + 6, 6 * 6 + 6, 6 * 6 + 6]
    assert by["rep.0"]["params"] == 1 * 1 * 6 * 6 + 6
    assert r["totals"]["trainable_params"] == 2 * (9 * 4 * 4 + 4) + (4 * 2 + 2) + 3 * 42
    assert r["output"] == [8, 8, 6]


def test_parallel_add_and_residual_scale():
    r = shapes(
        {
            "input": [8, 8, 4],
            "layers": [
                {
                    "parallel": {
                        "merge": "add",
                        "branches": [[conv(filters=4, kernel=1)], []],
                    }
                },
                {
                    "residual": {
                        "body": [conv(filters=4, kernel=3, padding=1)],
                        "scale": 0.5,
                        "activation": "none",
                    }
                },
            ],
        }
    )
    assert r["output"] == [8, 8, 4]
    assert r["layers"][-1]["explain"][0].startswith("H(x) = none(F(x) + 0.5*x)")


# -- receptive field and jump -------------------------------------------------------------------

layer_strategy = st.one_of(
    st.tuples(st.just("conv"), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.just("pool"), st.integers(1, 4), st.integers(1, 3), st.just(1)),
)


def brute_receptive_field(stack: list[tuple]) -> tuple[int, int]:
    """Map one top unit back to the input as an interval of pixels; count them."""
    lo, hi = 0, 0
    for _kind, f, s, d in reversed(stack):
        extent = d * (f - 1) + 1
        lo, hi = lo * s, hi * s + extent - 1
    jump = prod(s for _, _, s, _ in stack)
    return hi - lo + 1, jump


@prop
@given(st.lists(layer_strategy, min_size=1, max_size=6))
def test_receptive_field_and_jump_match_brute_force(stack):
    size = 600
    layers = []
    for kind, f, s, d in stack:
        if kind == "conv":
            layers.append({"conv": {"filters": 2, "kernel": f, "stride": s, "dilation": d}})
            size = arith.conv_output_size(size, f, s, 0, d)
        else:
            layers.append({"pool": {"size": f, "stride": s}})
            size = arith.pool_output_size(size, f, s, 0, False)
        assume(size >= 1)
    r = shapes({"input": [600, 600, 2], "layers": layers})
    rf, jump = brute_receptive_field(stack)
    assert r["layers"][-1]["receptive_field"] == rf
    assert r["layers"][-1]["jump"] == jump


def test_receptive_field_recurrence_examples():
    # three 3x3 convs see 7x7; dilation 2 makes a 3x3 kernel see 5 pixels
    r = shapes({"input": [32, 32, 1], "layers": [conv(kernel=3)] * 3})
    assert [x["receptive_field"] for x in r["layers"]] == [3, 5, 7]
    r = shapes({"input": [32, 32, 1], "layers": [conv(kernel=3, dilation=2), conv(kernel=3)]})
    assert [x["receptive_field"] for x in r["layers"]] == [5, 7]
    # r_out = r_in + (F' - 1) * j_in, j_out = j_in * S
    r = shapes({"input": [64, 64, 1], "layers": [conv(kernel=7, stride=2), conv(kernel=3)]})
    assert [(x["receptive_field"], x["jump"]) for x in r["layers"]] == [(7, 2), (11, 2)]


def test_receptive_field_of_unequal_axes_is_a_pair():
    row = one(conv(kernel=[3, 5], stride=[1, 2]), [16, 16, 1])
    assert row["receptive_field"] == [3, 5]
    assert row["jump"] == [1, 2]


def test_global_pool_flatten_and_dense_see_everything():
    r = shapes({"input": [8, 8, 1], "layers": ["global_pool", {"dense": {"units": 2}}]})
    assert [x["receptive_field"] for x in r["layers"]] == [None, None]
    assert [x["jump"] for x in r["layers"]] == [None, None]


# -- floor-drop warnings ------------------------------------------------------------------------


def test_floor_drop_warning_stride_2():
    row = one(conv(kernel=5, stride=2), [32, 32, 3])
    assert row["output"] == [14, 14, 6]
    (w,) = row["warnings"]
    assert "layer 'conv1'" in w
    assert "(32 + 2*0 - 5) = 27 is not divisible by stride 2" in w
    assert "the last 1 row and column" in w


def test_floor_drop_warning_counts_rows_and_columns_separately():
    row = one(conv(kernel=3, stride=[3, 2]), [32, 33, 1])
    # H: (32 - 3) % 3 = 2 rows; W: (33 - 3) % 2 = 0 columns
    (w,) = row["warnings"]
    assert "stride 3" in w and "the last 2 rows" in w and "column" not in w
    row = one(conv(kernel=3, stride=2), [33, 32, 1])
    (w,) = row["warnings"]
    assert "the last 1 column" in w and "row" not in w
    row = one(conv(kernel=3, stride=[3, 2]), [32, 32, 1])
    assert len(row["warnings"]) == 2
    assert "the last 2 rows" in row["warnings"][0]
    assert "the last 1 column" in row["warnings"][1]
    row = one(conv(kernel=3, stride=3), [32, 32, 1])
    (w,) = row["warnings"]
    assert "the last 2 rows and columns" in w


def test_floor_drop_warning_for_pooling_and_not_in_ceil_mode():
    row = one({"pool": {"size": 2}}, [7, 7, 1])
    (w,) = row["warnings"]
    assert "(7 + 2*0 - 2) = 5 is not divisible by stride 2" in w
    assert "1 row and column" in w
    assert one({"pool": {"size": 2, "ceil": True}}, [7, 7, 1])["warnings"] == []
    assert one({"pool": {"size": 2, "ceil": True}}, [7, 7, 1])["output"] == [4, 4, 1]


def test_floor_dropping_only_padding_is_a_note_not_a_warning():
    # ResNet's stem: (224 + 2*3 - 7) = 223 is odd, but the dropped column is padding
    row = one(conv(kernel=7, stride=2, padding=3), [224, 224, 3])
    assert row["output"] == [112, 112, 6]
    assert row["warnings"] == []
    (n,) = row["notes"]
    assert "layer 'conv1'" in n
    assert "(224 + 2*3 - 7) = 223 is not divisible by stride 2" in n
    assert "1 row and column of zero padding (no input is lost)" in n
    assert f"note: {n.split(': ', 1)[1]}" in row["explain"]  # shown by --explain


def test_floor_drop_inside_a_stride_gap_is_a_note():
    # ResNet's 1x1 stride-2 shortcut on 56: rows 1, 3, ..., 55 are skipped by design
    row = one(conv(kernel=1, stride=2), [56, 56, 4])
    assert row["output"] == [28, 28, 6]
    assert row["warnings"] == []
    (n,) = row["notes"]
    assert "drops the last 1 row and column of the input" in n and "by design" in n
    # but a remainder larger than the gap is lost input: a warning
    row = one(conv(kernel=1, stride=3), [57, 57, 4])  # (57 - 1) % 3 = 2 = the gap: note
    assert row["warnings"] == [] and len(row["notes"]) == 1
    row = one(conv(kernel=2, stride=3), [57, 57, 4])  # (57 - 2) % 3 = 1 = the gap: note
    assert row["warnings"] == [] and len(row["notes"]) == 1
    row = one(conv(kernel=2, stride=4), [57, 57, 4])  # (57 - 2) % 4 = 3 > gap 2: warning
    assert len(row["warnings"]) == 1 and row["notes"] == []


@prop
@given(
    size=st.integers(5, 40),
    f=st.integers(1, 5),
    s=st.integers(1, 4),
)
def test_warning_iff_floor_drops_something(size, f, s):
    row = one(conv(kernel=f, stride=s), [size, size, 1])
    dropped = arith.conv_dropped(size, f, s, 0)
    messages = row["warnings"] + row["notes"]
    if dropped == 0:
        assert messages == []
    else:
        (m,) = messages
        word = "row and column" if dropped == 1 else "rows and columns"
        assert f"the last {dropped} {word}" in m
        # a note exactly when the dropped rows lie in the gap a kernel smaller than the
        # stride leaves after every window anyway
        assert (m in row["notes"]) == (dropped <= s - f)


def test_no_warnings_when_everything_divides():
    assert shapes(LENET)["warnings"] == []


# -- the JSON contract ---------------------------------------------------------------------------


def test_json_field_contract():
    report = json.loads(json.dumps(shapes(LENET)))  # plain JSON data, nothing else
    assert report["name"] == "LeNet-5"
    assert report["input"] == [32, 32, 1]
    assert isinstance(report["layers"], list) and len(report["layers"]) == 8
    for row in report["layers"]:
        for key in ("name", "type", "output", "params", "macs", "receptive_field", "jump"):
            assert key in row, key
        assert isinstance(row["name"], str) and isinstance(row["type"], str)
        assert all(isinstance(v, int) for v in row["output"])
        assert len(row["output"]) in (1, 3)  # [H, W, C] or [units]
        assert isinstance(row["params"], int) and isinstance(row["macs"], int)
    for key in ("params", "trainable_params", "non_trainable_params", "macs", "flops"):
        assert isinstance(report["totals"][key], int), key
    assert report["totals"]["flops"] == 2 * report["totals"]["macs"]
    assert report["warnings"] == []


def test_json_warnings_are_strings():
    report = json.loads(json.dumps(shapes({"input": [7, 7, 1], "layers": ["pool"]})))
    assert len(report["warnings"]) == 1 and isinstance(report["warnings"][0], str)


def test_input_override_and_batch():
    r = shapes(LENET, input_shape=(36, 36, 1), batch=4)
    assert r["input"] == [36, 36, 1]
    assert r["layers"][0]["output"] == [32, 32, 6]
    assert r["layers"][-4]["output"] == [2, 2, 120]  # C5 now sees a 6x6 map
    t = r["totals"]
    assert t["batch"] == 4
    assert t["activation_bytes_batch"] == 4 * t["activation_bytes_per_image"]


# -- bigger networks, written inline ---------------------------------------------------------------


def vgg16() -> dict:
    layers: list = []
    for stage, (n, c) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], 1):
        for i in range(1, n + 1):
            layers.append(
                {
                    "conv": {
                        "name": f"conv{stage}_{i}",
                        "filters": c,
                        "kernel": 3,
                        "padding": 1,
                        "activation": "relu",
                    }
                }
            )
        layers.append({"pool": {"name": f"pool{stage}", "size": 2}})
    layers += [
        "flatten",
        {"dense": {"name": "fc6", "units": 4096, "activation": "relu"}},
        "dropout",
        {"dense": {"name": "fc7", "units": 4096, "activation": "relu"}},
        "dropout",
        {"dense": {"name": "fc8", "units": 1000}},
    ]
    return {"name": "VGG-16", "input": [224, 224, 3], "layers": layers}


def _conv_bn(name: str, filters: int, kernel: int, stride: int = 1, pad: int = 0, relu=True):
    out: list = [
        {
            "conv": {
                "name": name,
                "filters": filters,
                "kernel": kernel,
                "stride": stride,
                "padding": pad,
                "bias": False,
            }
        },
        {"batchnorm": {"name": name.replace("conv", "bn")}},
    ]
    return out + ["relu"] if relu else out


def _bottleneck(width: int, stride: int, project: bool) -> dict:
    body = (
        _conv_bn("conv1", width, 1)
        + _conv_bn("conv2", width, 3, stride, 1)  # v1.5: the stride sits in the 3x3 conv
        + _conv_bn("conv3", 4 * width, 1, relu=False)
    )
    block: dict = {"body": body}
    if project:
        block["shortcut"] = [
            {"conv": {"name": "0", "filters": 4 * width, "kernel": 1, "stride": stride}},
            {"batchnorm": {"name": "1"}},
        ]
        block["shortcut"][0]["conv"]["bias"] = False
    return {"residual": block}


def resnet50() -> dict:
    layers = _conv_bn("conv1", 64, 7, 2, 3) + [
        {"pool": {"name": "maxpool", "size": 3, "stride": 2, "padding": 1}}
    ]
    for i, (width, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
    ):
        stage = [
            _bottleneck(width, stride, True),
            {
                "repeat": {
                    "name": "rest",
                    "times": blocks - 1,
                    "layers": [_bottleneck(width, 1, False)],
                }
            },
        ]
        layers.append({"sequential": {"name": f"layer{i + 1}", "layers": stage}})
    layers += ["global_pool", {"dense": {"name": "fc", "units": 1000}}]
    return {"name": "ResNet-50", "input": [224, 224, 3], "layers": layers}


def test_vgg16_counts_and_receptive_fields():
    r = shapes(vgg16())
    # published figures (../shared/reference/README.md)
    assert r["totals"]["trainable_params"] == 138_357_544
    assert r["totals"]["macs"] == 15_470_264_320
    rf = {x["name"]: (x["receptive_field"], x["jump"]) for x in r["layers"]}
    expected = {
        "conv1_1": 3,
        "pool1": 6,
        "conv2_1": 10,
        "pool2": 16,
        "conv3_1": 24,
        "conv3_2": 32,
        "pool3": 44,
        "conv4_1": 60,
        "conv4_2": 76,
        "pool4": 100,
        "conv5_1": 132,
        "conv5_2": 164,
        "pool5": 212,
    }
    assert {k: rf[k][0] for k in expected} == expected
    assert rf["pool5"][1] == 32
    assert r["warnings"] == []


def test_resnet50_counts_without_allocating_weights():
    spec = resnet50()
    tracemalloc.start()
    try:
        r = shapes(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    t = r["totals"]
    assert t["trainable_params"] == 25_557_032
    assert t["non_trainable_params"] == 53_120
    assert t["macs"] == 4_089_184_256
    assert r["output"] == [1000]
    # 102 MB of float32 weights are never allocated: the report costs a few MB at most
    assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    names = [x["name"] for x in r["layers"]]
    assert "layer1.residual1.shortcut.0" in names
    assert "layer3.rest.4.conv2" in names
    assert re.fullmatch(r"layer4\.rest\.1", names[-3])
