"""Pure transforms: real properties, and every Numba kernel against its NumPy twin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnncli.augment import functional as F

BORDERS = ("constant", "edge", "reflect")


# --------------------------------------------------------------------------- kernel == twin


def _random_case(rng: np.random.Generator):
    h, w = (int(v) for v in rng.integers(1, 30, 2))
    c = int(rng.choice([1, 2, 3, 4]))
    dtype = np.uint8 if rng.random() < 0.7 else np.uint16
    img = rng.integers(0, np.iinfo(dtype).max + 1, (h, w, c)).astype(dtype)
    s = rng.uniform(0.4, 1.8)
    m = (
        F.translation(rng.uniform(-5, w + 5), rng.uniform(-5, h + 5))
        @ F.rotation_matrix((h, w), rng.uniform(-180, 180))
        @ np.diag([s, s * rng.uniform(0.8, 1.25), 1.0])
    )
    out = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
    return img, m, out


@pytest.mark.parametrize("interpolation", F.INTERPOLATIONS)
@pytest.mark.parametrize("border", BORDERS)
def test_warp_kernel_matches_numpy_twin_bit_for_bit(interpolation, border):
    rng = np.random.default_rng(10 * F.INTERPOLATIONS.index(interpolation) + BORDERS.index(border))
    for _ in range(40):
        img, m, out = _random_case(rng)
        fill = int(rng.integers(0, 256))
        fast = F.warp_affine(
            img, m, out, interpolation=interpolation, border=border, fill=fill, antialias=False
        )
        slow = F.warp_affine_reference(
            img, m, out, interpolation=interpolation, border=border, fill=fill
        )
        assert fast.dtype == img.dtype and fast.shape == (*out, img.shape[2])
        np.testing.assert_array_equal(fast, slow)


def test_warp_accepts_read_only_arrays(rgb):
    ro = rgb.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(F.rotate(ro, 7.0), F.rotate(rgb, 7.0))


def test_box_reduce_is_the_block_mean():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (12, 18, 3)).astype(np.uint8)
    got = F.box_reduce(img, 3, 2)
    want = img.reshape(4, 3, 9, 2, 3).astype(np.int64).sum(axis=(1, 3))
    np.testing.assert_array_equal(got, (want + 3) // 6)
    # Partial blocks at the far edges average what they hold.
    odd = F.box_reduce(img[:11, :17], 3, 2)
    assert odd.shape == (4, 9, 3)
    np.testing.assert_array_equal(odd[-1, -1], np.round(img[9:11, 16:17].mean(axis=(0, 1)) + 1e-9))


def test_luts_and_histograms_match_numpy(rgb):
    rng = np.random.default_rng(2)
    luts = rng.integers(0, 256, (3, 256))
    got = F.apply_luts(rgb, luts)
    want = np.stack([luts[c][rgb[..., c]] for c in range(3)], axis=-1)
    np.testing.assert_array_equal(got, want)
    hist = F.channel_histograms(rgb)
    for c in range(3):
        np.testing.assert_array_equal(hist[c], np.bincount(rgb[..., c].ravel(), minlength=256))
    rgba = np.concatenate([rgb, rgb[..., :1]], axis=-1)
    luts4 = rng.integers(0, 256, (4, 256))
    np.testing.assert_array_equal(
        F.apply_luts(rgba, luts4), np.stack([luts4[c][rgba[..., c]] for c in range(4)], axis=-1)
    )


def test_mean_through_histograms_equals_mean_of_mapped_image(rgb):
    """What lets contrast join a fused lookup table: exact, not approximately equal."""
    table = F.colour_luts(3, F.brightness_lut(1.37, 255))
    assert F.luminance_mean_from_histograms(F.channel_histograms(rgb), table) == F.luminance_mean(
        F.apply_luts(rgb, table)
    )


# --------------------------------------------------------------------------- geometry


def test_flips_are_involutions_and_match_the_flip_matrix(rgb):
    np.testing.assert_array_equal(F.hflip(F.hflip(rgb)), rgb)
    np.testing.assert_array_equal(F.vflip(F.vflip(rgb)), rgb)
    np.testing.assert_array_equal(F.hflip(rgb), rgb[:, ::-1])
    for axis, want in (("horizontal", rgb[:, ::-1]), ("vertical", rgb[::-1])):
        for border in BORDERS:
            got = F.warp_affine(rgb, F.flip_matrix(rgb.shape, axis), rgb.shape[:2], border=border)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("border", BORDERS)
def test_rotate_zero_and_scale_one_are_identity(rgb, border):
    np.testing.assert_array_equal(F.rotate(rgb, 0.0, border=border), rgb)
    np.testing.assert_array_equal(F.scale(rgb, 1.0, border=border), rgb)
    np.testing.assert_array_equal(F.shift(rgb, 0.0, 0.0, border=border), rgb)


def test_rotate_90_is_counter_clockwise(rgb):
    square = np.ascontiguousarray(rgb[:, :64])
    for interpolation in F.INTERPOLATIONS:
        got = F.rotate(square, 90.0, interpolation=interpolation)
        np.testing.assert_array_equal(got, np.rot90(square, k=1))
        np.testing.assert_array_equal(
            F.rotate(square, -90.0, interpolation=interpolation), np.rot90(square, k=-1)
        )


def test_integer_shift_moves_pixels_and_fills(rgb):
    h, w = rgb.shape[:2]
    got = F.shift(rgb, 5, -3, border="constant", fill=200)
    np.testing.assert_array_equal(got[: h - 3, 5:], rgb[3:, : w - 5])
    assert (got[:, :5] == 200).all() and (got[h - 3 :] == 200).all()
    edge = F.shift(rgb, 5, 0, border="edge")
    np.testing.assert_array_equal(edge[:, :6], np.repeat(rgb[:, :1], 6, axis=1))
    mirrored = F.shift(rgb, 3, 0, border="reflect")
    np.testing.assert_array_equal(mirrored[:, :3], rgb[:, 2::-1])  # mirror about the edge


def test_constant_fill_makes_alpha_transparent(rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    got = F.shift(rgba, 10, 0, fill=255)
    assert (got[:, :10, 3] == 0).all() and (got[:, :10, :3] == 255).all()
    assert (got[:, 10:, 3] == 255).all()


def test_resize_never_darkens_borders_even_with_constant_fill():
    flat = np.full((8, 8, 3), 180, np.uint8)
    m = F.resized_crop_matrix(0, 0, 8, 8, 224, 224)
    for border in BORDERS:
        up = F.warp_affine(flat, m, (224, 224), border=border, fill=0)
        assert (up == 180).all(), border
    big = np.full((400, 600, 1), 90, np.uint8)
    assert (F.resize(big, 50, 70) == 90).all()  # 8x downscale: box-reduced first


def test_downscale_is_antialiased():
    """A one-pixel checkerboard shrunk 4x must come out mid-grey, not aliased to black/white."""
    board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None]
    small = F.resize(board, 64, 64)
    assert abs(float(small.mean()) - 127.5) < 2 and small.std() < 3
    assert F.reduce_factors(F.resized_crop_matrix(0, 0, 256, 256, 64, 64)) == (4, 4)


def test_crop_sizes_and_bounds(rgb):
    got = F.crop(rgb, 3, 4, 20, 30)
    assert got.shape == (20, 30, 3)
    np.testing.assert_array_equal(got, rgb[3:23, 4:34])
    with pytest.raises(ValueError):
        F.crop(rgb, 60, 0, 10, 10)
    same = F.resized_crop(rgb, 3, 4, 20, 30, 20, 30)
    np.testing.assert_array_equal(same, got)
    assert F.resized_crop(rgb, 0, 0, 40, 40, 7, 11).shape == (7, 11, 3)


def test_sixteen_bit_images_keep_their_range():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64, 1) * 16).astype(np.uint16)
    out = F.rotate(ramp, 10.0, border="edge")
    assert out.dtype == np.uint16 and out.max() > 60000
    assert F.adjust_brightness(ramp, 0.5).max() == round(ramp.max() * 0.5)


def test_rotation_matrix_is_the_documented_product_bit_for_bit():
    """Centre shifts made once per size must leave every bit of the matrix as it was."""
    for shape in ((64, 80, 3), (233, 311, 3), (1, 1, 1)):
        h, w = shape[:2]
        for angle in (0.0, -15.0, 7.3, 90.0):
            c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            want = F.translation(w / 2, h / 2) @ rot @ F.translation(-w / 2, -h / 2)
            assert F.rotation_matrix(shape, angle).tobytes() == want.tobytes()


def test_warp_fill_is_made_once_and_equals_fill_vector():
    for dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        for channels in (1, 2, 3, 4):
            vec = F._warp_fill(channels, 200, dtype)
            assert vec is F._warp_fill(channels, 200, dtype) and not vec.flags.writeable
            assert vec.dtype == dtype
            np.testing.assert_array_equal(vec, F.fill_vector(channels, 200, dtype))


# --------------------------------------------------------------------------- colour


def test_brightness_maths(rgb):
    np.testing.assert_array_equal(F.adjust_brightness(rgb, 1.0), rgb)
    got = F.adjust_brightness(rgb, 1.3)
    np.testing.assert_array_equal(got, np.clip(np.floor(rgb * 1.3 + 0.5), 0, 255).astype(np.uint8))
    assert (F.adjust_brightness(rgb, 0.0) == 0).all()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=-1)
    assert (F.adjust_brightness(rgba, 2.0)[..., 3] == 77).all()  # alpha untouched


def test_contrast_maths(rgb):
    np.testing.assert_array_equal(F.adjust_contrast(rgb, 1.0), rgb)
    mean = F.luminance_mean(rgb)
    flat = F.adjust_contrast(rgb, 0.0)
    assert (flat == int(np.floor(mean + 0.5))).all()
    got = F.adjust_contrast(rgb, 1.5)
    want = np.clip(np.floor(mean + 1.5 * (rgb - mean) + 0.5), 0, 255)
    np.testing.assert_array_equal(got, want)
    assert got.std() > rgb.std()


def test_saturation_and_hue(rgb):
    np.testing.assert_array_equal(F.adjust_saturation(rgb, 1.0), rgb)
    grey = F.adjust_saturation(rgb, 0.0).astype(int)
    assert (
        np.abs(grey[..., 0] - grey[..., 1]).max() <= 1
        and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1
    )
    np.testing.assert_array_equal(F.adjust_hue(rgb, 0.0), rgb)
    assert np.abs(F.adjust_hue(rgb, 1.0).astype(int) - rgb).max() <= 1  # a full turn
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert F.adjust_hue(red, 1 / 3)[0, 0].tolist() == [0, 255, 0]
    grey_img = rgb[..., :1].copy()
    np.testing.assert_array_equal(F.adjust_hue(grey_img, 0.2), grey_img)  # no-op on grey
    hsv = F.rgb_to_hsv(rgb / 255.0)
    np.testing.assert_allclose(F.hsv_to_rgb(hsv), rgb / 255.0, atol=1e-12)


def test_pca_eigen_is_orthonormal_and_sorted(rgb):
    vals, vecs = F.image_eigen(rgb)
    assert (np.diff(vals) <= 0).all() and (vals >= 0).all()
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=1e-10)
    cov = np.cov(rgb.reshape(-1, 3).astype(float), rowvar=False)
    np.testing.assert_allclose(cov @ vecs, vecs * vals, atol=1e-6 * vals.max())


def test_pca_colour_shifts_along_the_eigenvectors(rgb):
    mid = (rgb // 2 + 64).astype(np.uint8)  # no clipping for moderate shifts
    vals, vecs = F.image_eigen(mid)
    np.testing.assert_array_equal(F.pca_colour(mid, vals, vecs, [0, 0, 0]), mid)
    alpha = [0.2, 0.0, 0.0]
    out = F.pca_colour(mid, vals, vecs, alpha)
    assert out.shape == mid.shape and out.dtype == mid.dtype
    delta = (out.astype(float) - mid).reshape(-1, 3).mean(axis=0)
    expected = vecs[:, 0] * 0.2 * np.sqrt(vals[0])
    np.testing.assert_allclose(delta, expected, atol=0.51)  # rounding only
    # The shift is parallel to the first principal axis.
    cosine = delta @ vecs[:, 0] / np.linalg.norm(delta)
    assert abs(cosine) > 0.99
    grey = mid[..., :1]
    np.testing.assert_array_equal(F.pca_colour(grey, vals, vecs, alpha), grey)


def test_noise_is_a_function_of_its_seed(rgb):
    a = F.gaussian_noise(rgb, 10.0, 123)
    np.testing.assert_array_equal(a, F.gaussian_noise(rgb, 10.0, 123))
    assert not np.array_equal(a, F.gaussian_noise(rgb, 10.0, 124))
    np.testing.assert_array_equal(F.gaussian_noise(rgb, 0.0, 5), rgb)
    mid = np.full((200, 200, 3), 128, np.uint8)
    diff = F.gaussian_noise(mid, 10.0, 1).astype(float) - 128
    assert 9.5 < diff.std() < 10.5 and abs(diff.mean()) < 0.2
    same = F.gaussian_noise(mid, 10.0, 1, per_channel=False)
    assert (same[..., 0] == same[..., 1]).all()


def test_blur(rgb):
    np.testing.assert_array_equal(F.gaussian_blur(rgb, 0.0), rgb)
    flat = np.full((20, 20, 3), 99, np.uint8)
    np.testing.assert_array_equal(F.gaussian_blur(flat, 2.0), flat)
    assert F.gaussian_blur(rgb, 2.0).astype(float).std() < rgb.astype(float).std()
    k = F.gaussian_kernel(1.5)
    assert k.size == 11 and abs(k.sum() - 1) < 1e-12 and k.argmax() == 5


def test_cutout_paints_boxes_clipped_to_the_image(rgb):
    out = F.cutout(rgb, [[-5, -5, 10, 10], [60, 70, 20, 20]], fill=7)
    assert (out[:5, :5] == 7).all() and (out[60:, 70:] == 7).all()
    np.testing.assert_array_equal(out[5:60, 5:70], rgb[5:60, 5:70])


@pytest.mark.parametrize("top", [255, 65535])
def test_tables_are_clip_of_floor_x_plus_half(top):
    """Every entry of every table op equals ``clip(floor(x + 0.5), 0, top)`` of its formula
    computed the obvious way: halves, negatives and overflows included."""
    ramp = np.arange(top + 1, dtype=np.float64)

    def want(values: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(values + 0.5), 0, top).astype(np.int64)

    for factor in (0.0, 0.5, 0.999, 1.0, 1.001, 1.5, 2.0, 1e300):
        np.testing.assert_array_equal(F.brightness_lut(factor, top), want(ramp * factor))
        for mean in (0.0, top / 3, top - 0.5):
            got = F.contrast_lut(factor, mean, top)
            np.testing.assert_array_equal(got, want((ramp - mean) * factor + mean))
    for offset in (-top - 1.0, -0.5, 0.5, 2.5, top + 0.5):
        np.testing.assert_array_equal(F.offset_lut(offset, top), want(ramp + offset))
