"""Property-based tests of data loading and validation: valid data round-trips, the rest is rejected."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robusteval.data import dataset_from_arrays, load_data
from robusteval.errors import DataLoadError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_dtype = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64, np.bool_])
any_shape = hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=4)


@SETTINGS
@given(
    x=hnp.arrays(any_dtype, any_shape),  # float elements include NaN and inf by default
    y=hnp.arrays(any_dtype, hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5)),
)
def test_validation_accepts_or_raises_value_error(x, y):
    try:
        data = dataset_from_arrays(x, y, name="generated")
    except ValueError:
        return
    # Whatever passes satisfies the Dataset contract.
    assert data.x.dtype == torch.float32
    assert data.x.ndim in (2, 4)
    assert data.y.dtype == torch.int64
    assert data.y.shape == (data.x.shape[0],)
    assert bool((data.y >= 0).all())
    assert bool(torch.isfinite(data.x).all())
    assert float(data.x.min()) >= 0.0
    assert float(data.x.max()) <= 1.0


valid_inputs = hnp.arrays(
    np.float32,
    st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=5),
              hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=3)),
    elements=st.floats(0.0, 1.0, width=32),
)


@SETTINGS
@given(x=valid_inputs, labels=st.data(), container=st.sampled_from(["npz", "pt"]))
def test_valid_arrays_round_trip_through_files(x, labels, container):
    y = labels.draw(hnp.arrays(np.int64, (x.shape[0],), elements=st.integers(0, 9)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data.{container}"
        if container == "npz":
            np.savez(path, x=x, y=y)
        else:
            torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, path)

        data = load_data(path)

    np.testing.assert_array_equal(data.x.numpy(), x)
    np.testing.assert_array_equal(data.y.numpy(), y)


@SETTINGS
@given(x=valid_inputs, offset=st.floats(1e-3, 10.0), row=st.data())
def test_out_of_bounds_value_rejected(x, offset, row):
    index = row.draw(st.integers(0, x.shape[0] - 1))
    shifted = x.copy()
    shifted.reshape(x.shape[0], -1)[index, 0] = 1.0 + offset
    try:
        dataset_from_arrays(shifted, np.zeros(x.shape[0], np.int64), name="generated")
    except ValueError as error:
        assert f"rows [{index}]" in str(error)
    else:
        raise AssertionError("an input above the upper bound was accepted")


@SETTINGS
@given(st.binary(max_size=1024), st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x93NUMPY"]))
def test_arbitrary_data_files_raise_data_load_error(body, prefix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.bin"
        path.write_bytes(prefix + body)
        try:
            load_data(path)
        except (DataLoadError, ValueError, TypeError):
            return
    raise AssertionError("random bytes were accepted as data")
