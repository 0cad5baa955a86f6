"""Property-based tests of the model loader: arbitrary bytes end in a model or a ModelLoadError."""

from __future__ import annotations

import io
import pickletools
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robusteval.architectures import build_architecture
from robusteval.errors import ModelLoadError
from robusteval.loading import LoadedModel, load_model
from robusteval.loading._pickle_scan import scan_pickle_bytes

ARCH = "mlp:4-3-2"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_files() -> dict[str, bytes]:
    torch.manual_seed(0)
    network = build_architecture(ARCH)
    files = {}
    for name, kwargs in (("zip", {}), ("legacy", {"_use_new_zipfile_serialization": False})):
        buffer = io.BytesIO()
        torch.save(network.state_dict(), buffer, **kwargs)
        files[name] = buffer.getvalue()
    return files


VALID = _valid_files()


def load_bytes(data: bytes, **kwargs) -> LoadedModel | None:
    """Load ``data`` from a file; return the model, or None after a ModelLoadError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        path.write_bytes(data)
        try:
            return load_model(path, **kwargs)
        except ModelLoadError:
            return None


@SETTINGS
@given(st.binary(min_size=1, max_size=2048))
def test_arbitrary_bytes_never_crash(data):
    assert load_bytes(data, arch=ARCH) is None


@SETTINGS
@given(prefix=st.sampled_from([b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x04\x95", b"<html>"]), body=st.binary(max_size=1024))
def test_format_prefixes_never_crash(prefix, body):
    assert load_bytes(prefix + body, arch=ARCH) is None


@SETTINGS
@given(
    kind=st.sampled_from(sorted(VALID)),
    edits=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_mutated_state_dicts_never_crash(kind, edits, cut):
    data = bytearray(VALID[kind])
    for position, value in edits:
        data[int(position * len(data))] = value
    if cut is not None:
        data = data[: max(1, int(cut * len(data)))]

    loaded = load_bytes(bytes(data), arch=ARCH)

    if loaded is not None:
        assert isinstance(loaded.module, torch.nn.Module)
        assert loaded.format == "state_dict"


@SETTINGS
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
))
def test_torch_saved_python_values_rejected_cleanly(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    assert load_bytes(buffer.getvalue(), arch=ARCH) is None


@SETTINGS
@given(st.binary(max_size=512))
def test_pickle_scan_total(data):
    scan = scan_pickle_bytes(data)
    assert scan.pickle_count >= 0
    assert all(isinstance(name, str) for name in scan.globals)


def _short_string(text: str) -> bytes:
    encoded = text.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded + b"\x94"  # SHORT_BINUNICODE, MEMOIZE


def _calls(module: str, name: str, form: str) -> bytes:
    """Build, opcode by opcode, a pickle that would call ``module.name()`` when unpickled."""
    if form == "GLOBAL":
        return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    if form == "STACK_GLOBAL":
        return b"\x80\x04" + _short_string(module) + _short_string(name) + b"\x93)R."
    # The operands come back from the memo after being popped from the stack.
    return b"\x80\x04" + _short_string(module) + b"0" + _short_string(name) + b"0h\x00h\x01\x93)R."


@SETTINGS
@given(
    module=st.sampled_from(["os", "subprocess", "builtins", "pathlib"]),
    name=st.sampled_from(["system", "run", "eval", "Path.write_text"]),
    form=st.sampled_from(["GLOBAL", "STACK_GLOBAL", "MEMO"]),
)
def test_pickle_scan_finds_every_global(module, name, form):
    data = _calls(module, name, form)
    opcodes = [opcode.name for opcode, _, _ in pickletools.genops(data)]
    assert opcodes[-1] == "STOP"  # the hand-built pickle is well formed
    assert f"{module}.{name}" in scan_pickle_bytes(data).unsafe_globals
