"""``python -m robusteval``: the same as the ``robusteval`` command (used by ``torchrun -m``)."""

from robusteval.cli import main

main()
