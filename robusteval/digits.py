"""scikit-learn's handwritten digits (1,797 real 8x8 images) with robusteval's fixed split.

Pixel values 0..16 are scaled to [0, 1]. The split is stratified by class with 30% of the
samples held out for testing and ``random_state=0``, so it is the same on every machine that
has the same scikit-learn data file.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TEST_FRACTION = 0.3
SPLIT_SEED = 0


def digits_split(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` of one split: ``x`` float32 ``(N, 64)`` in [0, 1], ``y`` int64 ``(N,)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"Expected split 'train' or 'test', but got {split!r}.")
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    if split == "train":
        return np.ascontiguousarray(x_train), np.ascontiguousarray(y_train)
    return np.ascontiguousarray(x_test), np.ascontiguousarray(y_test)
