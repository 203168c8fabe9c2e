"""Data loading: the shipped MNIST subset, IDX, npz and image folders, fitting, errors, batches."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.data import DataSplits, Normalizer, batches, load_dataset, num_batches
from cnncli.data.fit import fit_array, plan_fit, to_channels
from cnncli.data.idx import read_idx, read_idx_images, read_idx_labels
from cnncli.errors import CnnError, DataError

MNIST = Path(__file__).resolve().parents[2] / "sample_data" / "mnist"
TRAIN_X = "train-images-idx3-ubyte"
TRAIN_Y = "train-labels-idx1-ubyte"
TEST_X = "t10k-images-idx3-ubyte"
TEST_Y = "t10k-labels-idx1-ubyte"


@pytest.fixture(scope="module")
def mnist28() -> DataSplits:
    return load_dataset(MNIST, (28, 28, 1))


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_folder(folder: Path, x: np.ndarray, y: np.ndarray, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((TRAIN_X, _idx_bytes(x, 2051)), (TRAIN_Y, _idx_bytes(y, 2049))):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


# -- the shipped MNIST subset ----------------------------------------------------------------


def test_sample_mnist_shapes_labels_and_statistics(mnist28: DataSplits) -> None:
    d = mnist28
    assert d.source == "idx"
    assert d.train.x.shape == (4000, 1, 28, 28) and d.train.x.dtype == np.float32
    assert d.test is not None and d.test.x.shape == (1000, 1, 28, 28)
    assert d.train.y.dtype == np.int64 and d.val is None
    assert np.bincount(d.train.y).tolist() == [400] * 10
    assert np.bincount(d.test.y).tolist() == [100] * 10
    assert d.classes == [str(i) for i in range(10)]
    assert d.normalizer.mean[0] == pytest.approx(0.1309, abs=5e-5)
    assert d.normalizer.std[0] == pytest.approx(0.3080, abs=5e-5)
    assert float(d.train.x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(d.train.x.std()) == pytest.approx(1.0, abs=1e-4)
    assert "28x28 used as is" in d.fit_rule and "mean 0.1309 and std 0.3080" in d.fit_rule


def test_sample_mnist_padded_to_lenet_input(mnist28: DataSplits) -> None:
    d = load_dataset(MNIST, (32, 32, 1))
    assert d.train.x.shape == (4000, 1, 32, 32)
    assert "28x28 zero-padded to 32x32" in d.fit_rule and "as LeCun did" in d.fit_rule
    # statistics over the padded field, so the border is exactly the background value
    m, s = d.normalizer.mean[0], d.normalizer.std[0]
    assert m == pytest.approx(0.1309 * 784 / 1024, abs=1e-4)
    bg = np.float32(-m) / np.float32(s)
    assert np.all(d.train.x[:, :, :2] == bg) and np.all(d.test.x[:, :, :, 30:] == bg)
    raw = d.train.x[:, :, 2:30, 2:30] * np.float32(s) + np.float32(m)
    orig = mnist28.train.x * np.float32(mnist28.normalizer.std[0]) + np.float32(
        mnist28.normalizer.mean[0]
    )
    np.testing.assert_allclose(raw, orig, atol=1e-5)


def test_val_split_is_stratified_reproducible_and_stats_from_train_only() -> None:
    a = load_dataset(MNIST, (28, 28, 1), val_split=0.1, seed=3)
    b = load_dataset(MNIST, (28, 28, 1), val_split=0.1, seed=3)
    c = load_dataset(MNIST, (28, 28, 1), val_split=0.1, seed=4)
    assert a.val is not None and len(a.train) == 3600 and len(a.val) == 400
    assert np.bincount(a.val.y).tolist() == [40] * 10
    np.testing.assert_array_equal(a.val.x, b.val.x)
    assert not np.array_equal(a.val.x, c.val.x)
    # normalisation comes from the 3,600 remaining training images, not from all 4,000
    assert float(a.train.x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert "validation: 400 images held out of the training split" in a.fit_rule


def test_saved_normalizer_is_applied_not_refitted(mnist28: DataSplits) -> None:
    norm = Normalizer.from_dict({"mean": [0.5], "std": [0.25]})
    d = load_dataset(MNIST, (28, 28, 1), normalizer=norm)
    assert d.normalizer is norm and "saved mean 0.5000" in d.fit_rule
    assert float(d.train.x.min()) == pytest.approx(-2.0)
    back = Normalizer.from_dict(mnist28.normalizer.to_dict())
    np.testing.assert_array_equal(back.mean, mnist28.normalizer.mean)
    np.testing.assert_array_equal(back.std, mnist28.normalizer.std)
    with pytest.raises(DataError, match="bad normalisation"):
        Normalizer.from_dict({"mean": [0.1], "std": [0.0]})


def test_grey_to_colour_and_num_classes() -> None:
    d = load_dataset(MNIST, (28, 28, 3), num_classes=10)
    assert d.train.x.shape == (4000, 3, 28, 28)
    assert "grey replicated to 3 channels" in d.fit_rule
    np.testing.assert_array_equal(d.train.x[:, 0], d.train.x[:, 2])
    assert load_dataset(MNIST, (28, 28, 1), num_classes=12).classes[-1] == "11"
    with pytest.raises(DataError, match=rf"{TRAIN_Y}.gz: label 8 at index 8 is out of range 0..7"):
        load_dataset(MNIST, (28, 28, 1), num_classes=8)


# -- IDX -----------------------------------------------------------------------------------


def test_idx_gz_and_plain_read_the_same(tmp_path: Path) -> None:
    for name in (TRAIN_X, TRAIN_Y):
        (tmp_path / name).write_bytes(gzip.decompress((MNIST / f"{name}.gz").read_bytes()))
    np.testing.assert_array_equal(
        read_idx_images(tmp_path / TRAIN_X), read_idx_images(MNIST / f"{TRAIN_X}.gz")
    )
    y = read_idx_labels(tmp_path / TRAIN_Y)
    assert y.dtype == np.int64 and y.shape == (4000,)
    d = load_dataset(tmp_path, (28, 28, 1))  # plain files, no test split
    assert len(d.train) == 4000 and d.test is None


def test_idx_generic_types(tmp_path: Path) -> None:
    dims = (2).to_bytes(4, "big") * 2
    f = tmp_path / "x.idx"
    f.write_bytes((0x0B02).to_bytes(4, "big") + dims + np.arange(4, dtype=">i2").tobytes())
    a = read_idx(f)
    assert a.dtype == np.int16 and a.tolist() == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated: header says 10x4x4 \\(160 data bytes\\), found"),
        (lambda b: b + b"\0", "has trailing bytes"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b[:2], "not an IDX file \\(only 2 bytes\\)"),
        (lambda b: (2049).to_bytes(4, "big") + b[4:], "IDX magic number is 2049, expected 2051"),
        (lambda b: b"\x50\x4b\x03\x04" + b[4:], "not an IDX file \\(magic number"),
        (lambda b: gzip.compress(b)[:-10], "corrupt or truncated gzip data"),
        (lambda b: b"\x1f\x8b" + bytes(range(200)), "corrupt or truncated gzip data"),
    ],
)
def test_bad_idx_files_name_the_file(tmp_path: Path, mangle, message: str) -> None:
    x = np.zeros((10, 4, 4), np.uint8)
    folder = _write_idx_folder(tmp_path / "d", x, np.arange(10) % 3)
    bad = folder / TRAIN_X
    bad.write_bytes(mangle(bad.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        load_dataset(folder, (4, 4, 1))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_truncated_real_gzip_names_the_file(tmp_path: Path) -> None:
    shutil.copy(MNIST / f"{TRAIN_Y}.gz", tmp_path)
    raw = (MNIST / f"{TRAIN_X}.gz").read_bytes()
    (tmp_path / f"{TRAIN_X}.gz").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError, match=f"{TRAIN_X}.gz: corrupt or truncated gzip data"):
        load_dataset(tmp_path, (28, 28, 1))


def test_idx_count_mismatch_missing_partner_and_bad_labels(tmp_path: Path) -> None:
    x = np.zeros((5, 4, 4), np.uint8)
    folder = _write_idx_folder(tmp_path / "a", x, np.arange(4), gz=True)
    with pytest.raises(DataError, match="5 images but 4 labels in the train split") as err:
        load_dataset(folder, (4, 4, 1))
    assert f"{TRAIN_X}.gz" in str(err.value) and f"{TRAIN_Y}.gz" in str(err.value)

    folder = _write_idx_folder(tmp_path / "b", x, np.arange(5))
    (folder / TRAIN_Y).unlink()
    with pytest.raises(DataError, match=f"found {TRAIN_X} but no matching train labels"):
        load_dataset(folder, (4, 4, 1))

    folder = _write_idx_folder(tmp_path / "c", x, np.arange(5))
    (folder / TEST_X).write_bytes(_idx_bytes(np.zeros((2, 4, 4)), 2051))
    (folder / TEST_Y).write_bytes(_idx_bytes(np.array([1, 7]), 2049))
    with pytest.raises(DataError, match=f"{TEST_Y}: label 7 at index 1 is out of range 0..4"):
        load_dataset(folder, (4, 4, 1))

    folder = _write_idx_folder(tmp_path / "e", np.zeros((0, 4, 4)), np.zeros(0))
    with pytest.raises(DataError, match=f"{TRAIN_X}: the train split has no images"):
        load_dataset(folder, (4, 4, 1))


# -- npz -----------------------------------------------------------------------------------


def test_npz_layouts_and_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "hwc.npz", x_train=nhwc, y_train=y, x_test=nhwc[:2], y_test=y[:2])
    np.savez(
        tmp_path / "chw.npz",
        x_train=nhwc.transpose(0, 3, 1, 2),
        y_train=y,
        class_names=np.array(["cat", "dog", "eel"]),
    )
    np.savez(tmp_path / "hw.npz", x_train=nhwc[..., 0].astype(np.float64) / 255, y_train=y * 1.0)
    a = load_dataset(tmp_path / "hwc.npz", (5, 5, 3))
    b = load_dataset(tmp_path / "chw.npz", (5, 5, 3))
    c = load_dataset(tmp_path / "hw.npz", (5, 5, 1))
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert a.classes == ["0", "1", "2"] and b.classes == ["cat", "dog", "eel"]
    assert a.test is not None and len(a.test) == 2 and b.test is None
    assert "layout N,H,W,C" in a.fit_rule and "layout N,C,H,W" in b.fit_rule
    expected = nhwc[..., 0].astype(np.float64) / 255
    expected = (expected - expected.mean()) / expected.std()
    np.testing.assert_allclose(c.train.x[:, 0], expected, atol=1e-5)
    with pytest.raises(DataError, match="has 3 classes but the network has 10 outputs"):
        load_dataset(tmp_path / "chw.npz", (5, 5, 3), num_classes=10)


def test_colour_to_grey_is_601_luma(tmp_path: Path) -> None:
    x = np.zeros((2, 1, 1, 3), np.uint8)
    x[0, 0, 0] = (255, 0, 0)
    x[1, 0, 0] = (0, 255, 255)
    np.savez(tmp_path / "c.npz", x_train=x, y_train=np.array([0, 1]))
    d = load_dataset(tmp_path / "c.npz", (1, 1, 1), normalizer=Normalizer(np.zeros(1), np.ones(1)))
    np.testing.assert_allclose(d.train.x.ravel(), [0.299, 0.587 + 0.114], atol=1e-6)
    assert "ITU-R 601 luma" in d.fit_rule


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 4, 4))}, "needs arrays x_train and y_train"),
        (
            {"x_train": np.zeros((2, 4, 4)), "y_train": np.zeros(2), "x_test": np.zeros((1, 4, 4))},
            "has only one of x_test and y_test",
        ),
        ({"x_train": np.zeros((3, 4, 4)), "y_train": np.zeros(2)}, "3 images but 2 labels"),
        (
            {"x_train": np.zeros((2, 4, 4)), "y_train": np.array([0, -1])},
            "negative label -1 at index 1",
        ),
        (
            {"x_train": np.zeros((2, 4, 4)), "y_train": np.array([0.5, 1])},
            "labels must be whole numbers",
        ),
        ({"x_train": np.zeros((2, 5, 4, 4, 2)), "y_train": np.zeros(2)}, "images have shape"),
        ({"x_train": np.zeros((2, 7, 4, 5)), "y_train": np.zeros(2)}, "images have shape"),
        (
            {"x_train": np.zeros((0, 4, 4)), "y_train": np.zeros(0, int)},
            "train split has no images",
        ),
        ({"x_train": np.full((1, 4, 4), np.nan), "y_train": np.zeros(1)}, "NaN"),
        (
            {
                "x_train": np.zeros((2, 4, 4)),
                "y_train": np.array([0, 2]),
                "class_names": np.array(["a", "b"]),
            },
            "label 2 at index 1 is out of range 0..1",
        ),
    ],
)
def test_bad_npz_names_the_file(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(path, (4, 4, 1))
    assert str(path) in str(err.value)


def test_npz_pickled_random_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x_train=np.array([object()] * 2), y_train=np.zeros(2))
    with pytest.raises(DataError, match="obj.npz: not a valid .npz without pickled objects"):
        load_dataset(path, (4, 4, 1))
    rnd = tmp_path / "random.npz"
    rnd.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(DataError, match="random.npz: not an .npz archive"):
        load_dataset(rnd, (4, 4, 1))
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((50, 8, 8)), y_train=np.zeros(50))
    raw = good.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 30):
        cut_file = tmp_path / f"cut{cut}.npz"
        cut_file.write_bytes(raw[:cut])
        with pytest.raises(DataError, match=f"cut{cut}.npz: "):
            load_dataset(cut_file, (8, 8, 1))


# -- image folders --------------------------------------------------------------------------


def _img(path: Path, size: tuple[int, int], mode: str = "L", value: int | tuple = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder_with_splits_sizes_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _img(root / "train/cat/a.png", (8, 8), "L", 255)  # same size
    _img(root / "train/cat/b.png", (4, 6), "RGB", (255, 0, 0))  # smaller: padded
    _img(root / "train/dog/c.jpg", (40, 20), "RGB", (0, 0, 255))  # larger: resize + crop
    _img(root / "train/dog/d.png", (8, 8), "RGBA", (0, 255, 0, 10))  # alpha dropped
    (root / "train/dog/notes.txt").write_text("ignored")
    _img(root / "test/dog/e.png", (8, 8), "P", 3)
    d = load_dataset(root, (8, 8, 3), normalizer=Normalizer(np.zeros(3), np.ones(3)))
    assert d.source == "folder" and d.classes == ["cat", "dog"]
    assert d.train.y.tolist() == [0, 0, 1, 1] and d.test is not None and d.test.y.tolist() == [1]
    x = d.train.x
    assert x.shape == (4, 3, 8, 8)
    assert np.all(x[0] == 1.0)
    # 6 rows x 4 columns, centered in 8x8: one zero row above, two zero columns left
    assert np.all(x[1, 0, 1:7, 2:6] == 1.0) and x[1, 0].sum() == 24 and np.all(x[1, 1:] == 0)
    np.testing.assert_allclose(x[2, 2], 1.0, atol=1 / 255)  # blue, resized then cropped
    np.testing.assert_allclose(x[3, 1], 1.0)
    rule = d.fit_rule
    assert "2 classes" in rule and "train 4, test 1 images" in rule
    assert "smaller ones zero-padded" in rule and "resized" in rule and "alpha dropped" in rule
    g = load_dataset(root, (8, 8, 1))
    assert g.train.x.shape == (4, 1, 8, 8) and "ITU-R 601 luma" in g.fit_rule


def test_flat_image_folder_with_val_split_and_16_bit_grey(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for cls in ("a", "b"):
        for i in range(5):
            _img(root / cls / f"{i}.png", (3, 3), "L", 40 * i)
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(root / "a" / "9.png")
    d = load_dataset(
        root, (3, 3, 1), val_split=0.4, seed=0, normalizer=Normalizer(np.zeros(1), np.ones(1))
    )
    assert d.val is not None and d.test is None
    assert len(d.train) + len(d.val) == 11 and np.bincount(d.val.y).tolist() == [2, 2]
    all_x = np.concatenate([d.train.x, d.val.x])
    assert all_x.max() == 1.0  # 16-bit white is 1.0, not clipped garbage


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_unreadable_image_names_the_file(tmp_path: Path, content: bytes) -> None:
    root = tmp_path / "r"
    _img(root / "a" / "ok.png", (4, 4))
    bad = root / "a" / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="broken.png: ") as err:
        load_dataset(root, (4, 4, 1))
    assert str(bad) in str(err.value)


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _img(root / "a" / "ok.jpg", (64, 64), "RGB", (10, 200, 30))
    raw = (root / "a" / "ok.jpg").read_bytes()
    (root / "a" / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.jpg: cannot decode image"):
        load_dataset(root, (8, 8, 3))


def test_folder_errors(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _img(root / "train" / "a" / "1.png", (4, 4))
    (root / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"train/b: class folder has no images"):
        load_dataset(root, (4, 4, 1))
    _img(root / "train" / "b" / "1.png", (4, 4))
    _img(root / "test" / "zebra" / "1.png", (4, 4))
    with pytest.raises(DataError, match="test/zebra: class 'zebra' is not among the training"):
        load_dataset(root, (4, 4, 1))


# -- dispatch and general errors ------------------------------------------------------------


def test_missing_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        load_dataset(tmp_path / "nowhere", (4, 4, 1))
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match="data.csv: unknown data format"):
        load_dataset(tmp_path / "data.csv", (4, 4, 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: unknown data format"):
        load_dataset(tmp_path / "empty", (4, 4, 1))
    with pytest.raises(CnnError, match="validation split must be in"):
        load_dataset(MNIST, (28, 28, 1), val_split=1.0)
    with pytest.raises(CnnError, match="input size must be"):
        load_dataset(MNIST, (28, 28, 2))


# -- fitting ---------------------------------------------------------------------------------


def test_plan_fit_rule() -> None:
    assert plan_fit(28, 28, 32, 32) == ("pad", (28, 28), 2, 2)
    assert plan_fit(5, 4, 8, 8) == ("pad", (5, 4), 1, 2)
    assert plan_fit(8, 8, 8, 8).kind == "same"
    assert plan_fit(64, 48, 32, 32) == ("resize", (43, 32), 5, 0)
    assert plan_fit(20, 40, 32, 32) == ("resize", (32, 64), 0, 16)


def test_fit_array_resize_keeps_a_constant_constant() -> None:
    x = np.full((2, 1, 64, 48), 0.25, np.float32)
    y = fit_array(x, 32, 32)
    assert y.shape == (2, 1, 32, 32) and np.allclose(y, 0.25, atol=1e-6)
    assert to_channels(np.zeros((1, 4, 2, 2), np.float32), 3).shape == (1, 3, 2, 2)


# -- batches ---------------------------------------------------------------------------------


def test_batches_cover_everything_once_and_reuse_buffers(mnist28: DataSplits) -> None:
    ds = mnist28.test
    assert ds is not None
    rng = np.random.default_rng(0)
    seen, sizes, ids = [], [], set()
    for xb, yb in batches(ds, 64, rng):
        assert xb.dtype == np.float32 and yb.dtype == np.int64
        ids.add(xb.base is not None and id(xb.base) or id(xb))
        seen.append(yb.copy())
        sizes.append(len(yb))
    assert sizes == [64] * 15 + [40] and num_batches(1000, 64) == 16
    assert np.bincount(np.concatenate(seen)).tolist() == [100] * 10
    assert len(ids) == 1  # one buffer for the whole epoch
    assert sum(1 for _ in batches(ds, 64, rng, drop_last=True)) == 15 == num_batches(1000, 64, True)
    plain = list(batches(ds, 300, shuffle=False))
    assert len(plain) == 4


def test_batches_order_follows_the_generator_and_is_drawn_at_call() -> None:
    from cnncli.data import Dataset

    ds = Dataset(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10), ["x"])
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    order = [int(y) for _, yb in batches(ds, 3, r1) for y in yb]
    assert order == np.random.default_rng(5).permutation(10).tolist()
    batches(ds, 3, r2)  # not iterated: the permutation is still drawn
    assert r1.random() == r2.random()
    for xb, yb in batches(ds, 4, np.random.default_rng(1)):
        np.testing.assert_array_equal(xb.ravel(), yb)
    with pytest.raises(CnnError, match="batch size must be >= 1"):
        batches(ds, 0, r1)
