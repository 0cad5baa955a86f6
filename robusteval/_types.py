"""Small shared types: norms and input bounds."""

from __future__ import annotations

from typing import Literal, NamedTuple

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")


class Bounds(NamedTuple):
    """Closed interval ``[lower, upper]`` that every input value must lie in."""

    lower: float
    upper: float


def parse_norm(value: str) -> Norm:
    """Return ``value`` as a :data:`Norm`, accepting ``inf`` and ``2`` as aliases."""
    aliases = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}
    key = value.strip().lower()
    if key not in aliases:
        raise ValueError(f"Expected a norm 'linf' or 'l2', but got {value!r}.")
    return aliases[key]  # type: ignore[return-value]
