"""The op registry, table-driven: every registered op must have a case here.

Each case gives a configuration and a check of what the op must do with the parameters it
sampled; the generic tests run every op over every image mode, JSON records, ``p`` and
round-trips of its configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from cnncli.augment import functional as F
from cnncli.augment.batch import augment_batch
from cnncli.augment.pipeline import Pipeline, parse_ops
from cnncli.augment.transforms import OPS, PipelineError, describe_ops, make_op


@dataclass
class Case:
    config: dict[str, Any]
    check: Callable[[np.ndarray, np.ndarray, dict[str, Any], Any], None]
    extra: list[dict[str, Any]] = field(default_factory=list)  # more configs to smoke-test


def _flip(img, out, prm, op):
    want = F.hflip(img) if op["axis"] == "horizontal" else F.vflip(img)
    np.testing.assert_array_equal(out, want)


def _rotate(img, out, prm, op):
    assert -op["limit"] <= prm["angle"] <= op["limit"]
    want = F.rotate(img, prm["angle"], border=op["border"], fill=op["fill"])
    np.testing.assert_array_equal(out, want)


def _shift(img, out, prm, op):
    h, w = img.shape[:2]
    assert abs(prm["dx"]) <= op["limit"] * w and abs(prm["dy"]) <= op["limit"] * h
    np.testing.assert_array_equal(out, F.shift(img, prm["dx"], prm["dy"], border=op["border"]))


def _scale(img, out, prm, op):
    assert 1 - op["limit"] <= prm["factor"] <= 1 + op["limit"]
    np.testing.assert_array_equal(out, F.scale(img, prm["factor"], border=op["border"]))


def _crop(img, out, prm, op):
    h, w = img.shape[:2]
    assert out.shape[:2] == (round(h * op["size"]), round(w * op["size"]))
    t, l = prm["top"], prm["left"]
    np.testing.assert_array_equal(out, img[t : t + out.shape[0], l : l + out.shape[1]])


def _rrc(img, out, prm, op):
    h, w = img.shape[:2]
    assert out.shape[:2] == (op["size"], op["size"])
    assert prm["top"] >= 0 and prm["top"] + prm["height"] <= h
    assert prm["left"] >= 0 and prm["left"] + prm["width"] <= w
    area = prm["height"] * prm["width"] / (h * w)
    assert op["area"][0] - 0.05 <= area <= op["area"][1] + 1e-9


def _resize(img, out, prm, op):
    assert out.shape[:2] == (op["height"], op["width"])
    flat = np.full_like(img, 100)
    assert (op.apply(flat, prm) == 100).all()


def _brightness(img, out, prm, op):
    assert 1 - op["limit"] <= prm["factor"] <= 1 + op["limit"]
    np.testing.assert_array_equal(out, F.adjust_brightness(img, prm["factor"]))


def _contrast(img, out, prm, op):
    np.testing.assert_array_equal(out, F.adjust_contrast(img, prm["factor"]))


def _saturation(img, out, prm, op):
    np.testing.assert_array_equal(out, F.adjust_saturation(img, prm["factor"]))


def _hue(img, out, prm, op):
    assert abs(prm["shift"]) <= op["limit"]
    np.testing.assert_array_equal(out, F.adjust_hue(img, prm["shift"]))


def _pca(img, out, prm, op):
    assert len(prm["alpha"]) == 3
    vals, vecs = F.image_eigen(img)
    np.testing.assert_array_equal(out, F.pca_colour(img, vals, vecs, prm["alpha"]))
    assert np.abs(out.astype(int) - img).max() > 0


def _noise(img, out, prm, op):
    assert 0 <= prm["seed"] < 2**32
    np.testing.assert_array_equal(out, F.gaussian_noise(img, op["sigma"], prm["seed"]))


def _blur(img, out, prm, op):
    assert 0 <= prm["sigma"] <= op["sigma"]
    np.testing.assert_array_equal(out, F.gaussian_blur(img, prm["sigma"]))


def _cutout(img, out, prm, op):
    assert len(prm["boxes"]) == op["holes"]
    side = round(min(img.shape[:2]) * op["size"])
    assert all(b[2] == b[3] == side for b in prm["boxes"])
    np.testing.assert_array_equal(out, F.cutout(img, prm["boxes"], op["fill"]))


OP_CASES: dict[str, Case] = {
    "flip": Case({"p": 1.0}, _flip, [{"axis": "vertical"}]),
    "rotate": Case(
        {"limit": 30.0, "border": "edge"},
        _rotate,
        [{"border": "reflect"}, {"interpolation": "nearest"}],
    ),
    "shift": Case({"limit": 0.2, "border": "reflect"}, _shift, [{"fill": 255}]),
    "scale": Case({"limit": 0.3, "border": "constant"}, _scale, [{"border": "edge"}]),
    "crop": Case({"size": 0.5}, _crop, [{"height": 5, "width": 7}]),
    "random_resized_crop": Case(
        {"size": 24, "area": [0.3, 0.6]}, _rrc, [{"height": 10, "width": 20}]
    ),
    "resize": Case({"height": 17, "width": 31}, _resize, [{"size": 8, "interpolation": "nearest"}]),
    "brightness": Case({"limit": 0.5}, _brightness),
    "contrast": Case({"limit": 0.5}, _contrast),
    "saturation": Case({"limit": 0.5}, _saturation),
    "hue": Case({"limit": 0.2}, _hue),
    "pca": Case(
        {"sigma": 0.5},
        _pca,
        [{"eigen": "folder", "eigvals": [900.0, 100.0, 10.0], "eigvecs": np.eye(3).tolist()}],
    ),
    "noise": Case({"sigma": 8.0}, _noise, [{"per_channel": False}]),
    "blur": Case({"sigma": 2.0}, _blur),
    "cutout": Case({"size": 0.3, "holes": 3, "fill": 128}, _cutout),
}


def test_every_registered_op_has_a_test_case():
    missing = sorted(set(OPS) - set(OP_CASES))
    stale = sorted(set(OP_CASES) - set(OPS))
    assert not missing, f"registered ops without a test case in OP_CASES: {missing}"
    assert not stale, f"OP_CASES for ops that are not registered: {stale}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_does_what_it_says(name, rgb):
    case = OP_CASES[name]
    op = make_op(name, case.config)
    for seed in range(3):
        prm = op.sample(np.random.default_rng(seed), rgb.shape)
        out = op.apply(rgb, prm)
        assert out.shape == op.output_shape(prm, rgb.shape)
        case.check(rgb, out, prm, op)


MODES = {
    "L": (np.uint8, 1),
    "LA": (np.uint8, 2),
    "RGB": (np.uint8, 3),
    "RGBA": (np.uint8, 4),
    "I;16": (np.uint16, 1),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_keeps_dtype_and_channels_in_every_mode(name, rgb):
    case = OP_CASES[name]
    for config in [case.config, *case.extra]:
        op = make_op(name, config)
        for mode, (dtype, c) in MODES.items():
            base = rgb.astype(np.uint16) * 257 if dtype == np.uint16 else rgb
            img = np.ascontiguousarray(np.concatenate([base, base[..., :1]], axis=-1)[..., :c])
            prm = op.sample(np.random.default_rng(7), img.shape)
            json.dumps(prm)  # records are plain JSON
            out = op.apply(img, prm)
            assert out.dtype == dtype, (mode, config)
            assert out.shape == op.output_shape(prm, img.shape), (mode, config)
            # Deterministic given the parameters.
            np.testing.assert_array_equal(out, op.apply(img, prm))


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_config_round_trips_and_p_is_honoured(name, rgb):
    case = OP_CASES[name]
    op = make_op(name, case.config)
    again = make_op(name, {k: v for k, v in op.to_dict().items() if k != "op"})
    assert again == op
    assert parse_ops(op.short()).ops == [op]
    for p, want in ((0.0, False), (1.0, True)):
        pipe = Pipeline([make_op(name, {**case.config, "p": p})])
        recs = [pipe.sample(np.random.default_rng(s), rgb.shape)[0] for s in range(5)]
        assert all(r["applied"] is want for r in recs)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_works_in_batches(name, rgb):
    op = make_op(name, OP_CASES[name].config)
    x = np.stack([rgb, rgb[::-1]]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    out = augment_batch(x, Pipeline([op]), np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape[:2] == (2, 3)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_list_of_ops_describes_every_parameter():
    rows = {r["op"]: r for r in describe_ops()}
    assert set(rows) == set(OPS)
    for name, cls in OPS.items():
        names = [p["name"] for p in rows[name]["params"]]
        assert names == ["p", *[prm.name for prm in cls.params]]
        assert all(p["help"] for p in rows[name]["params"])


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("rotate", {"limit": "abc"}, "op 'rotate' parameter 'limit': expected float in [0, 180]"),
        ("rotate", {"limit": 500}, "out of range"),
        ("rotate", {"limt": 5}, "op 'rotate' has no parameter 'limt' (did you mean 'limit'?)"),
        ("rotate", {"border": "wrap"}, "expected constant|edge|reflect"),
        ("flip", {"p": 1.5}, "op 'flip' parameter 'p'"),
        ("crop", {"height": 2.5}, "not a whole number"),
        ("random_resized_crop", {"area": [0.9, 0.1]}, "low > high"),
        ("pca", {"eigvals": [1.0, 2.0, 3.0]}, "give both 'eigvals' and 'eigvecs'"),
        ("noise", {"per_channel": "maybe"}, "expected bool"),
    ],
)
def test_bad_parameters_name_the_op_and_the_parameter(name, config, message):
    with pytest.raises(PipelineError) as err:
        make_op(name, config)
    assert message in str(err.value)


def test_pca_folder_mode_needs_eigen(rgb):
    op = make_op("pca", {"eigen": "folder"})
    with pytest.raises(PipelineError, match="eigen=folder"):
        op.apply(rgb, op.sample(np.random.default_rng(0), rgb.shape))
