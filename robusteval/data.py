"""Evaluation data: built-in digits splits, ``.npz`` files and ``.pt`` dicts, validated on load.

Every loader returns a :class:`Dataset` whose inputs are float32 ``(N, d)`` or ``(N, C, H, W)``
within the declared bounds and whose labels are int64 ``(N,)`` class indices. Files are read
without unpickling: ``numpy.load(allow_pickle=False)`` and ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._types import Bounds
from .digits import digits_split
from .errors import DataLoadError

__all__ = ["BUILTIN_DATA", "DEFAULT_BOUNDS", "Dataset", "dataset_from_arrays", "load_data"]

DEFAULT_BOUNDS = Bounds(0.0, 1.0)
BUILTIN_DATA = ("digits", "digits:train", "digits:image")
_ARRAY_KEYS = ("x", "y", "x_train", "y_train")
_LISTED = 5


@dataclass(frozen=True, eq=False)
class Dataset:
    """Validated evaluation data.

    Attributes:
        x: Inputs, float32 ``(N, d)`` or ``(N, C, H, W)``, within ``bounds``.
        y: Labels, int64 ``(N,)``, non-negative class indices.
        name: The built-in name or the file path.
        sha256: SHA-256 of the file's bytes, or of the arrays for built-in data.
        bounds: Closed interval every input value lies in.
        x_train: Training inputs of the same per-sample shape as ``x``, or ``None``.
        y_train: Training labels, or ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str
    sha256: str
    bounds: Bounds
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None


def load_data(spec: str | os.PathLike[str], *, bounds: Bounds | None = None) -> Dataset:
    """Load and validate evaluation data.

    Args:
        spec: A built-in name or a file path. ``"digits"`` is the test split ``(N, 64)`` with
            the train split as ``x_train``. ``"digits:train"`` is the train split as ``x``.
            ``"digits:image"`` is ``"digits"`` reshaped to ``(N, 1, 8, 8)``. A file is an
            ``.npz`` archive or a torch.save'd dict with arrays ``x``, ``y`` and optionally
            ``x_train``, ``y_train``.
        bounds: Interval the inputs must lie in. Defaults to ``[0, 1]``.

    Raises:
        DataLoadError: The file is missing, unreadable or lacks ``x``/``y``.
        ValueError: The arrays fail validation (dtype, shape, range, labels).
    """
    declared = _check_bounds(bounds)
    if isinstance(spec, str) and (spec in BUILTIN_DATA or spec.startswith("digits:")):
        return _load_builtin(spec, declared)

    source = Path(spec)
    arrays = _read_arrays(source)
    return dataset_from_arrays(
        arrays["x"],
        arrays["y"],
        name=str(source),
        bounds=declared,
        x_train=arrays.get("x_train"),
        y_train=arrays.get("y_train"),
        sha256=_file_sha256(source),
    )


def dataset_from_arrays(
    x: Any,
    y: Any,
    *,
    name: str,
    bounds: Bounds | None = None,
    x_train: Any = None,
    y_train: Any = None,
    sha256: str | None = None,
) -> Dataset:
    """Validate NumPy arrays or tensors and package them as a :class:`Dataset`.

    ``sha256`` defaults to a digest of the arrays' dtypes, shapes and bytes.

    Raises:
        ValueError: See :func:`load_data`; every message names the array and the fix.
        TypeError: An argument is not an array or tensor.
    """
    declared = _check_bounds(bounds)
    inputs = _validate_inputs(_to_numpy(x, "x"), declared, "x")
    labels = _validate_labels(_to_numpy(y, "y"), len(inputs), "y")

    train_inputs = train_labels = None
    if (x_train is None) != (y_train is None):
        raise ValueError(
            "Expected both x_train and y_train or neither, but got only "
            f"{'x_train' if x_train is not None else 'y_train'}. Add the missing array or drop both."
        )
    if x_train is not None:
        train_inputs = _validate_inputs(_to_numpy(x_train, "x_train"), declared, "x_train")
        train_labels = _validate_labels(_to_numpy(y_train, "y_train"), len(train_inputs), "y_train")
        if train_inputs.shape[1:] != inputs.shape[1:]:
            raise ValueError(
                f"Expected x_train samples of the same shape as x's {inputs.shape[1:]}, but got "
                f"{train_inputs.shape[1:]}. Reshape one of them so the model accepts both."
            )

    digest = sha256 or _arrays_sha256(inputs, labels, train_inputs, train_labels)
    return Dataset(
        x=torch.from_numpy(inputs),
        y=torch.from_numpy(labels),
        name=name,
        sha256=digest,
        bounds=declared,
        x_train=None if train_inputs is None else torch.from_numpy(train_inputs),
        y_train=None if train_labels is None else torch.from_numpy(train_labels),
    )


def _load_builtin(spec: str, bounds: Bounds) -> Dataset:
    if spec not in BUILTIN_DATA:
        raise ValueError(f"Expected built-in data {', '.join(map(repr, BUILTIN_DATA))}, but got {spec!r}.")
    x_test, y_test = digits_split("test")
    x_train, y_train = digits_split("train")
    if spec == "digits:train":
        return dataset_from_arrays(x_train, y_train, name=spec, bounds=bounds)
    if spec == "digits:image":
        return dataset_from_arrays(
            x_test.reshape(-1, 1, 8, 8), y_test, name=spec, bounds=bounds,
            x_train=x_train.reshape(-1, 1, 8, 8), y_train=y_train,
        )
    return dataset_from_arrays(x_test, y_test, name=spec, bounds=bounds, x_train=x_train, y_train=y_train)


def _check_bounds(bounds: Bounds | None) -> Bounds:
    if bounds is None:
        return DEFAULT_BOUNDS
    try:
        lower, upper = (float(value) for value in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"Expected bounds as a pair (lower, upper) of numbers, but got {bounds!r}.") from None
    if not (np.isfinite(lower) and np.isfinite(upper) and lower < upper):
        raise ValueError(f"Expected finite bounds with lower < upper, but got ({lower}, {upper}).")
    return Bounds(lower, upper)


def _read_arrays(source: Path) -> dict[str, np.ndarray]:
    if not source.exists():
        raise DataLoadError(f"Data file not found: {str(source)!r}. Check the path, or use built-in data such as 'digits'.")
    if not source.is_file():
        raise DataLoadError(f"Expected a data file, but {str(source)!r} is a directory or special file.")
    with source.open("rb") as handle:
        header = handle.read(8)
    if not header:
        raise DataLoadError(f"Data file {str(source)!r} is empty (0 bytes).")

    if header.startswith(b"PK"):
        arrays = _read_zip(source)
    elif header.startswith(b"\x80"):
        arrays = _read_torch(source)
    elif header.startswith(b"\x93NUMPY"):
        raise DataLoadError(
            f"{str(source)!r} is a single .npy array, which cannot hold both inputs and labels. "
            "Save them together with numpy.savez(path, x=x, y=y)."
        )
    else:
        raise DataLoadError(
            f"{str(source)!r} is neither an .npz archive nor a torch.save'd dict (first bytes {header.hex(' ')}). "
            "Save the data with numpy.savez(path, x=x, y=y)."
        )

    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DataLoadError(
            f"Expected arrays 'x' and 'y' in {str(source)!r}, but {', '.join(map(repr, missing))} "
            f"is missing (found: {', '.join(map(repr, sorted(arrays))) or 'none'}). "
            "Save the data with numpy.savez(path, x=x, y=y)."
        )
    return arrays


def _read_zip(source: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(source) as archive:
            is_npz = any(name.endswith(".npy") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise DataLoadError(f"{str(source)!r} is not a readable zip (.npz) archive ({error}); it may be truncated.") from None
    if not is_npz:
        return _read_torch(source)

    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(source, allow_pickle=False) as archive:
            for key in archive.files:
                if key in _ARRAY_KEYS:
                    arrays[key] = archive[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataLoadError(
                f"{str(source)!r} stores Python objects (object arrays), which only unpickling could read. "
                "Save numeric arrays: numpy.savez(path, x=x.astype('float32'), y=y.astype('int64'))."
            ) from None
        raise DataLoadError(f"Could not read {str(source)!r} as .npz: {error}.") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError) as error:
        raise DataLoadError(f"Could not read {str(source)!r} as .npz ({type(error).__name__}: {error}).") from None
    return arrays


def _read_torch(source: Path) -> dict[str, np.ndarray]:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            payload = torch.load(source, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise DataLoadError(
            f"{str(source)!r} is a pickle that torch.load(weights_only=True) rejects; robusteval never "
            f"unpickles data files fully because that can run code from the file ({_summary(error)}). "
            "Save a dict of tensors with torch.save({'x': x, 'y': y}, path), or use numpy.savez."
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load raises many types on corrupt files
        raise DataLoadError(f"Could not read {str(source)!r} with torch.load ({type(error).__name__}: {_summary(error)}).") from None

    if not isinstance(payload, Mapping):
        raise DataLoadError(
            f"Expected {str(source)!r} to contain a dict with tensors 'x' and 'y', but it contains "
            f"{type(payload).__name__}. Save torch.save({{'x': x, 'y': y}}, path)."
        )
    arrays: dict[str, np.ndarray] = {}
    for key in _ARRAY_KEYS:
        if key in payload:
            arrays[key] = _to_numpy(payload[key], key)
    return arrays


def _summary(error: BaseException) -> str:
    text = str(error).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"Expected {name} to be a NumPy array or a torch tensor, but got {type(value).__name__}.")


def _validate_inputs(x: np.ndarray, bounds: Bounds, name: str) -> np.ndarray:
    """Return ``x`` as a contiguous float32 copy after checking dtype, shape, finiteness and range."""
    if x.dtype.kind in "iub":
        hint = " (for 8-bit images: x.astype('float32') / 255)" if x.dtype.kind == "u" else ""
        raise ValueError(
            f"Expected {name} to be floating point, but got dtype {x.dtype}. Scale the inputs to "
            f"[0, 1] as float32{hint}; robusteval measures perturbations in input units."
        )
    if x.dtype.kind != "f":
        raise ValueError(f"Expected {name} to be a float array, but got dtype {x.dtype}. Convert it to float32.")
    if x.ndim not in (2, 4):
        hint = f" For single-channel images add a channel axis: {name}[:, None]." if x.ndim == 3 else ""
        raise ValueError(f"Expected {name} of shape (N, d) or (N, C, H, W), but got shape {x.shape}.{hint}")
    if x.shape[0] == 0 or any(size == 0 for size in x.shape[1:]):
        raise ValueError(f"Expected {name} to contain at least one sample of non-zero size, but got shape {x.shape}.")

    inputs = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(inputs)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(len(inputs), -1).all(axis=1))
        raise ValueError(
            f"Expected finite values in {name}, but {len(rows)} sample(s) contain NaN or inf "
            f"(rows {rows[:_LISTED].tolist()}). Remove or repair those rows."
        )
    # float32 rounding can move a value just past a bound that held in float64.
    low, high = float(inputs.min()), float(inputs.max())
    if low < bounds.lower or high > bounds.upper:
        flat = inputs.reshape(len(inputs), -1)
        rows = np.flatnonzero(((flat < bounds.lower) | (flat > bounds.upper)).any(axis=1))
        raise ValueError(
            f"Expected {name} within the bounds [{bounds.lower}, {bounds.upper}], but values range over "
            f"[{low}, {high}] in {len(rows)} sample(s) (rows {rows[:_LISTED].tolist()}). Scale the data "
            "into the bounds, or declare the real range with --lower and --upper (bounds=(lower, upper) in "
            "Python); normalization belongs inside the model."
        )
    return inputs.copy() if inputs is x else inputs


def _validate_labels(y: np.ndarray, count: int, name: str) -> np.ndarray:
    """Return ``y`` as an int64 copy after checking dtype, shape, length and sign."""
    if y.ndim != 1:
        hint = f" For one-hot labels use {name}.argmax(axis=1)." if y.ndim == 2 else ""
        raise ValueError(f"Expected {name} to be 1-D class indices of shape ({count},), but got shape {y.shape}.{hint}")
    if len(y) != count:
        inputs = "x_train" if name == "y_train" else "x"
        raise ValueError(f"Expected {name} to have one label per row of {inputs} ({count}), but got {len(y)} labels.")
    if y.dtype.kind == "b":
        raise ValueError(f"Expected {name} to contain integer class indices, but got dtype bool. Use {name}.astype('int64').")
    if y.dtype.kind == "f":
        integral = bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))
        fix = f"Convert them with {name}.astype('int64')" if integral else "Pass class indices 0..C-1, not scores"
        raise ValueError(f"Expected {name} to be integer class indices, but got dtype {y.dtype}. {fix}.")
    if y.dtype.kind not in "iu":
        raise ValueError(f"Expected {name} to be integer class indices, but got dtype {y.dtype}.")
    if y.dtype.kind == "u" and y.dtype.itemsize == 8 and len(y) and int(y.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"Expected {name} to be class indices, but the largest label is {int(y.max())}.")

    labels = y.astype(np.int64)
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        raise ValueError(
            f"Expected {name} to be non-negative class indices, but {len(negative)} label(s) are negative "
            f"(rows {negative[:_LISTED].tolist()}, values {labels[negative[:_LISTED]].tolist()}). Map them to 0..C-1."
        )
    return labels


def _arrays_sha256(*arrays: np.ndarray | None) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()
