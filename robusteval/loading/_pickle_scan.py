"""Static inspection of pickle streams: which globals unpickling would import, without unpickling.

``pickletools.genops`` only decodes opcodes; it never builds objects or imports modules, so it
is safe on untrusted bytes. ``GLOBAL``, ``STACK_GLOBAL`` and ``INST`` are the opcodes through
which a pickle imports a name; ``REDUCE``, ``OBJ`` and ``NEWOBJ`` then call what was imported.
The extension-registry opcodes ``EXT1``/``EXT2``/``EXT4`` also resolve names, so they are
recorded as globals too.
"""

from __future__ import annotations

import io
import pickletools
import re
import struct
from typing import Any, BinaryIO

# Globals that torch.save writes for tensors, parameters and state_dicts. A pickle that imports
# nothing else is an ordinary weights file, and torch.load's weights-only unpickler still has the
# final word on it.
_TENSOR_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch.Size",
    "torch.Tensor",
    "torch.device",
    "torch.storage.UntypedStorage",
    "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter",
    "_codecs.encode",
    # nn.Module pickles store their non-persistent buffer names in a set; protocol 2 spells the
    # builtins module "__builtin__".
    "builtins.set",
    "__builtin__.set",
})
_TENSOR_GLOBAL_PATTERNS = (
    re.compile(r"torch\._utils\._rebuild_\w+"),
    re.compile(r"torch\.(cuda\.)?\w+(Storage|Tensor)"),
    re.compile(r"torch\.(float|int|uint|bfloat|complex|bool|half|double|long|short|bits|qint|quint)\w*"),
)

# The first pickle of a legacy (non-zip) torch.save file contains only this magic number.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STRING_OPCODES = frozenset({
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
})
_INTEGER_OPCODES = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_GENOPS_ERRORS = (ValueError, KeyError, IndexError, EOFError, OverflowError, UnicodeDecodeError, struct.error)


class PickleScan:
    """Globals referenced by one or more consecutive pickles, and the first pickle's integer value."""

    def __init__(self) -> None:
        self.globals: list[str] = []
        self.pickle_count = 0
        self.first_integer: int | None = None
        self.error: str | None = None

    @property
    def unsafe_globals(self) -> list[str]:
        """Referenced globals outside the set torch.save uses for plain tensors."""
        return [name for name in self.globals if not is_tensor_global(name)]

    @property
    def is_legacy_torch_save(self) -> bool:
        """Whether the stream starts with the magic number of torch.save's legacy format."""
        return self.first_integer == TORCH_LEGACY_MAGIC


def is_tensor_global(name: str) -> bool:
    """Return whether ``name`` (``module.qualname``) is one torch.save writes for plain tensors."""
    return name in _TENSOR_GLOBALS or any(pattern.fullmatch(name) for pattern in _TENSOR_GLOBAL_PATTERNS)


def scan_pickles(stream: BinaryIO, size: int, max_pickles: int = 8) -> PickleScan:
    """Decode up to ``max_pickles`` consecutive pickles from ``stream`` and record their globals.

    Decoding stops after ``size`` bytes, after ``max_pickles`` pickles, or at the first bytes that
    are not a valid pickle; ``error`` then contains the decoder's message. A legacy torch.save
    file is five pickles followed by raw storage bytes, so all its globals are found before the
    decoder reaches bytes that are not a pickle.
    """
    scan = PickleScan()
    bounded = _BoundedReader(stream, size)
    while scan.pickle_count < max_pickles and bounded.tell() < size:
        try:
            integers = _scan_one(bounded, scan.globals)
        except _GENOPS_ERRORS as error:
            # genops raises these on malformed or truncated input; what was decoded so far stays.
            scan.error = str(error) or type(error).__name__
            break
        if scan.pickle_count == 0 and len(integers) == 1:
            scan.first_integer = integers[0]
        scan.pickle_count += 1
    return scan


def scan_pickle_bytes(data: bytes, max_pickles: int = 8) -> PickleScan:
    """Run :func:`scan_pickles` over ``data`` held in memory."""
    return scan_pickles(io.BytesIO(data), len(data), max_pickles)


def _scan_one(stream: _BoundedReader, found: list[str]) -> list[int]:
    # Strings pushed so far, and strings stored in the memo, resolve STACK_GLOBAL's two operands
    # well enough to name the global in a message.
    strings: list[str] = []
    memo: dict[int, str] = {}
    integers: list[int] = []
    argument: Any
    for opcode, argument, _ in pickletools.genops(stream):  # type: ignore[arg-type]  # a file-like reader
        name = opcode.name
        if name in _STRING_OPCODES:
            strings.append(argument if isinstance(argument, str) else repr(argument))
        elif name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT") and strings:
            memo[int(argument)] = strings[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET") and int(argument) in memo:
            strings.append(memo[int(argument)])
        elif name in ("GLOBAL", "INST"):
            module, _, qualname = str(argument).partition(" ")
            _record(found, f"{module}.{qualname}")
        elif name == "STACK_GLOBAL":
            module, qualname = strings[-2:] if len(strings) >= 2 else ("<unknown>", "<unknown>")
            _record(found, f"{module}.{qualname}")
        elif name in ("EXT1", "EXT2", "EXT4"):
            _record(found, f"<copyreg extension {argument}>")
        elif name in _INTEGER_OPCODES and isinstance(argument, int):
            integers.append(argument)
    return integers


class _BoundedReader:
    """File wrapper that never reads past ``size`` bytes.

    A pickle opcode such as ``BINBYTES8`` declares its length; genops passes that length to
    ``read``, and a buffered file allocates the full amount before reading. A few bytes declaring
    exabytes would raise MemoryError. Clamped reads return what is there, and genops then
    raises ValueError for the short read.
    """

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self._stream = stream
        self._size = size

    def read(self, count: int = -1) -> bytes:
        remaining = max(0, self._size - self._stream.tell())
        return self._stream.read(remaining if count < 0 else min(count, remaining))

    def readline(self) -> bytes:
        return self._stream.readline(max(0, self._size - self._stream.tell()))

    def tell(self) -> int:
        return self._stream.tell()


def _record(found: list[str], name: str) -> None:
    if name not in found:
        found.append(name)
