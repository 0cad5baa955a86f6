"""The model zoo: a documented family of small digits classifiers, deterministic training,
the bundled models and the generalization study over them."""

from __future__ import annotations

from .artifacts import BUNDLED_DIR, build_bundled_models, load_zoo_model
from .members import BUNDLED, FAMILY, ZooMember, select_members
from .training import TrainingConfig, pgd_linf, train_classifier

__all__ = [
    "BUNDLED",
    "BUNDLED_DIR",
    "FAMILY",
    "TrainingConfig",
    "ZooMember",
    "build_bundled_models",
    "load_zoo_model",
    "pgd_linf",
    "select_members",
    "train_classifier",
]
