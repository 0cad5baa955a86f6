"""Tests of robusteval.loading: every supported format, every refusal, and no code execution."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pathlib
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import robusteval.loading as loading
from robusteval.architectures import build_architecture
from robusteval.errors import ModelLoadError, UnsafePickleError
from robusteval.loading import LoadedModel, bundled_model_path, load_model

ARCH = "mlp:6-5-3"
jit_deprecation = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def make_network(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_architecture(ARCH).eval()


def probe() -> torch.Tensor:
    return torch.linspace(0.0, 1.0, 24).reshape(4, 6)


def assert_same_outputs(loaded: LoadedModel, reference: nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(probe()), reference(probe()), rtol=0.0, atol=0.0)


class FileWriter:
    """A pickle payload whose unpickling writes a file: the marker of code execution."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.target), "code ran"))


# --- supported formats ---------------------------------------------------------------------

def test_state_dict_with_arch(tmp_path):
    network = make_network()
    path = tmp_path / "weights.bin"  # the extension is irrelevant
    torch.save(network.state_dict(), path)

    loaded = load_model(path, arch=ARCH)

    assert loaded.format == "state_dict"
    assert loaded.architecture == ARCH
    assert loaded.name == "weights.bin"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.module.training
    assert_same_outputs(loaded, network)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_checkpoint_dict_keys(tmp_path, key):
    network = make_network(1)
    path = tmp_path / "checkpoint.pt"
    torch.save({key: network.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}, path)

    loaded = load_model(path, arch=ARCH)

    assert loaded.format == "checkpoint"
    assert_same_outputs(loaded, network)


def test_dataparallel_prefix_stripped(tmp_path):
    network = make_network(2)
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{key}": value for key, value in network.state_dict().items()}, path)

    loaded = load_model(path, arch=ARCH)

    assert_same_outputs(loaded, network)


def test_legacy_torch_save_format(tmp_path):
    network = make_network(3)
    path = tmp_path / "legacy.pt"
    torch.save(network.state_dict(), path, _use_new_zipfile_serialization=False)

    loaded = load_model(path, arch=ARCH)

    assert loaded.format == "state_dict"
    assert_same_outputs(loaded, network)


@jit_deprecation
def test_torchscript_archive(tmp_path):
    network = make_network(4)
    path = tmp_path / "scripted.model"
    torch.jit.save(torch.jit.script(network), str(path))

    loaded = load_model(path)

    assert loaded.format == "torchscript"
    assert loaded.architecture is None
    assert not loaded.module.training
    assert_same_outputs(loaded, network)


def test_export_archive(tmp_path):
    network = make_network(5)
    path = tmp_path / "exported.pt2"
    program = torch.export.export(network, (probe(),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)

    loaded = load_model(path)

    assert loaded.format == "export"
    assert_same_outputs(loaded, network)


def test_pickled_module_needs_trust(tmp_path):
    network = make_network(6)
    path = tmp_path / "whole.pt"
    torch.save(network, path)

    with pytest.raises(UnsafePickleError) as raised:
        load_model(path)
    message = str(raised.value)
    assert "--trust-pickle" in message
    assert "arbitrary code" in message
    assert "torch.nn.modules.linear.Linear" in message

    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "pickle"
    assert_same_outputs(loaded, network)


def test_plain_pickle_needs_trust(tmp_path):
    network = make_network(7)
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(network))

    with pytest.raises(UnsafePickleError, match="plain Python pickle"):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    assert_same_outputs(loaded, network)


# --- bundled models -------------------------------------------------------------------------

def test_bundled_model_from_patched_folder(tmp_path, monkeypatch):
    network = make_network(8)
    torch.save(network.state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny.json").write_text(json.dumps({"architecture": ARCH}))
    monkeypatch.setattr(loading, "MODELS_DIR", tmp_path)

    loaded = load_model("zoo:tiny")

    assert bundled_model_path("tiny") == tmp_path / "tiny.pt"
    assert loaded.format == "bundled"
    assert loaded.name == "tiny"
    assert loaded.architecture == ARCH
    assert loaded.sha256 == hashlib.sha256((tmp_path / "tiny.pt").read_bytes()).hexdigest()
    assert_same_outputs(loaded, network)


def test_bundled_model_missing_lists_available(tmp_path, monkeypatch):
    torch.save(make_network().state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny.json").write_text(json.dumps({"architecture": ARCH}))
    monkeypatch.setattr(loading, "MODELS_DIR", tmp_path)

    with pytest.raises(ModelLoadError, match=r"No bundled model named 'other'.*Available: tiny"):
        load_model("zoo:other")


def test_bundled_metadata_without_architecture(tmp_path, monkeypatch):
    torch.save(make_network().state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny"}))
    monkeypatch.setattr(loading, "MODELS_DIR", tmp_path)

    with pytest.raises(ModelLoadError, match="'architecture'"):
        load_model("zoo:tiny")


@pytest.mark.parametrize("name", ["../demo", "a/b", "", ".hidden"])
def test_bundled_name_rejects_paths(name):
    with pytest.raises(ValueError, match="bundled model name"):
        bundled_model_path(name)


def test_bundled_demo_loads_when_present():
    if not bundled_model_path("demo").exists():
        pytest.skip("the bundled demo model is not built in this checkout")
    loaded = load_model("zoo:demo")
    metadata = json.loads(bundled_model_path("demo").with_suffix(".json").read_text())
    assert loaded.architecture == metadata["architecture"]
    assert loaded.sha256 == hashlib.sha256(bundled_model_path("demo").read_bytes()).hexdigest()


# --- state_dict mistakes ---------------------------------------------------------------------

def test_state_dict_without_arch_names_option(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(make_network().state_dict(), path)

    with pytest.raises(ModelLoadError) as raised:
        load_model(path)
    message = str(raised.value)
    assert "--arch" in message
    assert f"--arch {ARCH}" in message  # the example is inferred from the weight shapes
    assert "state_dict" in message


def test_state_dict_shape_mismatch_lists_differences(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(make_network().state_dict(), path)

    with pytest.raises(ModelLoadError) as raised:
        load_model(path, arch="mlp:6-7-3")
    message = str(raised.value)
    assert "'1.weight' is (5, 6) in the file but (7, 6) in the architecture" in message
    assert f"fit --arch {ARCH}" in message


def test_state_dict_key_mismatch_lists_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"encoder.weight": torch.zeros(5, 6), "encoder.bias": torch.zeros(5)}, path)

    with pytest.raises(ModelLoadError) as raised:
        load_model(path, arch=ARCH)
    message = str(raised.value)
    assert "missing keys: '1.weight', '1.bias', '3.weight', '3.bias'" in message
    assert "unexpected keys: 'encoder.weight', 'encoder.bias'" in message


def test_checkpoint_without_weights_lists_keys(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "losses": [0.5, 0.25]}, path)

    with pytest.raises(ModelLoadError, match=r"a dict with keys \['epoch', 'losses'\]"):
        load_model(path, arch=ARCH)


def test_single_tensor_file(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3, 4), path)

    with pytest.raises(ModelLoadError, match=r"a single tensor of shape \(3, 4\)"):
        load_model(path, arch=ARCH)


def test_invalid_arch_spec(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(make_network().state_dict(), path)

    with pytest.raises(ValueError, match="architecture spec"):
        load_model(path, arch="resnet")


# --- files that are not models ---------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="Model file not found"):
        load_model(tmp_path / "absent.pt")


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"is empty \(0 bytes\)"):
        load_model(path)


def test_html_page_saved_as_model(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("\n<!DOCTYPE html>\n<html><body>Sign in to download</body></html>")
    with pytest.raises(ModelLoadError) as raised:
        load_model(path)
    message = str(raised.value)
    assert "HTML" in message
    assert "raw" in message


def test_git_lfs_pointer(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(ModelLoadError, match="git lfs pull"):
        load_model(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(range(7, 207)))
    with pytest.raises(ModelLoadError, match="no known model format"):
        load_model(path)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_zip(tmp_path, keep):
    whole = tmp_path / "whole.pt"
    torch.save(make_network().state_dict(), whole)
    data = whole.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])

    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(path, arch=ARCH)


def test_foreign_zip(tmp_path):
    path = tmp_path / "photos.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("holiday/readme.txt", "not a model")
    with pytest.raises(ModelLoadError, match="not one written by PyTorch"):
        load_model(path)


def test_npz_passed_as_model(tmp_path):
    import numpy as np

    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int64))
    with pytest.raises(ModelLoadError, match="--data"):
        load_model(path)


def test_truncated_pickle(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": list(range(100))})[:40])
    with pytest.raises(ModelLoadError, match="not a valid one"):
        load_model(path)


def test_invalid_device():
    with pytest.raises(ValueError, match="torch device"):
        load_model("zoo:demo", device="gpu-please")


# --- no code execution from untrusted files --------------------------------------------------

def test_planted_pickle_never_runs(tmp_path):
    marker = tmp_path / "marker.txt"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(FileWriter(marker)))
    torch_saved = tmp_path / "torch_saved.pt"
    torch.save({"state_dict": make_network().state_dict(), "hook": FileWriter(marker)}, torch_saved)
    legacy = tmp_path / "legacy.pt"
    torch.save(FileWriter(marker), legacy, _use_new_zipfile_serialization=False)

    for path in (raw, torch_saved, legacy):
        with pytest.raises(UnsafePickleError) as raised:
            load_model(path, arch=ARCH)
        assert "pathlib.Path" in str(raised.value)
        assert not marker.exists(), f"unpickling {path.name} ran code"


def test_planted_pickle_in_export_archive_never_runs(tmp_path):
    # torch.export.load falls back to full unpickling for sample inputs that the weights-only
    # unpickler rejects, so a planted payload there would run without robusteval's check.
    marker = tmp_path / "marker.txt"
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(make_network(), (probe(),)), clean)
    payload = io.BytesIO()
    torch.save((FileWriter(marker),), payload)

    planted = tmp_path / "planted.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(planted, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data/sample_inputs/model.pt"):
                data = payload.getvalue()
            target.writestr(item, data)

    with pytest.raises(UnsafePickleError) as raised:
        load_model(planted)
    assert "data/sample_inputs/model.pt" in str(raised.value)
    assert not marker.exists()


def test_export_archive_with_compiled_code_refused(tmp_path):
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(make_network(), (probe(),)), clean)
    planted = tmp_path / "compiled.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(planted, "w") as target:
        root = source.namelist()[0].split("/")[0]
        for item in source.infolist():
            target.writestr(item, source.read(item))
        target.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")

    with pytest.raises(UnsafePickleError, match="compiled code"):
        load_model(planted)


def test_export_archive_with_bad_checksum(tmp_path):
    # Found by fuzz_loader.py: a flipped bit in a JSON member made zipfile raise BadZipFile.
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(make_network(), (probe(),)), clean)
    data = bytearray(clean.read_bytes())
    start = data.index(b'{"config"')
    data[start + 2] ^= 0x01
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(bytes(data))

    with pytest.raises(ModelLoadError, match="Bad CRC-32"):
        load_model(damaged)


def test_pickle_declaring_huge_length(tmp_path):
    # Found by fuzz_loader.py: a BINBYTES8 opcode declaring 2**62 bytes made the opcode scanner
    # ask the file for that many bytes, which raised MemoryError.
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    path = tmp_path / "huge.pt"
    path.write_bytes(magic + b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc.")

    with pytest.raises(ModelLoadError):
        load_model(path, arch=ARCH)


def test_zip_flagged_as_encrypted(tmp_path):
    # Found by fuzz_loader.py: zipfile raises RuntimeError for members whose encryption bit is set.
    whole = tmp_path / "whole.pt"
    torch.save(make_network().state_dict(), whole)
    data = bytearray(whole.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start != -1:
            data[start + flag_offset] |= 0x01
            start = data.find(signature, start + 4)
    encrypted = tmp_path / "encrypted.pt"
    encrypted.write_bytes(bytes(data))

    with pytest.raises(ModelLoadError, match="encrypted"):
        load_model(encrypted, arch=ARCH)


# --- state_dicts whose keys differ only by layers without parameters ----------------------------

PLAIN_ARCH = "mlp:64-32-10"
POSITION_LOG = "by position"


def make_plain_sequential(seed: int = 0) -> nn.Module:
    """The network a new user writes: no Flatten, so its Linear layers sit at indices 0 and 2."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def plain_probe() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.rand(5, 64)


def position_records(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if POSITION_LOG in record.getMessage()]


def test_plain_sequential_loads_by_position(tmp_path, caplog):
    network = make_plain_sequential()
    path = tmp_path / "mlp_sd.pt"
    torch.save(network.state_dict(), path)
    assert list(network.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]

    with caplog.at_level(logging.INFO, logger="robusteval.loading"):
        loaded = load_model(path, arch=PLAIN_ARCH)

    assert loaded.format == "state_dict"
    assert loaded.architecture == PLAIN_ARCH
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(plain_probe()), network(plain_probe()), rtol=0.0, atol=0.0)
    records = position_records(caplog)
    assert len(records) == 1
    assert "'0.weight'" in records[0]
    assert "'1.weight'" in records[0]


def test_plain_sequential_dataparallel_prefix(tmp_path, caplog):
    network = make_plain_sequential(1)
    path = tmp_path / "ddp_plain.pt"
    torch.save({f"module.{key}": value for key, value in network.state_dict().items()}, path)

    with caplog.at_level(logging.INFO, logger="robusteval.loading"):
        loaded = load_model(path, arch=PLAIN_ARCH)

    with torch.no_grad():
        torch.testing.assert_close(loaded.module(plain_probe()), network(plain_probe()), rtol=0.0, atol=0.0)
    assert len(position_records(caplog)) == 1


def test_single_linear_loads_by_position(tmp_path):
    torch.manual_seed(2)
    network = nn.Linear(64, 10).eval()
    path = tmp_path / "linear.pt"
    torch.save(network.state_dict(), path)

    loaded = load_model(path, arch="mlp:64-10")

    with torch.no_grad():
        torch.testing.assert_close(loaded.module(plain_probe()), network(plain_probe()), rtol=0.0, atol=0.0)


def test_matching_names_skip_position_log(tmp_path, caplog):
    network = make_network()
    path = tmp_path / "weights.pt"
    torch.save(network.state_dict(), path)

    with caplog.at_level(logging.INFO, logger="robusteval.loading"):
        load_model(path, arch=ARCH)

    assert position_records(caplog) == []


def test_plain_sequential_wrong_widths_fails(tmp_path):
    path = tmp_path / "mlp_sd.pt"
    torch.save(make_plain_sequential().state_dict(), path)

    with pytest.raises(ModelLoadError) as raised:
        load_model(path, arch="mlp:64-16-10")
    message = str(raised.value)
    assert "does not fit architecture 'mlp:64-16-10'" in message
    assert "missing keys: '1.weight', '1.bias', '3.weight', '3.bias'" in message
    assert f"fit --arch {PLAIN_ARCH}" in message
    assert "Pass the --arch the model was trained with" in message


def test_same_shapes_other_suffixes_fail(tmp_path):
    # Shapes agree in order with mlp:64-32-10, but the names are not weight/bias pairs.
    weights = {
        "0.weight": torch.zeros(32, 64),
        "0.scale": torch.zeros(32),
        "2.weight": torch.zeros(10, 32),
        "2.bias": torch.zeros(10),
    }
    path = tmp_path / "renamed.pt"
    torch.save(weights, path)

    with pytest.raises(ModelLoadError, match="does not fit architecture 'mlp:64-32-10'"):
        load_model(path, arch=PLAIN_ARCH)


def test_extra_tensor_fails_position_match(tmp_path):
    weights = dict(make_plain_sequential().state_dict())
    weights["2.running_mean"] = torch.zeros(10)
    path = tmp_path / "extra.pt"
    torch.save(weights, path)

    with pytest.raises(ModelLoadError, match="unexpected keys: '0.weight'"):
        load_model(path, arch=PLAIN_ARCH)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param(lambda: make_plain_sequential().state_dict(), "mlp:64-32-10", id="plain-sequential"),
        pytest.param(
            lambda: {f"module.{key}": value for key, value in make_plain_sequential().state_dict().items()},
            "mlp:64-32-10",
            id="dataparallel",
        ),
        pytest.param(
            lambda: nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 7)).state_dict(),
            "mlp:64-48-24-7",
            id="three-layers",
        ),
        pytest.param(lambda: nn.Linear(20, 4).state_dict(), "mlp:20-4", id="single-linear"),
    ],
)
def test_suggested_arch_from_chain(tmp_path, weights, expected):
    path = tmp_path / "weights.pt"
    torch.save(weights(), path)

    with pytest.raises(ModelLoadError) as raised:
        load_model(path)
    message = str(raised.value)
    assert f"--arch {expected} " in message
    assert f"arch={expected!r}" in message

    # The suggestion must load the same file.
    assert load_model(path, arch=expected).architecture == expected


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param(lambda: {"0.weight": torch.zeros(32, 64), "2.weight": torch.zeros(10, 16)}, id="broken-chain"),
        pytest.param(lambda: nn.Conv2d(1, 4, 3).state_dict(), id="convolution"),
        pytest.param(lambda: {"0.weight": torch.zeros(32, 64), "0.scale": torch.zeros(32)}, id="unknown-suffix"),
    ],
)
def test_suggested_arch_generic_without_chain(tmp_path, weights):
    path = tmp_path / "weights.pt"
    torch.save(weights(), path)

    with pytest.raises(ModelLoadError) as raised:
        load_model(path)

    assert "--arch mlp:64-128-10 " in str(raised.value)
