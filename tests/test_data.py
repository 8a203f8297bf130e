"""DATA specs: npz, image folders, builtin:digits; and the errors for data that does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from keras_turbo.data import digits_splits, load_data
from keras_turbo.errors import DataError
from keras_turbo.model.signature import TensorInfo

IMG = [TensorInfo("image", (None, 32, 32, 1), "float32")]
PROBS = [TensorInfo("output_0", (None, 10), "float32")]


def test_digits_splits_are_fixed_and_disjoint():
    s = digits_splits()
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (1257, 269, 271)
    assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])
    np.testing.assert_array_equal(digits_splits()["test"], s["test"])  # same every time
    # heldout: validation and test together, nothing of train
    assert sorted(s["heldout"]) == sorted([*s["val"], *s["test"]]) and not set(s["heldout"]) & set(s["train"])


@pytest.mark.parametrize("shape", [(32, 32, 1), (8, 8, 3), (16, 16), (64,)])
def test_digits_fit_the_model_input(shape):
    ds = load_data("builtin:digits:val", [TensorInfo("x", (None, *shape), "float32")])
    assert ds.x[0].shape == (269, *shape)
    assert 0.0 <= ds.x[0].min() and ds.x[0].max() <= 1.0 and ds.x[0].max() > 0.5
    assert set(np.unique(ds.y)) == set(range(10))


def test_digits_default_split_is_the_callers():
    assert len(load_data("builtin:digits", IMG, default_split="train")) == 1257
    assert len(load_data("builtin:digits", IMG)) == 271


def test_npz_with_labels(tmp_path):
    x = np.random.default_rng(0).random((6, 32, 32, 1), dtype="float32")
    y = np.array([0, 1, 2, 3, 4, 9])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_data(str(tmp_path / "d.npz"), IMG, PROBS)
    np.testing.assert_array_equal(ds.x[0], x)
    np.testing.assert_array_equal(ds.y, y)


def test_npz_one_hot_labels_and_multi_input(tmp_path):
    ins = [TensorInfo("a", (None, 3), "float32"), TensorInfo("b", (None, 2), "float32")]
    np.savez(tmp_path / "m.npz", x_a=np.ones((4, 3)), x_b=np.zeros((4, 2)), y=np.eye(3)[[0, 2, 1, 1]])
    ds = load_data(str(tmp_path / "m.npz"), ins, [TensorInfo("o", (None, 3), "float32")])
    assert [a.shape for a in ds.x] == [(4, 3), (4, 2)] and ds.x[0].dtype == np.float32
    np.testing.assert_array_equal(ds.y, [0, 2, 1, 1])


def test_image_folder(tmp_path):
    import PIL.Image

    for cls, value in (("cat", 30), ("dog", 220)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            PIL.Image.new("RGB", (20, 14), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    ds = load_data(str(tmp_path), [TensorInfo("img", (None, 8, 8, 3), "float32")])
    assert ds.x[0].shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1, 1, 1])
    assert abs(ds.x[0][0].mean() - 30 / 255) < 1e-3 and abs(ds.x[0][-1].mean() - 220 / 255) < 1e-3


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((3, 28, 28, 1), "float32")}, r"samples of shape \(28, 28, 1\), the model expects \(32, 32, 1\)"),
    ({"x": np.full((3, 32, 32, 1), np.nan, "float32")}, "3072 NaN or inf"),
    ({"x": np.full((2, 32, 32, 1), np.inf, "float32")}, "NaN or inf"),
    ({"x": np.zeros((3, 32, 32, 1), "float32"), "y": np.array([0, 4, 10])}, r"labels out of range \(found 0..10, the model has 10 classes\)"),
    ({"x": np.zeros((3, 32, 32, 1), "float32"), "y": np.array([0, -1, 2])}, "labels out of range"),
    ({"x": np.zeros((3, 32, 32, 1), "float32"), "y": np.array([0, 1])}, "2 labels for 3 samples"),
    ({"x": np.zeros((0, 32, 32, 1), "float32")}, "holds no samples"),
    ({"images": np.zeros((3, 32, 32, 1), "float32")}, "no array named 'x' \\(found: images\\)"),
])
def test_bad_data(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load_data(str(path), IMG, PROBS, arg="--data")


@pytest.mark.parametrize("spec,match", [
    ("builtin:mnist", "unknown built-in data set"),
    ("builtin:digits:holdout", "unknown split 'holdout'"),
    ("/nonexistent/data.npz", "no such file"),
])
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        load_data(spec, IMG)


def test_not_an_npz(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="broken.npz: cannot read as .npz"):
        load_data(str(path), IMG)


def test_integral_checks_a_large_array_in_blocks(monkeypatch):
    """data._integral is defined once and works a block of rows at a time: np.round never sees the
    whole array (a second, whole-array definition used to replace it for every caller)."""
    from keras_turbo import data as data_mod

    seen = []
    real = np.round
    monkeypatch.setattr(np, "round", lambda b, *a, **k: seen.append(len(b)) or real(b, *a, **k))
    a = np.ones((10_000, 3), "float32")
    assert data_mod._integral(a) and max(seen) == 4096 and len(seen) == 3
    a[9_999, 2] = 0.5
    assert not data_mod._integral(a)
    assert data_mod._integral(np.arange(5)) and data_mod._integral(np.array([True])) and not data_mod._integral(np.array(["a"]))
