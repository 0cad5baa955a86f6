"""Model loading: turn a model file, or a bundled model name, into an eval-mode ``nn.Module``.

The format is detected from the file's bytes, not its extension:

* TorchScript archives (``torch.jit.save``), loaded with ``torch.jit.load``.
* torch.export archives (``torch.export.save``), loaded with ``torch.export.load(...).module()``
  after checking that loading them runs no pickled code (see :func:`export_code_risks`).
* state_dicts and checkpoint dicts (``{"state_dict": ...}``, ``{"model": ...}``,
  ``{"model_state_dict": ...}``) loaded with ``torch.load(weights_only=True)`` into the network
  an architecture spec names.
* Fully pickled modules. Unpickling them can run arbitrary code, so they are detected by
  inspecting pickle opcodes without unpickling, and loaded only with ``trust_pickle=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import warnings
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafePickleError
from ._archives import MAX_PICKLE_BYTES, ZIP_READ_ERRORS, ArchiveInfo, classify_archive, export_code_risks, read_member
from ._pickle_scan import PickleScan, scan_pickle_bytes, scan_pickles
from ._state_dict import CHECKPOINT_KEYS, build_from_state_dict, describe_checkpoint, is_state_dict

__all__ = ["LoadedModel", "MODELS_DIR", "bundled_model_path", "load_model", "modules_saved_in_train_mode"]

logger = logging.getLogger(__name__)

# Folder of the bundled models; tests point it at a temporary folder.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
ZOO_PREFIX = "zoo:"
_BUNDLED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Formats whose files record each module's train/eval flag; a state_dict does not, and the
# network built for it starts in train mode whatever the weights were trained with.
_FORMATS_WITH_TRAINING_FLAG = frozenset({"torchscript", "pickle"})
# Loaded module -> names of its submodules that were in train mode in the file, before
# load_model switched them to eval mode. Weak keys, so the record dies with the module.
_SAVED_IN_TRAIN_MODE: weakref.WeakKeyDictionary[nn.Module, tuple[str, ...]] = weakref.WeakKeyDictionary()

_FORMATS_HELP = (
    "robusteval reads TorchScript archives (torch.jit.save), torch.export archives (.pt2), "
    "state_dicts or checkpoint dicts saved with torch.save (with --arch), and, with --trust-pickle, "
    "fully pickled modules"
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for evaluation, with where it came from.

    Attributes:
        module: The network, in eval mode, on the requested device. Exported programs fix their
            train/eval behaviour when exported and are returned unchanged in that respect.
        path: The file that was loaded.
        sha256: SHA-256 of the file's bytes.
        format: ``"torchscript"``, ``"export"``, ``"state_dict"``, ``"checkpoint"``, ``"pickle"``
            or ``"bundled"``.
        architecture: The architecture spec the weights were loaded into, or ``None`` when the
            file carries its own network.
        name: Display name: the file name, or the bundled model's name.
    """

    module: nn.Module
    path: str
    sha256: str
    format: str
    architecture: str | None
    name: str


def bundled_model_path(name: str) -> Path:
    """Return the path of bundled model ``name``: ``<MODELS_DIR>/<name>.pt``.

    Its metadata, with the ``"architecture"`` spec, is the ``<name>.json`` beside it.
    """
    if not _BUNDLED_NAME.fullmatch(name):
        raise ValueError(f"Expected a bundled model name of letters, digits, '_', '-' or '.', but got {name!r}.")
    return MODELS_DIR / f"{name}.pt"


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model file, or ``"zoo:<name>"`` for a bundled model, detecting the format from its bytes.

    Args:
        path: Model file, or ``"zoo:<name>"``.
        arch: Architecture spec for state_dict files, for example ``"mlp:64-128-10"`` (see
            :func:`robusteval.architectures.build_architecture`). Overrides a bundled model's spec.
        trust_pickle: Allow full unpickling, which runs whatever code the file contains. Only for
            files from a trusted source.
        device: Device to move the network to.

    Raises:
        UnsafePickleError: The file needs full unpickling and ``trust_pickle`` is false.
        ModelLoadError: The file is missing, unreadable, or not a model in a supported format.
        ValueError: ``arch`` or ``device`` is invalid.
    """
    target = _parse_device(device)
    if isinstance(path, str) and path.startswith(ZOO_PREFIX):
        return _load_bundled(path[len(ZOO_PREFIX):], arch, target)

    source = Path(path)
    _check_model_path(source)
    digest = file_sha256(source)
    module, model_format, architecture = _load_file(source, arch=arch, trust_pickle=trust_pickle)
    if model_format in _FORMATS_WITH_TRAINING_FLAG:
        training = tuple(name for name, submodule in module.named_modules() if submodule.training)
    else:
        training = ()
    prepared = _prepare_module(module, target)
    if training:
        _SAVED_IN_TRAIN_MODE[prepared] = training
    return LoadedModel(prepared, str(source), digest, model_format, architecture, source.name)


def modules_saved_in_train_mode(module: nn.Module) -> tuple[str, ...]:
    """Return the names of ``module``'s submodules that were in train mode in the file it was loaded from.

    ``load_model`` returns every model in eval mode, so the file's flags survive only here. The
    root module's name is ``""``. Empty for models that did not come from ``load_model``, and for
    state_dicts, which carry no train/eval flag.
    """
    return _SAVED_IN_TRAIN_MODE.get(module, ())


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Expected a torch device such as 'cpu' or 'cuda:0', but got {device!r}.") from None


def _check_model_path(source: Path) -> None:
    if not source.exists():
        raise ModelLoadError(f"Model file not found: {str(source)!r}. Check the path, or use zoo:demo for the bundled model.")
    if source.is_dir():
        raise ModelLoadError(
            f"Expected a model file, but {str(source)!r} is a directory. "
            "Pass the .pt or .pt2 file inside it (an unzipped archive must be zipped again)."
        )
    if not source.is_file():
        raise ModelLoadError(f"Expected a regular model file, but {str(source)!r} is not one (a device, socket or pipe).")
    if source.stat().st_size == 0:
        raise ModelLoadError(f"Model file {str(source)!r} is empty (0 bytes). Save the model again.")


def _load_file(source: Path, *, arch: str | None, trust_pickle: bool) -> tuple[nn.Module, str, str | None]:
    with source.open("rb") as handle:
        header = handle.read(64)
    if header.startswith(b"PK\x03\x04") or header.startswith(b"PK\x05\x06"):
        return _load_zip(source, arch=arch, trust_pickle=trust_pickle)
    if header[:1] == b"\x80":
        return _load_pickle_stream(source, arch=arch, trust_pickle=trust_pickle)
    raise ModelLoadError(_describe_unknown_bytes(source, header))


def _load_zip(source: Path, *, arch: str | None, trust_pickle: bool) -> tuple[nn.Module, str, str | None]:
    try:
        archive = zipfile.ZipFile(source)
    except ZIP_READ_ERRORS as error:
        raise ModelLoadError(
            f"{str(source)!r} starts like a zip archive (the container of .pt and .pt2 files) but cannot be "
            f"read as one ({error}); it is probably truncated or corrupt. Download or save it again."
        ) from None

    with archive:
        try:
            info = classify_archive(archive)
        except ZIP_READ_ERRORS as error:
            raise ModelLoadError(f"Could not read the zip archive {str(source)!r} ({error}). Download or save it again.") from None
        if info.kind == "torchscript":
            return _load_torchscript(source), "torchscript", None
        if info.kind == "export":
            return _load_export(source, archive, info, trust_pickle=trust_pickle), "export", None
        if info.kind == "torch_save":
            data = _read_archive_pickle(source, archive, info)
            scan = scan_pickle_bytes(data)
            obj = _torch_load(source, scan, trust_pickle=trust_pickle)
            return _module_from_object(obj, arch=arch, source=repr(str(source)))
        if info.kind == "npz":
            raise ModelLoadError(
                f"{str(source)!r} is a NumPy .npz archive (arrays: {', '.join(sorted(info.members)[:6])}), "
                "which is a data file, not a model. Pass it with --data, and pass the model file separately."
            )
    listed = ", ".join(repr(name) for name in sorted(info.members)[:6])
    raise ModelLoadError(
        f"{str(source)!r} is a zip archive but not one written by PyTorch (members: {listed}). {_FORMATS_HELP}."
    )


def _read_archive_pickle(source: Path, archive: zipfile.ZipFile, info: ArchiveInfo) -> bytes:
    try:
        return read_member(archive, info.path_of("data.pkl"), limit=MAX_PICKLE_BYTES)
    except ZIP_READ_ERRORS as error:
        raise ModelLoadError(f"Could not read data.pkl from {str(source)!r} ({error}); the file is corrupt. Save it again.") from None


def _load_pickle_stream(source: Path, *, arch: str | None, trust_pickle: bool) -> tuple[nn.Module, str, str | None]:
    with source.open("rb") as handle:
        scan = scan_pickles(handle, source.stat().st_size)
    if scan.pickle_count == 0:
        raise ModelLoadError(
            f"{str(source)!r} starts like a Python pickle but is not a valid one ({scan.error}); it is probably "
            f"truncated or corrupt. {_FORMATS_HELP}."
        )
    if scan.is_legacy_torch_save:
        obj = _torch_load(source, scan, trust_pickle=trust_pickle)
        return _module_from_object(obj, arch=arch, source=repr(str(source)))

    # A plain pickle (pickle.dump, not torch.save) can only be read by full unpickling.
    if not trust_pickle:
        raise UnsafePickleError(_unsafe_pickle_message(source, scan, plain=True))
    logger.warning("Unpickling %s with pickle.load because trust_pickle is set", source)
    with source.open("rb") as handle:
        obj = _guarded_load(source, lambda: pickle.load(handle))  # noqa: S301 - the caller trusts the file
    return _module_from_object(obj, arch=arch, source=repr(str(source)))


def _torch_load(source: Path, scan: PickleScan, *, trust_pickle: bool) -> Any:
    """Load a torch.save file: weights-only unless it references other globals and is trusted."""
    if scan.unsafe_globals:
        if not trust_pickle:
            raise UnsafePickleError(_unsafe_pickle_message(source, scan, plain=False))
        logger.warning("Loading %s with torch.load(weights_only=False) because trust_pickle is set", source)
        return _guarded_load(source, lambda: torch.load(source, weights_only=False, map_location="cpu"))
    try:
        with warnings.catch_warnings():
            # Old pickle protocols make torch.load warn about the weights-only unpickler's support.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            return torch.load(source, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower() and not trust_pickle:
            raise UnsafePickleError(
                f"{str(source)!r} references Python objects beyond tensors, which only full unpickling can "
                f"rebuild, and full unpickling can run arbitrary code from the file. torch.load reported: "
                f"{_first_line(error)}. Pass --trust-pickle (trust_pickle=True) only if you trust where the file came from."
            ) from None
        raise ModelLoadError(f"Could not load {str(source)!r} with torch.load: {_first_line(error)}.") from None
    except Exception as error:  # noqa: BLE001 - torch.load raises many types on corrupt files
        raise ModelLoadError(
            f"Could not load {str(source)!r} with torch.load ({type(error).__name__}: {_first_line(error)}); "
            "the file is probably truncated or corrupt. Save it again."
        ) from None


def _guarded_load(source: Path, load: Any) -> Any:
    try:
        return load()
    except Exception as error:  # noqa: BLE001 - unpickling raises whatever the file's code raises
        raise ModelLoadError(f"Unpickling {str(source)!r} failed ({type(error).__name__}: {_first_line(error)}).") from None


def _unsafe_pickle_message(source: Path, scan: PickleScan, *, plain: bool) -> str:
    names = scan.unsafe_globals or scan.globals
    listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    kind = "a plain Python pickle (not torch.save output)" if plain else "a pickle that references Python objects beyond tensors"
    referenced = f" It references {listed}." if listed else ""
    return (
        f"{str(source)!r} is {kind}, typically a whole pickled model, so loading it means full unpickling, "
        f"which can run arbitrary code from the file.{referenced} robusteval did not unpickle it. "
        "If you trust where the file came from, pass --trust-pickle (trust_pickle=True). Safer: save "
        "model.state_dict() and pass --arch, or save with torch.jit.save or torch.export.save."
    )


def _load_torchscript(source: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates torch.jit.load in favour of torch.export; the file is still valid.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            return torch.jit.load(str(source), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - the TorchScript reader raises RuntimeError and others
        raise ModelLoadError(
            f"{str(source)!r} is a TorchScript archive that torch.jit.load cannot read "
            f"({type(error).__name__}: {_first_line(error)}). Save it again with torch.jit.save, "
            f"using torch {torch.__version__} or an older release."
        ) from None


def _load_export(source: Path, archive: zipfile.ZipFile, info: ArchiveInfo, *, trust_pickle: bool) -> nn.Module:
    try:
        risks = export_code_risks(archive, info)
    except ZIP_READ_ERRORS as error:
        raise ModelLoadError(
            f"Could not read the torch.export archive {str(source)!r} ({type(error).__name__}: {error}); "
            "it is probably corrupt. Export the model again."
        ) from None
    if risks and not trust_pickle:
        raise UnsafePickleError(
            f"{str(source)!r} is a torch.export archive whose loading would run code from the file: "
            f"{'; '.join(risks[:4])}. robusteval did not load it. Pass --trust-pickle (trust_pickle=True) "
            "only if you trust where the file came from, or export the model again without custom objects."
        )
    try:
        with warnings.catch_warnings(), source.open("rb") as handle:
            warnings.simplefilter("ignore")
            return torch.export.load(handle).module()
    except Exception as error:  # noqa: BLE001 - torch.export.load raises many types on bad archives
        raise ModelLoadError(
            f"{str(source)!r} is a torch.export archive that torch.export.load cannot read "
            f"({type(error).__name__}: {_first_line(error)}). Export it again with torch {torch.__version__}."
        ) from None


def _module_from_object(obj: Any, *, arch: str | None, source: str) -> tuple[nn.Module, str, str | None]:
    if isinstance(obj, nn.Module):
        return obj, "pickle", None
    if is_state_dict(obj):
        return build_from_state_dict(obj, arch, source), "state_dict", arch
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner, "pickle", None
            if inner is not None and is_state_dict(inner):
                return build_from_state_dict(inner, arch, f"{source} (key {key!r})"), "checkpoint", arch
    raise ModelLoadError(
        f"Expected {source} to contain a model, a state_dict or a checkpoint dict with one of the keys "
        f"{', '.join(map(repr, CHECKPOINT_KEYS))}, but it contains {describe_checkpoint(obj)}. "
        "Save model.state_dict() with torch.save and pass --arch."
    )


def _load_bundled(name: str, arch: str | None, device: torch.device) -> LoadedModel:
    weights_path = bundled_model_path(name)
    metadata_path = weights_path.with_suffix(".json")
    if not weights_path.is_file() or not metadata_path.is_file():
        available = sorted(path.stem for path in MODELS_DIR.glob("*.pt") if path.with_suffix(".json").is_file())
        raise ModelLoadError(
            f"No bundled model named {name!r} (looked for {weights_path.name} and {metadata_path.name} in "
            f"{str(MODELS_DIR)!r}). Available: {', '.join(available) or 'none'}."
        )
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"Invalid metadata file {str(metadata_path)!r}: {error}.") from None
    spec = arch
    if spec is None and isinstance(metadata, dict):
        spec = metadata.get("architecture")
    if not isinstance(spec, str):
        raise ModelLoadError(f"Metadata file {str(metadata_path)!r} has no string 'architecture' entry, such as 'mlp:64-128-10'.")

    _check_model_path(weights_path)
    module, _, _ = _load_file(weights_path, arch=spec, trust_pickle=False)
    digest = file_sha256(weights_path)
    return LoadedModel(_prepare_module(module, device), str(weights_path), digest, "bundled", spec, name)


def _prepare_module(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device)
    try:
        module.eval()
    except NotImplementedError:
        # Exported programs refuse eval(): their train/eval behaviour was fixed when exported.
        logger.debug("Module %s does not support eval(); keeping it as exported", type(module).__name__)
    return module


def _describe_unknown_bytes(source: Path, header: bytes) -> str:
    text = header.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        found = "an HTML or XML page, not a model (often a download link that returned a web page)"
        fix = "Download the raw file itself, for example with the site's 'raw' or 'download' link"
    elif text.startswith(b"version https://git-lfs"):
        found = "a Git LFS pointer, not the model itself"
        fix = "Run `git lfs pull` to fetch the real file"
    elif len(header) >= 10 and header[8:10] == b'{"':
        found = "a safetensors file, which carries weights but no network"
        fix = "Load it with safetensors.torch.load_file, save the dict with torch.save and pass --arch"
    elif header.startswith(b"\x93NUMPY"):
        found = "a NumPy .npy array, which is data, not a model"
        fix = "Pass data with --data and a model file saved with torch.save, torch.jit.save or torch.export.save"
    elif text.startswith((b"{", b"[")):
        found = "JSON text, not a model"
        fix = "Pass the .pt or .pt2 file the JSON describes"
    else:
        found = f"no known model format (first bytes {header[:8].hex(' ')})"
        fix = "Check that the file was saved by PyTorch and copied completely"
    return f"{str(source)!r} contains {found}. {fix}. {_FORMATS_HELP}."


def _first_line(error: BaseException) -> str:
    """Return the informative line of ``error``'s message, skipping torch.load's generic preamble."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."
