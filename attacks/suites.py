"""Named attack suites and the choice of attacks a model can run.

Suites:

* ``quick``: FMN and DeepFool (minimal norm) and PGD, a fast first look. DeepFool costs a few
  gradient steps and, measured on the bundled demo model, finds closer L2 examples than FMN on
  about half of the samples, so the minimal adversarial distances are much tighter with it.
* ``standard``: FMN, DeepFool, PGD and the standard AutoAttack ensemble.
* ``thorough``: every built-in attack, each run on its own, so that per-attack robust accuracy
  shows which one finds what and a black-box attack can be compared with the white-box ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .adapters import ATTACKS, register_attack
from ._foolbox import FOOLBOX_ATTACKS
from ._torchattacks import TORCHATTACKS_ATTACKS, autoattack_skipped_components
from .threat_models import ThreatModel

for _spec in (*FOOLBOX_ATTACKS, *TORCHATTACKS_ATTACKS):
    register_attack(_spec, replace=True)

SUITES: dict[str, tuple[str, ...]] = {
    "quick": ("fmn", "deepfool", "pgd"),
    "standard": ("fmn", "deepfool", "pgd", "autoattack"),
    "thorough": ("fgsm", "pgd", "apgd-ce", "apgd-t", "square", "autoattack", "fmn", "deepfool", "cw", "fab"),
}


def resolve_attacks(
    spec: str | Sequence[str], *, num_classes: int, threat_models: Iterable[ThreatModel]
) -> tuple[list[str], dict[str, str]]:
    """Turn a suite name or a list of attack names into the attacks this model can run.

    Args:
        spec: a suite name from :data:`SUITES`, a comma-separated string of attack names, or a
            sequence of attack names and suite names. Duplicates are dropped, order is kept.
        num_classes: the number of model outputs.
        threat_models: the threat models of the run; an attack that supports none of their
            norms is skipped.

    Returns:
        ``(runnable, skipped)``: the attack names to run, in order, and for each attack left
        out, or each AutoAttack component left out (keyed ``"autoattack/<component>"``), the
        reason.

    Raises:
        ValueError: a name is neither an attack nor a suite, or ``num_classes < 2``.
    """
    if num_classes < 2:
        raise ValueError(f"Expected a model with at least 2 outputs (classes), but got {num_classes}.")
    names = _expand(spec)
    norms = {threat_model.norm for threat_model in threat_models}

    runnable: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        attack = ATTACKS[name]
        if num_classes < attack.min_classes:
            skipped[name] = f"needs at least {attack.min_classes} classes; the model has {num_classes}"
        elif not norms.intersection(attack.norms):
            skipped[name] = (
                f"supports only {', '.join(attack.norms)}; the threat models are {', '.join(sorted(norms))}"
            )
        else:
            runnable.append(name)

    if "autoattack" in runnable:
        for component, reason in autoattack_skipped_components(num_classes).items():
            skipped[f"autoattack/{component}"] = reason
    return runnable, skipped


def _expand(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"Expected attack names as strings, but got {item!r} of type {type(item).__name__}.")
        key = item.strip()
        expanded = SUITES.get(key.lower(), (key if key in ATTACKS else key.lower(),))
        for name in expanded:
            if name not in ATTACKS:
                raise ValueError(
                    f"Expected an attack name or a suite name, but got {item.strip()!r}. "
                    f"Suites: {', '.join(SUITES)}. Attacks: {', '.join(sorted(ATTACKS))}."
                )
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError(f"Expected at least one attack or suite name, but got {spec!r}.")
    return names
