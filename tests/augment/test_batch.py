"""On-the-fly batch augmentation: the contract ``cnn train --augment`` relies on."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.augment import functional as F
from cnncli.augment.batch import augment_batch, supported_ops, warp_batch, warp_batch_reference
from cnncli.augment.pipeline import Pipeline, parse_ops, preset
from cnncli.augment.transforms import OPS, PipelineError


def batch_of(rgb: np.ndarray, n: int = 4) -> np.ndarray:
    imgs = [rgb, rgb[::-1], rgb[:, ::-1], rgb[::-1, ::-1]][:n]
    return np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def test_contract_shape_dtype_determinism(rgb):
    x = batch_of(rgb)
    keep = x.copy()
    pipe = preset("photos")
    a = augment_batch(x, pipe, np.random.default_rng(0))
    b = augment_batch(x, pipe, np.random.default_rng(0))
    c = augment_batch(x, pipe, np.random.default_rng(1))
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(x, keep)  # input untouched
    assert a.min() >= 0 and a.max() <= 1


def test_every_op_is_supported():
    assert sorted(supported_ops()) == sorted(OPS)


def test_each_image_gets_its_own_parameters(rgb):
    x = np.repeat(batch_of(rgb, 1), 6, axis=0)
    out, params = augment_batch(
        x, parse_ops("rotate=30"), np.random.default_rng(0), return_params=True
    )
    angles = [p[0]["angle"] for p in params]
    assert len(set(angles)) == 6
    assert not np.allclose(out[0], out[1])


def test_flips_are_exact(rgb):
    x = batch_of(rgb)
    out = augment_batch(x, parse_ops("flip(p=1)"), np.random.default_rng(0))
    np.testing.assert_array_equal(out, x[..., ::-1])
    twice = augment_batch(x, parse_ops("flip(p=1),flip(p=1)"), np.random.default_rng(0))
    np.testing.assert_array_equal(twice, x)


@pytest.mark.parametrize("border", ["constant", "edge", "reflect"])
def test_batch_warp_matches_the_image_kernel(rgb, border):
    """Same matrices and border model; float here, rounded to integers there."""
    rng = np.random.default_rng(3)
    mats = np.stack(
        [
            F.rotation_matrix(rgb.shape, rng.uniform(-20, 20))
            @ F.scale_matrix(rgb.shape, rng.uniform(0.8, 1.2))
            for _ in range(3)
        ]
    )
    x = np.repeat(batch_of(rgb, 1), 3, axis=0)
    got = warp_batch(x, mats, rgb.shape[:2], border=border, fill=0.5)
    for i in range(3):
        want = F.warp_affine(rgb, mats[i], rgb.shape[:2], border=border, fill=127.5)
        diff = np.abs(got[i].transpose(1, 2, 0) * 255 - want)
        assert diff.max() <= 1.01, (border, i, diff.max())


def test_colour_ops_match_the_image_functions(rgb):
    x = batch_of(rgb, 1)
    for text, fn, key in (
        ("brightness=0.5", F.adjust_brightness, "factor"),
        ("contrast=0.5", F.adjust_contrast, "factor"),
        ("saturation=0.5", F.adjust_saturation, "factor"),
        ("hue=0.3", F.adjust_hue, "shift"),
    ):
        out, params = augment_batch(
            x, parse_ops(text), np.random.default_rng(4), return_params=True
        )
        want = fn(rgb, params[0][0][key])
        assert np.abs(out[0].transpose(1, 2, 0) * 255 - want).max() <= 1.01, text


def test_noise_matches_the_image_function(rgb):
    mid = (rgb // 2 + 64).astype(np.uint8)  # no clipping
    x = batch_of(mid, 1)
    out, params = augment_batch(
        x, parse_ops("noise=6"), np.random.default_rng(0), return_params=True
    )
    want = F.gaussian_noise(mid, 6.0, params[0][0]["seed"])
    assert np.abs(out[0].transpose(1, 2, 0) * 255 - want).max() <= 0.51


def test_value_range_scales_fills_and_levels(rgb):
    x = batch_of(rgb)
    pipe = parse_ops("shift(limit=0.3, fill=255),brightness=0.3,noise=4,cutout(fill=0)")
    unit = augment_batch(x, pipe, np.random.default_rng(8))
    byte = augment_batch(x * 255, pipe, np.random.default_rng(8), value_range=(0, 255))
    np.testing.assert_allclose(byte, unit * 255, atol=1e-3)


def test_sizes_and_the_p_rule(rgb):
    x = batch_of(rgb)
    out = augment_batch(
        x,
        parse_ops("random_resized_crop(size=24),crop(height=16, width=20)"),
        np.random.default_rng(0),
    )
    assert out.shape == (4, 3, 16, 20)
    with pytest.raises(PipelineError, match="p=1"):
        augment_batch(x, parse_ops("crop(size=0.5, p=0.5)"), np.random.default_rng(1))


def test_accepts_preset_names_and_grey_batches():
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    out = augment_batch(x, "digits", np.random.default_rng(0))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        augment_batch(x[0], "digits", np.random.default_rng(0))
    assert augment_batch(x[:0], Pipeline([]), np.random.default_rng(0)).shape == (0, 1, 28, 28)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("border", ["constant", "edge", "reflect"])
def test_batch_kernel_matches_its_numpy_twin(border, interpolation):
    rng = np.random.default_rng(5)
    x = rng.random((5, 2, 13, 17), dtype=np.float32)
    mats = np.stack(
        [
            F.translation(rng.uniform(-3, 3), rng.uniform(-3, 3))
            @ F.rotation_matrix((13, 17), rng.uniform(-180, 180))
            @ F.scale_matrix((13, 17), rng.uniform(0.5, 1.5))
            for _ in range(5)
        ]
    )
    kw = {"interpolation": interpolation, "border": border, "fill": 0.25}
    fast = warp_batch(x, mats, (11, 19), **kw)
    slow = warp_batch_reference(x, mats, (11, 19), **kw)
    np.testing.assert_allclose(fast, slow, atol=2e-3)  # 1/1024 weight steps
