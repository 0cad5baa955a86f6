"""Fixtures shared by every test package."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_robusteval_logger() -> Iterator[None]:
    """Undo what a CLI call's logging set-up changes, so that caplog captures robusteval's records in later tests."""
    logger = logging.getLogger("robusteval")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
