"""Command-line interface: ``robusteval run | compare | gate | report | inspect | zoo | study``.

Each command parses its options, calls one library function and hands the result to a
renderer. Only this package prints, and only here are robusteval's exceptions turned into
messages and exit codes:

* 0: success (for ``gate``: every threshold passed)
* 1: ``gate`` only: a threshold failed
* 2: bad input or usage (invalid file, option or value)
* 3: ``gate`` only: the evaluation is unreliable and the policy fails on that
* 130: interrupted (Ctrl-C); ``--resume`` continues the run
"""

from __future__ import annotations

from ._app import app, main

# Each module registers its commands on ``app`` when imported.
from . import run as _run  # noqa: F401
from . import report as _report  # noqa: F401
from . import compare as _compare  # noqa: F401
from . import gate as _gate  # noqa: F401
from . import zoo as _zoo  # noqa: F401
from . import inspect as _inspect  # noqa: F401

__all__ = ["app", "main"]
