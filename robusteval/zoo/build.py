"""Train the zoo's family into a folder, with per-epoch checkpoints and a ``zoo.json`` index.

Layout of the output folder::

    DIR/zoo.json                   index: seed, quick flag, one entry per member
    DIR/<member>/model.pt          final state_dict (the same bytes as the last checkpoint)
    DIR/<member>/model.json        metadata, in the format of the bundled models
    DIR/<member>/epoch-001.pt ...  state_dict after each epoch

Every file is a function of the seed, the member list and the quick flag only, so two runs
with the same arguments write bit-identical files on the same machine and torch build.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import OutputExistsError, ResultsFormatError
from ..progress import NullProgress, ProgressReporter
from .artifacts import json_bytes, load_digits_tensors, model_metadata, state_dict_bytes, write_bytes_atomic
from .members import FAMILY, ZooMember, select_members
from .training import EpochRecord, train_classifier

INDEX_NAME = "zoo.json"
INDEX_SCHEMA = "robusteval/zoo/v1"


@dataclass(frozen=True)
class ZooEntry:
    """One trained member: its files relative to the zoo folder, and its final accuracies."""

    name: str
    model: str
    metadata: str
    checkpoints: tuple[str, ...]
    train_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class ZooIndex:
    """The contents of ``zoo.json``: where the zoo is and what it holds."""

    root: Path
    seed: int
    quick: bool
    members: tuple[ZooEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form written to ``zoo.json`` (paths relative to ``root``)."""
        return {
            "schema": INDEX_SCHEMA,
            "seed": self.seed,
            "quick": self.quick,
            "members": [
                {
                    "name": entry.name,
                    "model": entry.model,
                    "metadata": entry.metadata,
                    "checkpoints": list(entry.checkpoints),
                    "train_accuracy": entry.train_accuracy,
                    "test_accuracy": entry.test_accuracy,
                }
                for entry in self.members
            ],
        }


def checkpoint_name(epoch: int) -> str:
    """Return the file name of the checkpoint saved after ``epoch`` (1-based)."""
    return f"epoch-{epoch:03d}.pt"


def train_command(seed: int, members: tuple[ZooMember, ...], quick: bool) -> str:
    """Return the ``robusteval zoo train`` command line that reproduces a zoo (output folder as DIR)."""
    parts = ["robusteval", "zoo", "train", "--out", "DIR", "--seed", str(seed)]
    if quick:
        parts.append("--quick")
    if tuple(member.name for member in members) != tuple(member.name for member in FAMILY):
        parts += ["--members", ",".join(member.name for member in members)]
    return " ".join(parts)


def train_zoo(
    out_dir: str | os.PathLike[str],
    *,
    seed: int,
    members: list[str] | None = None,
    quick: bool = False,
    progress: ProgressReporter | None = None,
    overwrite: bool = False,
) -> ZooIndex:
    """Train the family (or the named members) on the digits training split into ``out_dir``.

    Args:
        out_dir: output folder; it must be missing or empty unless ``overwrite`` is set.
        seed: drives initialization, label noise, shuffling and PGD random starts. Every
            member uses the same seed, so members of one architecture start from the same
            weights and differ only in their training recipe.
        members: names from :data:`robusteval.zoo.members.FAMILY`; all when ``None``.
        quick: train each member for :data:`robusteval.zoo.members.QUICK_EPOCHS` epochs.
        progress: receives one step per trained epoch under the stage ``"zoo"``.
        overwrite: replace the files of an earlier zoo in ``out_dir``.

    Returns:
        The index that was also written to ``out_dir/zoo.json``.

    Raises:
        OutputExistsError: ``out_dir`` is not empty and ``overwrite`` is not set.
    """
    selected = select_members(members)
    if quick:
        selected = tuple(member.quick() for member in selected)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"Expected an output folder, but {root} is a file. Pass another --out path.")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"Expected an empty or missing output folder, but {root} is not empty. "
            "Pass another --out path, or --force to overwrite the zoo in it."
        )
    reporter = progress if progress is not None else NullProgress()
    reporter.start("zoo", sum(member.config.epochs for member in selected))

    data = load_digits_tensors()
    command = train_command(seed, selected, quick)
    entries = []
    for member in selected:
        entries.append(_train_member(root, member, seed=seed, data=data, command=command, reporter=reporter))
    reporter.finish("zoo")

    index = ZooIndex(root=root, seed=seed, quick=quick, members=tuple(entries))
    write_bytes_atomic(root / INDEX_NAME, json_bytes(index.to_dict()))
    return index


def _train_member(
    root: Path, member: ZooMember, *, seed: int, data: Any, command: str, reporter: ProgressReporter
) -> ZooEntry:
    folder = root / member.name
    checkpoints: list[str] = []

    def save_checkpoint(epoch: int, model: nn.Module, record: EpochRecord) -> None:
        name = checkpoint_name(epoch)
        write_bytes_atomic(folder / name, state_dict_bytes(model))
        checkpoints.append(f"{member.name}/{name}")
        reporter.advance("zoo")

    model, history = train_classifier(member.config, data.x_train, data.y_train, seed=seed, on_epoch=save_checkpoint)
    weights = state_dict_bytes(model)
    metadata = model_metadata(member, seed=seed, weights=weights, model=model, data=data, command=command)
    metadata["history"] = [{"epoch": record.epoch, "train_loss": record.train_loss} for record in history]
    write_bytes_atomic(folder / "model.pt", weights)
    write_bytes_atomic(folder / "model.json", json_bytes(metadata))
    return ZooEntry(
        name=member.name,
        model=f"{member.name}/model.pt",
        metadata=f"{member.name}/model.json",
        checkpoints=tuple(checkpoints),
        train_accuracy=metadata["train_accuracy"],
        test_accuracy=metadata["test_accuracy"],
    )


def load_zoo_index(zoo_dir: str | os.PathLike[str]) -> ZooIndex:
    """Read ``zoo_dir/zoo.json``.

    Raises:
        FileNotFoundError: the folder has no ``zoo.json``.
        ResultsFormatError: ``zoo.json`` is not a zoo index of a known schema.
    """
    root = Path(zoo_dir)
    path = root / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected a zoo index {path}, but it was not found. Create the zoo with `robusteval zoo train --out {root}`."
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("schema") != INDEX_SCHEMA:
            raise ResultsFormatError(f"Expected schema {INDEX_SCHEMA!r} in {path}, but got {payload.get('schema')!r}.")
        entries = tuple(
            ZooEntry(
                name=str(item["name"]),
                model=str(item["model"]),
                metadata=str(item["metadata"]),
                checkpoints=tuple(str(checkpoint) for checkpoint in item["checkpoints"]),
                train_accuracy=float(item["train_accuracy"]),
                test_accuracy=float(item["test_accuracy"]),
            )
            for item in payload["members"]
        )
        return ZooIndex(root=root, seed=int(payload["seed"]), quick=bool(payload["quick"]), members=entries)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise ResultsFormatError(
            f"Expected a zoo index written by `robusteval zoo train` in {path}, but reading it failed: {error}."
        ) from None
