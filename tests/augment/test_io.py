"""Reading awkward real files and writing atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.augment.io import ImageReadError, encode_image, read_image
from cnncli.fileio import atomic_write_bytes as write_atomic

DATA = Path(__file__).resolve().parents[1] / "data" / "images"
EDGE, PHOTOS = DATA / "edge", DATA / "photos"

UNUSUAL = EDGE / "unusual"
BROKEN = EDGE / "broken"


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_exif_orientation_is_applied():
    raw = Image.open(UNUSUAL / "exif_orientation6_chelsea.jpg")
    assert raw.size == (300, 451)  # stored sideways
    pixels, meta = read_image(UNUSUAL / "exif_orientation6_chelsea.jpg")
    assert pixels.shape == (300, 451, 3)  # upright: wider than high
    out = decode(encode_image(pixels, meta, "JPEG"))
    assert out.size == (451, 300) and out.getexif().get(0x0112) in (None, 1)


def test_rgba_keeps_alpha_and_png_stays_rgba():
    pixels, meta = read_image(UNUSUAL / "rgba_coffee.png")
    assert pixels.shape == (400, 600, 4) and pixels[0, 0, 3] == 0 and pixels[200, 300, 3] == 255
    assert decode(encode_image(pixels, meta, "PNG")).mode == "RGBA"
    flat = decode(encode_image(pixels, meta, "JPEG"))  # JPEG has no alpha: over white
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)


def test_palette_is_expanded_then_mapped_back_onto_its_palette():
    src = Image.open(UNUSUAL / "palette_coffee.png")
    pixels, meta = read_image(UNUSUAL / "palette_coffee.png")
    assert pixels.shape == (400, 600, 3) and meta.palette is not None
    out = decode(encode_image(pixels, meta, "PNG"))
    assert out.mode == "P"
    assert out.getpalette()[:48] == src.getpalette()[:48]
    np.testing.assert_array_equal(np.array(out.convert("RGB")), np.array(src.convert("RGB")))


def test_sixteen_bit_grey_is_not_turned_white():
    """Pillow's own convert('L') of an I;16 image clips to 255: the trap to avoid."""
    pixels, meta = read_image(UNUSUAL / "gray16_camera.png")
    assert pixels.dtype == np.uint16 and pixels.shape == (512, 512, 1)
    assert pixels.min() < 10_000 and pixels.max() > 60_000
    png = decode(encode_image(pixels, meta, "PNG"))
    assert png.mode == "I;16"
    np.testing.assert_array_equal(np.array(png), pixels[..., 0])
    jpg = np.array(decode(encode_image(pixels, meta, "JPEG")))
    assert jpg.dtype == np.uint8 and jpg.mean() < 200 and jpg.std() > 30  # not white
    assert abs(jpg.astype(float).mean() - pixels.mean() / 257) < 2


def test_tiny_and_greyscale_images():
    pixels, _ = read_image(UNUSUAL / "tiny_8x8_chelsea.png")
    assert pixels.shape == (8, 8, 3)
    digit = next((EDGE.parent / "digits" / "6").iterdir())
    grey, meta = read_image(digit)
    assert grey.shape == (28, 28, 1) and grey.dtype == np.uint8
    assert decode(encode_image(grey, meta, "PNG")).mode == "L"


def test_read_arrays_are_writable():
    pixels, _ = read_image(PHOTOS / "cat" / "chelsea_crop_face.jpg")
    assert pixels.flags.writeable and pixels.flags.c_contiguous


@pytest.mark.parametrize(
    ("name", "reason"),
    [("truncated_china.jpg", "truncated"), ("not_an_image.jpg", "not a readable image")],
)
def test_broken_files_raise_one_line_reasons(name, reason):
    with pytest.raises(ImageReadError) as err:
        read_image(BROKEN / name)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_decompression_bomb_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    with pytest.raises(ImageReadError, match="too many pixels: 3000x2000"):
        read_image(path, max_pixels=1_000_000)
    assert read_image(path, max_pixels=6_000_000)[0].shape == (2000, 3000, 1)


def test_missing_dangling_and_looping_files(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "dangling.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(ImageReadError, match="loop"):
        read_image(tmp_path / "loop.png")


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.bin"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_write_atomic_takes_string_and_bare_file_names(tmp_path, monkeypatch):
    write_atomic(str(tmp_path / "a.bin"), b"a")
    monkeypatch.chdir(tmp_path)
    write_atomic("b.bin", b"b")  # no folder part: the temporary file goes to the current one
    assert (tmp_path / "a.bin").read_bytes() == b"a" and (tmp_path / "b.bin").read_bytes() == b"b"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]


def test_other_formats_round_trip(tmp_path):
    pixels, meta = read_image(PHOTOS / "cat" / "chelsea_crop_face.jpg")
    for fmt in ("BMP", "TIFF", "WEBP"):
        path = tmp_path / f"x.{fmt.lower()}"
        path.write_bytes(encode_image(pixels, meta, fmt))
        again, meta2 = read_image(path)
        assert again.shape == pixels.shape and meta2.format == fmt


def _png48(path: Path, w: int = 4, h: int = 3) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(range(6 * w)) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_48_bit_png_is_read_with_a_warning(tmp_path):
    path = tmp_path / "deep.png"
    _png48(path)
    pixels, meta = read_image(path)
    assert pixels.shape == (3, 4, 3) and pixels.dtype == np.uint8
    assert any("8 bits per channel" in w for w in meta.warnings)
