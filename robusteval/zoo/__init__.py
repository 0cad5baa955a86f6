"""The model zoo: a documented family of small digits classifiers, deterministic training,
the bundled models and the generalization study over them."""

from __future__ import annotations

from .artifacts import BUNDLED_DIR, build_bundled_models, load_zoo_model
from .build import ZooEntry, ZooIndex, load_zoo_index, train_zoo
from .members import BUNDLED, FAMILY, ZooMember, select_members
from .study import StudyResult, load_study, run_study, save_study
from .training import TrainingConfig, pgd_linf, train_classifier

__all__ = [
    "BUNDLED",
    "BUNDLED_DIR",
    "FAMILY",
    "StudyResult",
    "TrainingConfig",
    "ZooEntry",
    "ZooIndex",
    "ZooMember",
    "build_bundled_models",
    "load_study",
    "load_zoo_index",
    "load_zoo_model",
    "pgd_linf",
    "run_study",
    "save_study",
    "select_members",
    "train_classifier",
    "train_zoo",
]
