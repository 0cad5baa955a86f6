"""One seed drives torch, numpy and every attack.

Work is split into blocks of samples; each block draws its randomness from a seed derived from
the run's seed and the block's first sample index, so results do not depend on how blocks are
spread over processes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    """Return a 63-bit seed derived from ``seed`` and ``keys`` by SHA-256, stable across platforms."""
    text = "/".join([str(int(seed)), *(str(key) for key in keys)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


@contextmanager
def seeded(seed: int, devices: list[int] | None = None) -> Iterator[torch.Generator]:
    """Seed torch (CPU and every CUDA device), numpy and ``random`` for the ``with`` body.

    The global random states are restored on exit, so that seeding one stage does not change
    the numbers another stage draws. ``devices`` lists the CUDA devices whose states are
    restored; by default every visible one once CUDA is initialized, and none before. Yields a
    CPU ``torch.Generator`` seeded with ``seed`` for code that takes an explicit generator.
    """
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    if devices is not None:
        cuda_devices = devices
    else:
        cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield torch.Generator().manual_seed(seed)
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
