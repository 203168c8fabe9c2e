"""Pipelines: the --ops text form, YAML round trips, presets, fused execution, replay."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnncli.augment.pipeline import PRESETS, Pipeline, parse_ops, preset, resolve_pipeline
from cnncli.augment.transforms import PipelineError, _uniform


def test_parse_the_issue_example():
    pipe = parse_ops("flip,rotate=15,crop=0.8,brightness=0.2")
    assert [op.name for op in pipe.ops] == ["flip", "rotate", "crop", "brightness"]
    assert pipe.ops[0].p == 0.5 and pipe.ops[1]["limit"] == 15.0
    assert pipe.ops[2]["size"] == 0.8 and pipe.ops[3]["limit"] == 0.2


def test_parse_keyword_form_with_lists():
    pipe = parse_ops(
        "flip(p=1, axis=vertical), rotate(limit=10, border=reflect),"
        "random_resized_crop(size=224, area=[0.8, 1.0], ratio=[0.5, 2])"
    )
    assert pipe.ops[0].p == 1.0 and pipe.ops[0]["axis"] == "vertical"
    assert pipe.ops[1]["border"] == "reflect"
    assert pipe.ops[2]["area"] == [0.8, 1.0] and pipe.ops[2]["ratio"] == [0.5, 2.0]
    assert parse_ops(pipe.short()) == pipe


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flip,rotat=15", "unknown op 'rotat' (did you mean 'rotate'?)"),
        ("brightnes=0.2", "did you mean 'brightness'"),
        ("zzz", "unknown op 'zzz'; `cnn augment --list-ops` lists them"),
        ("rotate=fast", "op 'rotate' parameter 'limit'"),
        (
            "rotate(limit=10, bordr=edge)",
            "op 'rotate' has no parameter 'bordr' (did you mean 'border'?)",
        ),
        ("rotate(10)", "expected key=value"),
        ("rotate(limit=10", "unbalanced"),
        ("", "--ops is empty"),
    ],
)
def test_parse_errors_are_one_clear_line(text, message):
    with pytest.raises(PipelineError) as err:
        parse_ops(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_round_trip_is_exact(tmp_path):
    pipe = parse_ops(
        "flip,rotate(limit=12.5, border=reflect, fill=30),crop=0.9,random_resized_crop(size=64),"
        "resize(height=32, width=48),brightness=0.1,contrast=0.3,saturation=0.2,hue=0.01,"
        "pca(sigma=0.2),noise(sigma=3, per_channel=false),blur=1.5,cutout(holes=2)"
    )
    pipe.seed = 42
    path = tmp_path / "aug.yaml"
    pipe.save(path)
    loaded = Pipeline.load(path)
    assert loaded == pipe and loaded.seed == 42
    text = path.read_text()
    loaded.save(tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ops: 3\n", "'ops' must be a list"),
        ("version: 2\nops: []\n", "unsupported version"),
        ("ops:\n  - {op: rotate, limit: 400}\n", "op #1: op 'rotate' parameter 'limit'"),
        ("ops:\n  - {op: twist}\n", "op #1: unknown op 'twist'"),
        ("seed: -1\nops: []\n", "seed must be a non-negative integer"),
        ("ops: [\n", "not valid YAML"),
        ("colour: red\nops: []\n", "unknown key 'colour'"),
    ],
)
def test_bad_pipeline_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as err:
        Pipeline.load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_presets():
    assert set(PRESETS) >= {"digits", "photos"}
    digits = preset("digits")
    names = [op.name for op in digits.ops]
    assert "flip" not in names and {"rotate", "shift"} <= set(names)
    assert max(op["limit"] for op in digits.ops if op.name == "rotate") <= 15  # a 6 stays a 6
    assert "flip" not in [op.name for op in preset("default").ops]
    assert "flip" in [op.name for op in preset("photos").ops]
    with pytest.raises(PipelineError, match="did you mean 'digits'"):
        preset("digit")


def test_resolve_pipeline(tmp_path):
    assert resolve_pipeline("digits") == preset("digits")
    assert resolve_pipeline("flip,rotate=5") == parse_ops("flip,rotate=5")
    path = tmp_path / "p.yaml"
    parse_ops("blur=2").save(path)
    assert resolve_pipeline(str(path)) == parse_ops("blur=2")


def test_fused_lookup_tables_equal_op_by_op(rgb):
    """brightness -> contrast -> pca(folder) -> brightness fused into one table: same bytes."""
    pipe = parse_ops(
        "brightness=0.4,contrast=0.5,"
        "pca(sigma=0.5, eigen=folder, eigvals=[900, 100, 10], eigvecs=[[1,0,0],[0,1,0],[0,0,1]]),"
        "brightness=0.3,contrast=0.4"
    )
    for seed in range(5):
        recs = pipe.sample(np.random.default_rng(seed), rgb.shape)
        np.testing.assert_array_equal(pipe.apply(rgb, recs), pipe.apply_unfused(rgb, recs))


def test_fused_single_warp_equals_op_by_op_for_one_geometric_op(rgb):
    pipe = parse_ops("rotate(limit=20, border=edge),brightness=0.3,contrast=0.3,pca=0.3")
    for seed in range(3):
        recs = pipe.sample(np.random.default_rng(seed), rgb.shape)
        np.testing.assert_array_equal(pipe.apply(rgb, recs), pipe.apply_unfused(rgb, recs))


def test_fused_geometry_is_close_to_op_by_op(rgb):
    """Several geometric ops become one resampling: close to, and sharper than, op by op."""
    pipe = parse_ops(
        "flip(p=1),rotate(limit=10, border=reflect),scale(limit=0.1, border=reflect),crop=0.8"
    )
    recs = pipe.sample(np.random.default_rng(3), rgb.shape)
    fused, slow = pipe.apply(rgb, recs), pipe.apply_unfused(rgb, recs)
    assert fused.shape == slow.shape
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(fused[inner].astype(int) - slow[inner]).mean() < 4
    assert fused.astype(float).std() >= slow.astype(float).std() - 0.5


def test_flips_and_crops_alone_are_exact_slices(rgb):
    pipe = parse_ops("flip(p=1),flip(p=1, axis=vertical),crop=0.5")
    recs = pipe.sample(np.random.default_rng(0), rgb.shape)
    np.testing.assert_array_equal(pipe.apply(rgb, recs), pipe.apply_unfused(rgb, recs))


def test_sampling_is_reproducible_and_records_replay(rgb):
    pipe = preset("photos")
    img1, recs1 = pipe(rgb, np.random.default_rng(9))
    img2, recs2 = pipe(rgb, np.random.default_rng(9))
    assert recs1 == recs2
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(pipe.apply(rgb, recs1), img1)
    with pytest.raises(PipelineError, match="do not belong"):
        preset("digits").apply(rgb, recs1)


def test_size_changes_propagate_to_later_sampling(rgb):
    pipe = parse_ops("random_resized_crop(size=20),crop(height=10, width=10)")
    for seed in range(10):
        recs = pipe.sample(np.random.default_rng(seed), rgb.shape)
        assert recs[1]["top"] <= 10 and recs[1]["left"] <= 10
        assert pipe.apply(rgb, recs).shape == (10, 10, 3)


def test_uniform_draws_the_numbers_that_generator_uniform_draws():
    """Sampling's shortcut for ``rng.uniform`` must not change one recorded value."""
    ours, theirs = np.random.default_rng(3), np.random.default_rng(3)
    ratios = (math.log(3 / 4), math.log(4 / 3))
    ranges = [(-15.0, 15.0), (0.8, 1.2), (0.0, 1e-9), (-1e6, 1e6), ratios]
    for _ in range(2000):
        for low, high in ranges:
            assert _uniform(ours, low, high) == float(theirs.uniform(low, high))
    assert _uniform(ours, 2.0, 2.0) == 2.0  # an empty range draws nothing
    assert ours.random() == theirs.random()
