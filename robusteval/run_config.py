"""The ``[run]`` table of a ``robusteval.toml`` file: defaults for ``robusteval run`` and ``compare``.

Example::

    [run]
    data = "test.npz"
    samples = 500
    seed = 1
    attacks = "standard"              # a suite name or a list such as ["fmn", "pgd"]

    [run.eps]                         # threat models: epsilon grids in input units
    linf = [0.01, 0.03, 0.1]
    l2 = [0.25, 0.5, 1.0]

Options given on the command line win over the file. The ``[gate]`` table of the same file is
the CI gate's policy (see :mod:`robusteval.gate`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ._types import parse_norm

# key -> (accepted Python types, description for messages)
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "data": ((str,), "a data name or path"),
    "arch": ((str,), "an architecture spec such as 'mlp:64-128-10'"),
    "samples": ((int,), "a positive integer"),
    "seed": ((int,), "an integer"),
    "device": ((str,), "'cpu', 'cuda' or 'cuda:N'"),
    "attacks": ((str, list), "a suite name or a list of attack names"),
    "eps": ((dict,), "a table mapping 'linf' and/or 'l2' to lists of epsilons"),
    "parameter_space": ((bool,), "true or false"),
    "lower": ((int, float), "a number"),
    "upper": ((int, float), "a number"),
    "ts_method": ((str,), "'auto', 'closed_form', 'exact' or 'hutchinson'"),
    "probes": ((int,), "a positive integer"),
    "noise_draws": ((int,), "a positive integer"),
    "weight_steps": ((int,), "a positive integer"),
    "tangent_shift_eps": ((int, float), "a number >= 0"),
    "bootstrap": ((int,), "an integer >= 10"),
    "block_size": ((int,), "a positive integer"),
    "memory_budget": ((int,), "MiB, an integer >= 16"),
}
# Smallest accepted value of the numeric keys, as on the command line.
_MINIMUMS: dict[str, float] = {
    "samples": 1, "probes": 1, "noise_draws": 1, "weight_steps": 1, "tangent_shift_eps": 0,
    "bootstrap": 10, "block_size": 1, "memory_budget": 16,
}


def load_run_table(path: str | Path) -> dict[str, Any]:
    """Read and validate the ``[run]`` table of the TOML file at ``path``.

    Returns the table with ``eps`` turned into ``--eps`` strings (``["linf=0.01,0.03"]``) and
    ``attacks`` into the comma-separated form the CLI takes. A file without a ``[run]`` table
    returns an empty dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not TOML, or a key is unknown or has the wrong type.
    """
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"Config file not found: {str(source)!r}. Pass the path of a robusteval.toml with a [run] table.")
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"Invalid config file {str(source)!r}: not valid TOML ({error}).") from None
    except UnicodeDecodeError:
        raise ValueError(f"Invalid config file {str(source)!r}: not UTF-8 text. Pass a robusteval.toml file.") from None
    table = document.get("run", {})
    if not isinstance(table, dict):
        raise ValueError(f"Expected [run] in {str(source)!r} to be a table, but got {type(table).__name__}.")

    settings: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _KEYS:
            raise ValueError(
                f"Unknown key {key!r} in the [run] table of {str(source)!r}. Known keys: {', '.join(sorted(_KEYS))}."
            )
        types, description = _KEYS[key]
        wrong_type = isinstance(value, bool) and bool not in types or not isinstance(value, types)
        if wrong_type or (key in _MINIMUMS and value < _MINIMUMS[key]):
            raise ValueError(
                f"Expected [run] {key} in {str(source)!r} to be {description}, but got {value!r}."
            )
        settings[key] = value

    if "eps" in settings:
        settings["eps"] = [_eps_option(norm, values, source) for norm, values in settings["eps"].items()]
    if isinstance(settings.get("attacks"), list):
        names = settings["attacks"]
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"Expected [run] attacks in {str(source)!r} to be a non-empty list of names, but got {names!r}.")
        settings["attacks"] = ",".join(names)
    return settings


def _eps_option(norm: str, values: Any, source: Path) -> str:
    parse_norm(norm)
    if not isinstance(values, list) or not values or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in values
    ):
        raise ValueError(
            f"Expected [run.eps] {norm} in {str(source)!r} to be a non-empty list of numbers, but got {values!r}."
        )
    return f"{norm}={','.join(repr(float(value)) for value in values)}"
