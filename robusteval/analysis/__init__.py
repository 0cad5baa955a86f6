"""Predictive validity of the scores, certified-versus-empirical brackets and region statistics."""

from __future__ import annotations

from .bracket import certified_bracket
from .correlation import auroc, bootstrap_kendall, bootstrap_spearman, kendall, spearman
from .predictive import predictive_validity, rank_scores
from .region_statistics import region_statistics
from .region_walk import count_regions_crossed

__all__ = [
    "auroc",
    "bootstrap_kendall",
    "bootstrap_spearman",
    "certified_bracket",
    "count_regions_crossed",
    "kendall",
    "predictive_validity",
    "rank_scores",
    "region_statistics",
    "spearman",
]
