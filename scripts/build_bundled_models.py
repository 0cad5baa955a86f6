"""Rebuild the models bundled in robusteval/models (``<name>.pt`` and ``<name>.json``).

Training is deterministic, so on the same torch build this reproduces the committed files
byte for byte; compare the printed sha256 with the ``sha256`` field of each ``.json`` file.

Usage: python scripts/build_bundled_models.py [--out DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib

from robusteval.zoo.artifacts import BUNDLED_DIR, build_bundled_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="bundled model names to build (default: all)")
    parser.add_argument("--out", default=str(BUNDLED_DIR), help="output folder (default: robusteval/models)")
    arguments = parser.parse_args()
    for path in build_bundled_models(arguments.out, arguments.names or None):
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}")


if __name__ == "__main__":
    main()
