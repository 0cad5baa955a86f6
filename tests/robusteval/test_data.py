"""Tests of robusteval.data: built-in digits, .npz and .pt files, and every validation message."""

from __future__ import annotations

import hashlib
import pathlib
import pickle

import numpy as np
import pytest
import torch

from robusteval._types import Bounds
from robusteval.data import dataset_from_arrays, load_data
from robusteval.digits import digits_split
from robusteval.errors import DataLoadError


def arrays(n: int = 6, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    return generator.random((n, d), dtype=np.float32), generator.integers(0, 3, size=n).astype(np.int64)


class FileWriter:
    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.target), "code ran"))


# --- built-in data --------------------------------------------------------------------------

def test_digits_is_test_split_with_train():
    x_test, y_test = digits_split("test")
    x_train, y_train = digits_split("train")

    data = load_data("digits")

    assert data.x.dtype == torch.float32
    assert data.y.dtype == torch.int64
    np.testing.assert_array_equal(data.x.numpy(), x_test)
    np.testing.assert_array_equal(data.y.numpy(), y_test)
    np.testing.assert_array_equal(data.x_train.numpy(), x_train)
    np.testing.assert_array_equal(data.y_train.numpy(), y_train)
    assert data.bounds == Bounds(0.0, 1.0)
    assert data.name == "digits"


def test_digits_train_split_as_x():
    x_train, y_train = digits_split("train")
    data = load_data("digits:train")
    np.testing.assert_array_equal(data.x.numpy(), x_train)
    np.testing.assert_array_equal(data.y.numpy(), y_train)
    assert data.x_train is None


def test_digits_image_shape():
    x_test, _ = digits_split("test")
    data = load_data("digits:image")
    assert tuple(data.x.shape) == (len(x_test), 1, 8, 8)
    np.testing.assert_array_equal(data.x.reshape(len(x_test), -1).numpy(), x_test)
    assert tuple(data.x_train.shape[1:]) == (1, 8, 8)


def test_digits_hash_depends_on_arrays():
    assert load_data("digits").sha256 == load_data("digits").sha256
    assert load_data("digits").sha256 != load_data("digits:train").sha256


def test_unknown_builtin_name():
    with pytest.raises(ValueError, match="'digits:image'"):
        load_data("digits:colour")


# --- files -----------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    x, y = arrays()
    x_train, y_train = arrays(seed=1)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y, x_train=x_train, y_train=y_train)

    data = load_data(path)

    np.testing.assert_array_equal(data.x.numpy(), x)
    np.testing.assert_array_equal(data.y.numpy(), y)
    np.testing.assert_array_equal(data.x_train.numpy(), x_train)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.name == str(path)


def test_pt_dict_round_trip(tmp_path):
    x, y = arrays()
    path = tmp_path / "data.pt"
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, path)

    data = load_data(path)

    np.testing.assert_array_equal(data.x.numpy(), x)
    np.testing.assert_array_equal(data.y.numpy(), y)
    assert data.x_train is None


def test_float64_inputs_become_float32(tmp_path):
    x, y = arrays()
    path = tmp_path / "data.npz"
    np.savez(path, x=x.astype(np.float64), y=y.astype(np.int32))
    data = load_data(path)
    assert data.x.dtype == torch.float32
    assert data.y.dtype == torch.int64


def test_custom_bounds(tmp_path):
    x, y = arrays()
    path = tmp_path / "data.npz"
    np.savez(path, x=x * 2 - 1, y=y)
    data = load_data(path, bounds=Bounds(-1.0, 1.0))
    assert data.bounds == Bounds(-1.0, 1.0)


def test_missing_file(tmp_path):
    with pytest.raises(DataLoadError, match="Data file not found"):
        load_data(tmp_path / "absent.npz")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(DataLoadError, match="empty"):
        load_data(path)


def test_missing_labels_array(tmp_path):
    x, _ = arrays()
    path = tmp_path / "data.npz"
    np.savez(path, x=x, labels=np.zeros(6))
    with pytest.raises(DataLoadError, match=r"'y' is missing \(found: 'x'\)"):
        load_data(path)


def test_object_array_refused(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(DataLoadError, match="object arrays"):
        load_data(path)


def test_single_npy_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, arrays()[0])
    with pytest.raises(DataLoadError, match="numpy.savez"):
        load_data(path)


def test_text_file_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("x,y\n0.1,1\n")
    with pytest.raises(DataLoadError, match="neither an .npz archive"):
        load_data(path)


def test_planted_pickle_never_runs(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "data.pt"
    torch.save({"x": torch.zeros(2, 3), "y": torch.zeros(2, dtype=torch.int64), "hook": FileWriter(marker)}, path)
    with pytest.raises(DataLoadError, match="weights_only=True"):
        load_data(path)
    assert not marker.exists()

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(FileWriter(marker)))
    with pytest.raises(DataLoadError):
        load_data(raw)
    assert not marker.exists()


def test_pt_file_not_a_dict(tmp_path):
    path = tmp_path / "data.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(DataLoadError, match="contains Tensor"):
        load_data(path)


# --- validation messages ---------------------------------------------------------------------

def test_integer_inputs_suggest_scaling():
    x = (arrays()[0] * 255).astype(np.uint8)
    with pytest.raises(ValueError) as raised:
        dataset_from_arrays(x, arrays()[1], name="t")
    message = str(raised.value)
    assert "dtype uint8" in message
    assert "[0, 1]" in message
    assert "/ 255" in message


def test_nan_inputs_name_rows():
    x, y = arrays()
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 sample\(s\) contain NaN or inf \(rows \[2, 4\]\)"):
        dataset_from_arrays(x, y, name="t")


def test_inputs_outside_bounds():
    x, y = arrays()
    x[3, 2] = 1.5
    with pytest.raises(ValueError) as raised:
        dataset_from_arrays(x, y, name="t")
    message = str(raised.value)
    assert "within the bounds [0.0, 1.0]" in message
    assert "rows [3]" in message
    assert "--lower and --upper" in message


def test_float_labels_name_fix():
    x, y = arrays()
    with pytest.raises(ValueError, match=r"dtype float32\. Convert them with y\.astype\('int64'\)"):
        dataset_from_arrays(x, y.astype(np.float32), name="t")


def test_fractional_labels():
    x, _ = arrays()
    with pytest.raises(ValueError, match="not scores"):
        dataset_from_arrays(x, np.linspace(0, 1, 6), name="t")


def test_one_hot_labels():
    x, y = arrays()
    with pytest.raises(ValueError, match=r"argmax\(axis=1\)"):
        dataset_from_arrays(x, np.eye(3, dtype=np.int64)[y], name="t")


def test_label_count_mismatch():
    x, y = arrays()
    with pytest.raises(ValueError, match=r"one label per row of x \(6\), but got 5 labels"):
        dataset_from_arrays(x, y[:5], name="t")


def test_negative_labels():
    x, y = arrays()
    y[1] = -1
    with pytest.raises(ValueError, match=r"rows \[1\], values \[-1\]"):
        dataset_from_arrays(x, y, name="t")


def test_bool_labels():
    x, _ = arrays()
    with pytest.raises(ValueError, match="dtype bool"):
        dataset_from_arrays(x, np.ones(6, dtype=bool), name="t")


@pytest.mark.parametrize(("shape", "fragment"), [((6,), r"got shape \(6,\)"), ((6, 8, 8), r"x\[:, None\]"), ((6, 1, 2, 2, 2), r"got shape \(6, 1, 2, 2, 2\)")])
def test_input_shapes(shape, fragment):
    x = np.zeros(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=fragment):
        dataset_from_arrays(x, np.zeros(6, np.int64), name="t")


def test_empty_inputs():
    with pytest.raises(ValueError, match="at least one sample"):
        dataset_from_arrays(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), name="t")


def test_train_split_needs_both_arrays():
    x, y = arrays()
    with pytest.raises(ValueError, match="only x_train"):
        dataset_from_arrays(x, y, name="t", x_train=x)


def test_train_split_shape_mismatch():
    x, y = arrays()
    x_train, y_train = arrays(d=5)
    with pytest.raises(ValueError, match=r"x_train samples of the same shape"):
        dataset_from_arrays(x, y, name="t", x_train=x_train, y_train=y_train)


def test_invalid_bounds():
    x, y = arrays()
    with pytest.raises(ValueError, match="lower < upper"):
        dataset_from_arrays(x, y, name="t", bounds=Bounds(1.0, 0.0))


def test_non_array_input():
    with pytest.raises(TypeError, match="NumPy array or a torch tensor"):
        dataset_from_arrays([[0.1]], np.zeros(1, np.int64), name="t")


def test_dataset_does_not_alias_caller_arrays():
    x, y = arrays()
    data = dataset_from_arrays(x, y, name="t")
    x[0, 0] = 0.75 if x[0, 0] != 0.75 else 0.25
    y[0] = 2 if y[0] != 2 else 1
    assert float(data.x[0, 0]) != float(x[0, 0])
    assert int(data.y[0]) != int(y[0])
