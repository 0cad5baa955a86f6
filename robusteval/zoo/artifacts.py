"""Model files of the zoo: a ``state_dict`` saved with ``torch.save`` plus a metadata JSON.

The metadata has the keys ``name``, ``architecture``, ``description``, ``training`` (every
hyperparameter, the seed and the epochs), ``command``, ``sha256`` (of the ``.pt`` file),
``test_accuracy`` and ``train_accuracy``. The ``.pt`` files hold only tensors, so they load
with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..architectures import build_architecture
from ..digits import digits_split
from .members import BUNDLED, BUNDLED_SEED, ZooMember
from .training import accuracy_and_loss, train_classifier

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
BUILD_COMMAND = "python scripts/build_bundled_models.py"


@dataclass(frozen=True)
class DigitsData:
    """The digits train and test splits as tensors: inputs ``(N, 64)`` float32, labels ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_tensors() -> DigitsData:
    """Load both digits splits as tensors."""
    x_train, y_train = digits_split("train")
    x_test, y_test = digits_split("test")
    return DigitsData(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test))


def state_dict_bytes(model: nn.Module) -> bytes:
    """Serialize ``model``'s ``state_dict`` with ``torch.save`` into bytes.

    Saving through a buffer keeps the archive's internal folder name fixed at ``archive``.
    ``torch.save`` to a path names that folder after the file, so the same weights saved
    under two file names would otherwise differ in bytes (measured with torch 2.13).
    """
    state = {key: tensor.detach().clone().contiguous() for key, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def json_bytes(payload: Any) -> bytes:
    """Return ``payload`` as indented, key-sorted JSON text ending in a newline."""
    return (json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def sha256_bytes(payload: bytes) -> str:
    """Return the hex SHA-256 digest of ``payload``."""
    return hashlib.sha256(payload).hexdigest()


def model_metadata(
    member: ZooMember, *, seed: int, weights: bytes, model: nn.Module, data: DigitsData, command: str
) -> dict[str, Any]:
    """Build the metadata record of a trained member (see the module docstring for its keys)."""
    train_accuracy, train_loss = accuracy_and_loss(model, data.x_train, data.y_train)
    test_accuracy, test_loss = accuracy_and_loss(model, data.x_test, data.y_test)
    return {
        "name": member.name,
        "architecture": member.config.architecture,
        "description": member.description,
        "training": {
            **member.config.to_dict(),
            "seed": seed,
            "optimizer": "SGD",
            "data": "robusteval.digits.digits_split('train')",
            "torch": torch.__version__,
        },
        "command": command,
        "sha256": sha256_bytes(weights),
        "input_shape": [int(data.x_train.shape[1])],
        "input_bounds": [0.0, 1.0],
        "num_classes": int(data.y_train.max()) + 1,
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "train_loss": train_loss,
        "test_loss": test_loss,
    }


def build_bundled_models(out_dir: str | os.PathLike[str] = BUNDLED_DIR, names: list[str] | None = None) -> list[Path]:
    """Train the bundled models and write ``<name>.pt`` and ``<name>.json`` for each into ``out_dir``.

    Args:
        out_dir: destination folder; the package's ``robusteval/models`` by default.
        names: bundled model names to build; all of them when ``None``.

    Returns:
        The paths of the written ``.pt`` files.
    """
    known = [member.name for member in BUNDLED]
    requested = known if names is None else names
    unknown = sorted(set(requested) - set(known))
    if unknown:
        raise ValueError(f"Expected bundled model names from {known}, but got unknown {unknown}.")

    data = load_digits_tensors()
    folder = Path(out_dir)
    written = []
    for member in BUNDLED:
        if member.name not in requested:
            continue
        model, _ = train_classifier(member.config, data.x_train, data.y_train, seed=BUNDLED_SEED)
        weights = state_dict_bytes(model)
        metadata = model_metadata(member, seed=BUNDLED_SEED, weights=weights, model=model, data=data, command=BUILD_COMMAND)
        write_bytes_atomic(folder / f"{member.name}.pt", weights)
        write_bytes_atomic(folder / f"{member.name}.json", json_bytes(metadata))
        written.append(folder / f"{member.name}.pt")
    return written


def load_zoo_model(pt_path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Load a zoo model file and the metadata JSON beside it, without full unpickling.

    Args:
        pt_path: a ``.pt`` file written by the zoo. Its metadata is the ``.json`` file of the
            same stem. A per-epoch checkpoint ``epoch-XXX.pt`` uses the ``model.json`` in
            its folder instead.

    Returns:
        The network in eval mode and its metadata.
    """
    path = Path(pt_path)
    metadata_path = path.with_suffix(".json")
    if not metadata_path.exists():
        metadata_path = path.parent / "model.json"
    if not metadata_path.exists():
        raise FileNotFoundError(
            f"Expected a metadata file {path.with_suffix('.json')} or {metadata_path} beside {path}, but found neither. "
            "Zoo models are written by `robusteval zoo train` or scripts/build_bundled_models.py."
        )
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    model = build_architecture(metadata["architecture"])
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    return model, metadata
