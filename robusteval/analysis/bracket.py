"""Certified radius against minimal adversarial distance: how tightly is robustness known?

For a correctly classified sample, the certified radius c is a lower bound and the minimal
adversarial distance found by the attacks is an upper bound on the true distance to the nearest
adversarial example. When both agree, the sample's robustness is known exactly. A certified
radius above an adversarial distance is a contradiction: a wrong certificate or a wrongly
measured attack.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..results import SampleRecord

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def certified_bracket(
    samples: list[SampleRecord], *, exact_tolerance: float = 0.01, violation_tolerance: float = 1e-4
) -> dict[str, Any]:
    """Compare certified radii with minimal adversarial distances, per norm.

    Args:
        samples: Per-sample records; only correctly classified ones with a finite certified
            radius enter.
        exact_tolerance: Relative tolerance under which the two radii count as equal, because
            attack distances come from iterative searches and are not exact.
        violation_tolerance: Relative slack before a certified radius above the adversarial
            distance counts as a violation, to absorb rounding.

    Returns:
        ``{norm: {...}}`` for ``l2`` and ``linf``. Each holds ``certified`` (samples with a
        certified radius) and ``attacked`` (of those, samples with an adversarial example).
        ``exact`` and ``exact_share`` count the radii equal within ``exact_tolerance``, as a
        share of ``attacked``. ``gap_quantiles`` describe adversarial distance minus certified
        radius, and ``ratio_quantiles`` their ratio. ``violations`` counts certified radii above
        the adversarial distance, with their data rows in ``violation_indices``.
        ``no_adversarial`` counts samples where the attacks failed, so only the lower bound is
        known, and ``certificate_exact_share`` is the share the geometry marked exact.
    """
    section: dict[str, Any] = {}
    for norm in ("l2", "linf"):
        certified_records = [
            record for record in samples
            if record.correct and _finite(getattr(record.certified_radius, norm))
        ]
        attacked = [record for record in certified_records if _finite(getattr(record.min_adversarial_distance, norm))]
        certified = np.array([getattr(record.certified_radius, norm) for record in attacked], dtype=np.float64)
        adversarial = np.array([getattr(record.min_adversarial_distance, norm) for record in attacked], dtype=np.float64)

        exact = np.abs(adversarial - certified) <= exact_tolerance * np.abs(adversarial)
        violated = certified > adversarial * (1 + violation_tolerance)
        gap = adversarial - certified
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = adversarial / certified
        marked = [record.certificate_exact.get(norm) for record in certified_records]
        marked_known = [flag for flag in marked if flag is not None]

        section[norm] = {
            "certified": len(certified_records),
            "attacked": len(attacked),
            "exact": int(exact.sum()),
            "exact_share": float(exact.mean()) if attacked else None,
            "gap_quantiles": _quantiles(gap),
            "ratio_quantiles": _quantiles(ratio[np.isfinite(ratio)]),
            "violations": int(violated.sum()),
            "violation_indices": [record.index for record, flag in zip(attacked, violated) if flag],
            "no_adversarial": len(certified_records) - len(attacked),
            "certificate_exact_share": float(np.mean(marked_known)) if marked_known else None,
            "exact_tolerance": exact_tolerance,
        }
    return section


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {f"{level:g}": float(np.quantile(values, level)) for level in QUANTILES}
