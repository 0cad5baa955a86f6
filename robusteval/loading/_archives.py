"""Zip-based model files: which kind of archive a file is, and what loading it would execute.

torch.jit.save, torch.save (since PyTorch 1.6) and torch.export.save all write zip archives
whose members sit under one top-level folder. The members tell the formats apart:

* TorchScript: ``constants.pkl`` and Python-like source under ``code/``.
* torch.export: ``archive_format`` containing ``pt2``, graphs under ``models/``.
* torch.save: ``data.pkl`` without the TorchScript members.
* NumPy ``.npz``: only ``*.npy`` members at the top level.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ModelLoadError

ArchiveKind = Literal["torchscript", "export", "torch_save", "npz", "unknown"]

# data.pkl of a state_dict is a few kB per tensor; a larger pickle is not scanned in memory.
MAX_PICKLE_BYTES = 256 * 2**20

# Exceptions that zipfile and zlib raise on damaged archives: bad headers, CRC mismatches and
# broken compression, and RuntimeError for members flagged as encrypted.
ZIP_READ_ERRORS = (
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, ValueError, EOFError, KeyError,
    NotImplementedError, RuntimeError,
)

_EXPORT_COMPILED_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia/")
_EXPORT_UNPICKLED_PREFIXES = ("custom_obj_", "opaque_obj_")


@dataclass(frozen=True)
class ArchiveInfo:
    """Member names of a zip archive, split into the shared top-level folder and the rest."""

    kind: ArchiveKind
    root: str
    members: frozenset[str]

    def path_of(self, member: str) -> str:
        """Return the name inside the zip file of ``member`` (a name below the top-level folder)."""
        return f"{self.root}{member}"


def classify_archive(archive: zipfile.ZipFile) -> ArchiveInfo:
    """Tell which kind of model (or data) archive ``archive`` is, from its member names."""
    names = [name for name in archive.namelist() if not name.endswith("/")]
    if names and all("/" not in name for name in names) and all(name.endswith(".npy") for name in names):
        return ArchiveInfo("npz", "", frozenset(names))

    roots = {name.split("/", 1)[0] for name in names if "/" in name}
    if len(roots) != 1 or any("/" not in name for name in names):
        return ArchiveInfo("unknown", "", frozenset(names))
    root = f"{roots.pop()}/"
    members = frozenset(name[len(root):] for name in names)

    if "archive_format" in members and _read_small_text(archive, root + "archive_format") == "pt2":
        kind: ArchiveKind = "export"
    elif "constants.pkl" in members or any(member.startswith("code/") for member in members):
        kind = "torchscript"
    elif "data.pkl" in members:
        kind = "torch_save"
    else:
        kind = "unknown"
    return ArchiveInfo(kind, root, members)


def _read_small_text(archive: zipfile.ZipFile, name: str) -> str | None:
    info = archive.getinfo(name)
    if info.file_size > 64:
        return None
    return archive.read(info).decode("utf-8", errors="replace").strip()


def read_member(archive: zipfile.ZipFile, name: str, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """Return the bytes of member ``name``, raising :class:`ModelLoadError` above ``limit`` bytes."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise ModelLoadError(
            f"Archive member {name!r} is {info.file_size} bytes, more than the {limit} bytes "
            "robusteval inspects before loading. Save the weights as a state_dict with torch.save."
        )
    return archive.read(info)


def export_code_risks(archive: zipfile.ZipFile, info: ArchiveInfo) -> list[str]:
    """List what in a torch.export archive would run code or full unpickling when loaded.

    torch.export.load (PyTorch 2.13) unpickles pickled weights and constants with
    ``torch.load(weights_only=False)`` or ``pickle.loads``, falls back to ``weights_only=False``
    for sample inputs that the weights-only unpickler rejects, and loads AOTInductor packages as
    shared libraries. This check allows raw tensor payloads and members that the weights-only
    unpickler accepts, and lists everything else. An empty list means the archive loads without
    full unpickling.
    """
    risks = [f"compiled code in {member!r}" for member in sorted(info.members) if member.startswith(_EXPORT_COMPILED_DIRS)]

    raw_payloads: set[str] = set()
    pickled_payloads: set[str] = set()
    for member in sorted(info.members):
        if not (member.startswith("data/") and member.endswith("_config.json")):
            continue
        folder = member.rsplit("/", 1)[0] + "/"
        for entry in _payload_entries(archive, info.path_of(member)):
            payload = folder + str(entry.get("path_name", ""))
            if payload.rsplit("/", 1)[-1].startswith(_EXPORT_UNPICKLED_PREFIXES):
                risks.append(f"pickled Python object {payload!r}")
            elif entry.get("use_pickle") is False:
                raw_payloads.add(payload)
            else:
                pickled_payloads.add(payload)

    for member in sorted(info.members):
        checked = member in pickled_payloads or (
            member.startswith("data/") and not member.endswith(".json") and member not in raw_payloads
        )
        if checked and not member.startswith(_EXPORT_COMPILED_DIRS) and not _loads_weights_only(archive, info.path_of(member)):
            risks.append(f"member {member!r} that torch.load(weights_only=True) rejects")
    return risks


def _payload_entries(archive: zipfile.ZipFile, name: str) -> list[dict[str, object]]:
    try:
        config = json.loads(read_member(archive, name, limit=64 * 2**20))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"Invalid torch.export archive: member {name!r} is not valid JSON ({error}).") from None
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(entry, dict) for entry in entries.values()):
        raise ModelLoadError(f"Invalid torch.export archive: member {name!r} has no 'config' mapping of payloads.")
    return list(entries.values())


def _loads_weights_only(archive: zipfile.ZipFile, name: str) -> bool:
    data = read_member(archive, name)
    if not data:
        # torch.export writes empty sample inputs when none were recorded, and loads them as {}.
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - any failure on untrusted bytes means "not plain weights"
        return False
    return True
