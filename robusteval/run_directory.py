"""The output directory of a run: results, per-block partial results and resuming.

Layout of ``DIR``:

* ``results.json``: the final results (schema v1), written once at the end.
* ``partial/run.json``: the configuration fingerprint of the run that wrote the blocks.
* ``partial/block-<first row>.json``: per-sample records of one finished block.

Every file is written atomically, so a run killed at any moment leaves only whole files.
``--resume`` reuses the finished blocks of a run with the same fingerprint and computes the rest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .errors import OutputExistsError, ResumeError
from .results import SampleRecord, _build, write_json_atomic

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
PARTIAL_NAME = "partial"


class RunDirectory:
    """Owns the files of one run below ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.partial = self.root / PARTIAL_NAME

    @property
    def results_path(self) -> Path:
        return self.root / RESULTS_NAME

    def prepare(self, fingerprint: dict[str, Any], *, resume: bool, force: bool) -> None:
        """Check that the run may write here, then record ``fingerprint``.

        Raises:
            OutputExistsError: results or partial results exist and neither ``resume`` nor
                ``force`` was given, or ``resume`` was given for finished results.
            ResumeError: ``resume`` was given but the partial results come from another configuration.
        """
        if self.root.exists() and not self.root.is_dir():
            raise OutputExistsError(f"Output path {str(self.root)!r} exists and is not a directory. Choose another --out.")
        has_results = self.results_path.exists()
        has_partial = (self.partial / "run.json").exists()

        if force:
            # Only robusteval's own files are removed; anything else in the directory stays.
            self.results_path.unlink(missing_ok=True)
            shutil.rmtree(self.partial, ignore_errors=True)
        elif resume:
            if has_results and not has_partial:
                raise OutputExistsError(
                    f"{str(self.results_path)!r} already holds finished results, so there is nothing to resume. "
                    "Pass --force to recompute them, or choose another --out."
                )
            if has_partial:
                recorded = json.loads((self.partial / "run.json").read_text(encoding="utf-8"))
                if recorded != _jsonable(fingerprint):
                    changed = sorted(key for key in set(recorded) | set(fingerprint)
                                     if recorded.get(key) != _jsonable(fingerprint).get(key))
                    raise ResumeError(
                        f"Cannot resume the run in {str(self.root)!r}: its configuration differs in {', '.join(changed)}. "
                        "Re-run with the original options, or pass --force to start over."
                    )
        elif has_partial:
            raise OutputExistsError(
                f"Output directory {str(self.root)!r} already holds partial results of an interrupted run. "
                "Pass --resume to continue it, --force to start over, or choose another --out."
            )
        elif has_results:
            raise OutputExistsError(
                f"Output directory {str(self.root)!r} already holds results. "
                "Pass --force to overwrite them, or choose another --out."
            )

        self.partial.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.partial / "run.json", fingerprint)

    def block_path(self, start: int) -> Path:
        return self.partial / f"block-{start:08d}.json"

    def load_block(self, start: int) -> list[SampleRecord] | None:
        """Return the records of the finished block starting at row ``start``, or ``None``."""
        path = self.block_path(start)
        if not path.exists():
            return None
        payload = json.loads(path.read_text(encoding="utf-8"))
        logger.info("Reusing finished block %s (%d samples)", path.name, len(payload["samples"]))
        return [_build(SampleRecord, item) for item in payload["samples"]]

    def save_block(self, start: int, records: list[SampleRecord], extra: dict[str, Any]) -> None:
        from dataclasses import asdict

        payload = {"start": start, "samples": [asdict(record) for record in records], **extra}
        write_json_atomic(self.block_path(start), payload, indent=None)

    def load_block_extra(self, start: int) -> dict[str, Any]:
        payload = json.loads(self.block_path(start).read_text(encoding="utf-8"))
        return {key: value for key, value in payload.items() if key not in ("start", "samples")}

    def finish(self) -> None:
        """Remove the partial results once ``results.json`` is written."""
        shutil.rmtree(self.partial, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))
