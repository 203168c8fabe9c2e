"""Property tests: generated and mutated specs, training configs and pipelines, fed to the
library and to the CLI. Whatever the input, the library returns or raises a CnnError (never
another exception) and the CLI exits 0 or 2 with no traceback, each example within a time
bound. Generation starts from the real vocabularies (layer types and their parameters, op
names and theirs, settings) so that most examples get deep into the checks, then breaks
them: wrong types, NaN, huge numbers, NUL bytes, invalid UTF-8, deleted and repeated text.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import IMAGES, cnn, no_traceback
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.errors import CnnError

#: Each example must finish within this many seconds (the CLI ones include typer's work).
BOUND_S = 2.0
FUZZ = settings(max_examples=40, deadline=timedelta(seconds=BOUND_S), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


def _layer_params() -> dict[str, list[str]]:
    from cnncli.layers.registry import layer_types

    return {k: [p.name for p in c.params_spec] for k, c in layer_types().items()}


def _op_params() -> dict[str, list[str]]:
    from cnncli.augment.transforms import describe_ops

    return {r["op"]: [p["name"] for p in r["params"]] for r in describe_ops()}


LAYERS = _layer_params()
OPS = _op_params()
SETTINGS = ["epochs", "batch_size", "batch-size", "optimizer", "lr", "momentum", "nesterov",
            "weight_decay", "schedule", "step_size", "gamma", "min_lr", "warmup", "seed",
            "val_split", "patience", "loss", "augment", "eval_batch_size", "bogus"]

scalars = st.one_of(
    st.integers(-3, 40), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.booleans(), st.none(), st.sampled_from(["same", "valid", "relu", "max", "avg", "x", ""]),
    st.text(max_size=6),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


@st.composite
def layer(draw: Any, depth: int = 0) -> Any:
    kind = draw(st.sampled_from([*LAYERS, "maxpool"]))
    names = LAYERS.get(kind, ["size"])
    if not names and draw(st.booleans()):
        return kind
    params: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from([*names, "name", "junk"]), max_size=4)):
        if name in ("body", "shortcut", "layers") and depth < 2:
            params[name] = draw(st.lists(layer(depth + 1), min_size=0, max_size=3))
        elif name == "branches" and depth < 2:
            params[name] = draw(st.lists(st.lists(layer(depth + 1), max_size=2), max_size=2))
        elif name in ("filters", "units", "times", "size", "kernel"):
            params[name] = draw(st.one_of(st.integers(-1, 6), values))
        else:
            params[name] = draw(values)
    return {kind: params}


@st.composite
def spec_text(draw: Any) -> str:
    doc: dict[str, Any] = {"name": draw(st.text(max_size=5)),
                           "input": draw(st.one_of(
                               st.lists(st.integers(-1, 40), min_size=2, max_size=4),
                               st.sampled_from(["16x16x3", "8x8", [2**40, 2**40, 3]]), values)),
                           "layers": draw(st.lists(layer(), min_size=0, max_size=6))}
    if draw(st.booleans()):
        doc["training"] = draw(st.dictionaries(st.sampled_from(SETTINGS), values, max_size=3))
    return mutate(draw, yaml.safe_dump(doc, sort_keys=False))


def mutate(draw: Any, text: str) -> str:
    """Break the text a little: delete, repeat or insert (NUL, control, non-ASCII) bits."""
    for _ in range(draw(st.integers(0, 3))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(i, min(len(text), i + 8)))
        edit = draw(st.sampled_from(["delete", "repeat", "insert", "line"]))
        if edit == "delete":
            text = text[:i] + text[j:]
        elif edit == "repeat":
            text = text[:j] + text[i:j] + text[j:]
        elif edit == "insert":
            text = text[:i] + draw(st.sampled_from(["\x00", "\x07", ":", "- ", "&a ", "*a",
                                                     "{", "]", "\u00e9", "\ufeff", "!!python"
                                                     "/object ", "<<: *a\n"])) + text[i:]
        else:
            lines = text.splitlines(keepends=True)
            k = draw(st.integers(0, len(lines) - 1))
            lines.insert(k, lines[k])
            text = "".join(lines)
    return text


@st.composite
def ops_text(draw: Any) -> str:
    items = []
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from([*OPS, "twist"]))
        names = draw(st.lists(st.sampled_from([*OPS.get(op, ["p"]), "zz"]), max_size=3))
        args = ", ".join(f"{n}={yaml.safe_dump(draw(scalars)).splitlines()[0]}" for n in names)
        items.append(draw(st.sampled_from([op, f"{op}({args})",
                                           f"{op}={draw(st.integers(-5, 400))}"])))
    return mutate(draw, ",".join(items))


def within_bound(t0: float) -> None:
    assert time.perf_counter() - t0 < BOUND_S


# -- the library ----------------------------------------------------------------------------


@FUZZ
@given(spec_text())
def test_specs_parse_or_fail_with_a_cnn_error(text: str) -> None:
    from cnncli.shapes import shape_report
    from cnncli.spec import parse_spec, resolve

    t0 = time.perf_counter()
    with contextlib.suppress(CnnError):  # (the CLI tests check it is printed as one line)
        shape_report(resolve(parse_spec(text, file="fuzz.yaml")), batch=3)
    within_bound(t0)


@FUZZ
@given(st.dictionaries(st.sampled_from(SETTINGS), values, max_size=5))
def test_training_settings_merge_or_fail_with_a_cnn_error(settings_: dict) -> None:
    from cnncli.train.config import TrainConfig, finalize, merge

    with contextlib.suppress(CnnError):
        finalize(merge(TrainConfig(), settings_, "fuzz.yaml"))


@FUZZ
@given(ops_text())
def test_pipelines_parse_or_fail_with_a_cnn_error(text: str) -> None:
    from cnncli.augment.pipeline import Pipeline, parse_ops

    t0 = time.perf_counter()
    try:
        pipe = parse_ops(text)
        assert Pipeline.from_dict(yaml.safe_load(pipe.to_yaml())) == pipe  # saved form loads
    except CnnError:
        pass
    within_bound(t0)


# -- the CLI --------------------------------------------------------------------------------


def exits_0_or_2(result: Any) -> None:
    no_traceback(result)
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr)
    if result.exit_code == 2:  # exactly one line, whatever text the message quotes
        lines = result.stderr.strip().splitlines()
        assert len([ln for ln in lines if ln.startswith("error:")]) == 1, result.stderr
        assert lines[-1].startswith("error:"), result.stderr


@FUZZ
@given(spec_text(), st.booleans())
def test_cnn_shapes_on_fuzzed_specs(text: str, as_bytes: bool) -> None:
    t0 = time.perf_counter()
    data = text.encode("utf-8") + (b"\xff\xfe" if as_bytes else b"")
    exits_0_or_2(cnn("shapes", "-", "--format", "json", input=data))
    within_bound(t0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import shutil

    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(IMAGES / "digits" / "6", root / "in" / "6")
    (root / "spec.yaml").write_text(yaml.safe_dump(
        {"input": [8, 8, 1], "layers": ["flatten", {"dense": {"units": 2}}]}))
    return {"root": root, "in": root / "in", "spec": root / "spec.yaml"}


@FUZZ
@given(st.dictionaries(st.sampled_from(SETTINGS), values, max_size=4), st.booleans())
def test_cnn_train_on_fuzzed_config_files(folder: dict[str, Path], settings_: dict,
                                          garbage: bool) -> None:
    config = folder["root"] / "config.yaml"
    text = yaml.safe_dump(settings_) + ("\x00\xff" if garbage else "")
    config.write_bytes(text.encode("utf-8", "surrogateescape"))
    t0 = time.perf_counter()
    # No such data set: a good config gets as far as that (exit 2), a bad one stops sooner.
    result = cnn("train", "--arch", folder["spec"], "--config", config, "--data",
                 folder["root"] / "missing.npz", "--out", folder["root"] / "run")
    exits_0_or_2(result)
    assert result.exit_code == 2 and not (folder["root"] / "run").exists()
    within_bound(t0)


@FUZZ
@given(ops_text())
def test_cnn_augment_dry_run_on_fuzzed_ops(folder: dict[str, Path], text: str) -> None:
    t0 = time.perf_counter()
    result = cnn("augment", folder["in"], "--out", folder["root"] / "out", "--ops", text,
                 "--dry-run", "-j", 1)
    exits_0_or_2(result)
    assert not (folder["root"] / "out").exists()
    within_bound(t0)


@FUZZ
@given(st.binary(max_size=200), ops_text())
def test_cnn_augment_on_fuzzed_pipeline_files(folder: dict[str, Path], noise: bytes,
                                              text: str) -> None:
    from cnncli.augment.pipeline import parse_ops

    try:
        body = parse_ops(text).to_yaml().encode()
    except CnnError:
        body = text.encode("utf-8", "replace")
    path = folder["root"] / "pipe.yaml"
    path.write_bytes(body[: len(body) // 2] + noise if noise else body)
    t0 = time.perf_counter()
    exits_0_or_2(cnn("augment", folder["in"], "--out", folder["root"] / "out", "--pipeline",
                     path, "--dry-run", "-j", 1))
    within_bound(t0)
    assert os.path.exists(path)
