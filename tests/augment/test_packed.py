"""8-bit RGB(A) held 4 bytes per pixel: the packed kernels against the byte kernels and twins."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.augment import _kernels as K
from cnncli.augment import functional as F
from cnncli.augment.functional import to_rgbx
from cnncli.augment.io import encode_image, read_image, rgbx_base, to_pil
from cnncli.augment.pipeline import parse_ops

PHOTO = Path(__file__).resolve().parents[1] / "data" / "images" / "photos" / "cat"
PHOTO = PHOTO / "chelsea_crop_face.jpg"
BORDERS = ("constant", "edge", "reflect")
BENCH_OPS = (
    "flip(p=0.5),rotate(limit=15),random_resized_crop(size=224, area=[0.8, 1.0]),"
    "brightness(limit=0.2),contrast(limit=0.2)"
)


def _case(rng: np.random.Generator, channels: int):
    """A random image and a random affine map onto an output up to 300 pixels wide (rows
    longer than the kernel's 256-pixel stack buffer)."""
    h, w = (int(v) for v in rng.integers(1, 70, 2))
    img = rng.integers(0, 256, (h, w, channels)).astype(np.uint8)
    s = rng.uniform(0.2, 1.8)
    m = (
        F.translation(rng.uniform(-5, w + 5), rng.uniform(-5, h + 5))
        @ F.rotation_matrix((h, w), rng.uniform(-180, 180))
        @ np.diag([s, s * rng.uniform(0.8, 1.25), 1.0])
    )
    return img, m, (int(rng.integers(1, 40)), int(rng.integers(1, 300)))


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("interpolation", F.INTERPOLATIONS)
@pytest.mark.parametrize("border", BORDERS)
def test_packed_warp_equals_byte_kernel_and_numpy_twin(channels, interpolation, border):
    rng = np.random.default_rng(100 * channels + 10 * BORDERS.index(border) + len(interpolation))
    for _ in range(25):
        img, m, out = _case(rng, channels)
        fill = int(rng.integers(0, 256))
        kw = {"interpolation": interpolation, "border": border, "fill": fill}
        src = to_rgbx(img) if channels == 3 else img
        packed = F.warp_affine(src, m, out, antialias=False, **kw)
        assert channels == 4 or rgbx_base(packed) is not None  # the packed kernel wrote it
        byte = np.empty((*out, channels), np.uint8)
        fillv = F.fill_vector(channels, fill, np.uint8)
        mode, bilinear = F.BORDERS[border], interpolation == "bilinear"
        K.warp_affine(img, np.ascontiguousarray(m[:2]), byte, fillv, mode, bilinear)
        np.testing.assert_array_equal(packed, byte)
        np.testing.assert_array_equal(packed, F.warp_affine_reference(img, m, out, **kw))


def test_rgbx_layout_is_recognised_only_when_it_is_there(rgb):
    padded = to_rgbx(rgb)
    np.testing.assert_array_equal(padded, rgb)
    base = rgbx_base(padded)
    assert base is not None and base.shape == (*rgb.shape[:2], 4) and (base[..., 3] == 255).all()
    assert np.shares_memory(base, padded)
    assert rgbx_base(rgb) is None  # plain RGB
    assert rgbx_base(base[..., 1:]) is None  # same strides, but shifted by one byte
    assert rgbx_base(base[:, ::2, :3]) is None
    assert F.packed_words(rgb) is None and F.packed_words(rgb, pad=True) is not None
    assert F.packed_words(padded).shape == rgb.shape[:2]
    assert F.packed_words(padded[..., :1]) is None
    assert F.packed_words(padded.astype(np.uint16)) is None


def test_read_image_rgbx_gives_the_same_pixels_in_the_packed_layout():
    plain, _ = read_image(PHOTO)
    packed, meta = read_image(PHOTO, rgbx=True)
    np.testing.assert_array_equal(packed, plain)
    assert rgbx_base(packed) is not None and not packed.flags.writeable
    assert meta.format == "JPEG"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_packed_rgb_encodes_to_the_same_file(rgb, fmt):
    _, meta = read_image(PHOTO)
    assert encode_image(to_rgbx(rgb), meta, fmt) == encode_image(rgb, meta, fmt)
    assert to_pil(to_rgbx(rgb), rgbx=True).mode == "RGBX"
    assert to_pil(to_rgbx(rgb)).mode == "RGB"
    with Image.open(io.BytesIO(encode_image(to_rgbx(rgb), meta, "PNG"))) as im:
        np.testing.assert_array_equal(np.array(im), rgb)


@pytest.mark.parametrize("channels", [3, 4])
def test_packed_luts_equal_plain_tables(rgb, channels):
    img = rgb if channels == 3 else np.concatenate([rgb, rgb[..., :1] // 2], axis=-1)
    src = to_rgbx(img) if channels == 3 else img
    luts = np.random.default_rng(channels).integers(0, 256, (channels, 256))
    want = np.stack([luts[c][img[..., c]] for c in range(channels)], axis=-1)
    np.testing.assert_array_equal(F.apply_luts(src, luts), want)
    scratch = src.copy() if channels == 4 else to_rgbx(img)
    out = F.apply_luts(scratch, luts, inplace=True)
    np.testing.assert_array_equal(out, want)
    assert np.shares_memory(out, scratch)
    np.testing.assert_array_equal(src, img)  # not in place: the input is left alone


@pytest.mark.parametrize("kind", ["rgbx", "rgba", "rgb", "grey", "grey16"])
def test_mean_through_tables_is_exactly_the_mean_of_the_mapped_image(rgb, kind):
    """What lets contrast join a fused table, on every path: equal floats, not close ones."""
    img = {
        "rgbx": to_rgbx(rgb),
        "rgba": np.concatenate([rgb, rgb[..., :1]], axis=-1),
        "rgb": rgb,
        "grey": rgb[..., 1:2].copy(),
        "grey16": rgb[..., :1].astype(np.uint16) * 257,
    }[kind]
    top = F.maxval(img)
    table = F.colour_luts(img.shape[2], F.brightness_lut(1.37, top))
    want = F.luminance_mean(F.apply_luts(img, table))
    assert F.luminance_mean_through(img, table) == want
    assert F.luminance_mean_through(img) == F.luminance_mean(img)


def test_compose_luts_applies_second_after_first():
    rng = np.random.default_rng(5)
    first, second = rng.integers(0, 256, (2, 4, 256))
    np.testing.assert_array_equal(
        F.compose_luts(second, first), np.take_along_axis(second, first, axis=1)
    )


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [256, 65536])
def test_compose_luts_for_every_channel_count_and_depth(channels, n):
    rng = np.random.default_rng(channels)
    first, second = rng.integers(0, n, (2, channels, n))
    want = np.take_along_axis(second, first, axis=1)
    np.testing.assert_array_equal(F.compose_luts(second, first), want)


def _reference(pipe, img: np.ndarray, recs: list) -> np.ndarray:
    """The geometric ops as one warp by the NumPy twin, then the table ops one by one."""
    matrix, shape = np.eye(3), img.shape
    applied = [(op, rec) for op, rec in zip(pipe.ops, recs) if rec["applied"]]
    for op, rec in applied:
        if op.kind == "geometric":
            matrix, shape = matrix @ op.matrix(rec, shape), op.output_shape(rec, shape)
    out = F.warp_affine_reference(np.ascontiguousarray(img), matrix, shape[:2])
    for op, rec in applied:
        if op.kind == "lut":
            out = op.apply(out, rec)
    return out


def test_fused_pipeline_on_packed_input_equals_the_reference():
    """The benchmark's pipeline on a real photo read as the runner reads it."""
    packed, _ = read_image(PHOTO, rgbx=True)
    plain = np.ascontiguousarray(packed)
    pipe = parse_ops(BENCH_OPS)
    for seed in range(6):
        recs = pipe.sample(np.random.default_rng(seed), packed.shape)
        fused = pipe.apply(packed, recs)
        assert rgbx_base(fused) is not None  # stays packed through the warp and the tables
        np.testing.assert_array_equal(fused, _reference(pipe, plain, recs))
        np.testing.assert_array_equal(fused, pipe.apply(plain, recs))


def test_one_warp_and_tables_on_packed_input_equal_op_by_op():
    packed, _ = read_image(PHOTO, rgbx=True)
    pipe = parse_ops("rotate(limit=15, border=reflect),brightness=0.3,contrast=0.3")
    for seed in range(4):
        recs = pipe.sample(np.random.default_rng(seed), packed.shape)
        np.testing.assert_array_equal(pipe.apply(packed, recs), pipe.apply_unfused(packed, recs))


def test_exact_slices_keep_the_packed_layout(rgb):
    pipe = parse_ops("flip(p=1),crop=0.5,brightness=0.3")
    recs = pipe.sample(np.random.default_rng(1), rgb.shape)
    out = pipe.apply(to_rgbx(rgb), recs)
    np.testing.assert_array_equal(out, pipe.apply_unfused(rgb, recs))
    assert rgbx_base(out) is not None
