"""The safetensors on-disk format: bounded header reading, tensor slices, writing.

Layout (safetensors' ``format.md``): an 8-byte little-endian unsigned header
length N, N bytes of UTF-8 JSON (``{name: {dtype, shape, data_offsets}}`` plus
an optional ``__metadata__`` map of strings), then the data buffer. Offsets are
relative to the start of the data buffer; the reference implementation requires
the tensors to tile the buffer exactly, in order, with no gaps or overlaps.

Reading a header never touches tensor data, and memory stays bounded by the
header size: a 70B checkpoint's header is a few hundred KB.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where tensor data is read or written: `mcard plan` and header checks never load it
    import numpy as np

from .errors import UnusableInput
from .jsonio import reject_duplicate_keys

# safetensors' own limit on the JSON header (MAX_HEADER_SIZE in the Rust crate).
MAX_HEADER_BYTES = 100_000_000

# Bytes per element of each safetensors dtype, and the numpy dtype that reads it.
DTYPE_BYTES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
NUMPY_DTYPE: dict[str, str] = {
    "BOOL": "?", "U8": "<u1", "I8": "<i1", "F8_E4M3": "<u1", "F8_E5M2": "<u1",
    "I16": "<i2", "U16": "<u2", "F16": "<f2", "BF16": "<u2",
    "I32": "<i4", "U32": "<u4", "F32": "<f4",
    "I64": "<i8", "U64": "<u8", "F64": "<f8",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data buffer
    end: int

    @property
    def nbytes_declared(self) -> int:
        return self.end - self.begin

    @property
    def nbytes_expected(self) -> int | None:
        per = DTYPE_BYTES.get(self.dtype)
        return None if per is None else per * prod(self.shape)


@dataclass
class SafetensorsHeader:
    path: Path
    file_size: int
    header_len: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    # Problems that do not stop reading (gaps, overlaps, bad sizes): (where, message).
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def expected_file_size(self) -> int:
        end = max((t.end for t in self.tensors.values()), default=0)
        return self.data_start + end


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and check a safetensors header. Raises :class:`UnusableInput` when unreadable."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            file_size = path.stat().st_size
            head = fh.read(8)
            if len(head) < 8:
                raise UnusableInput(f"file is {file_size} bytes, too short for a safetensors header", path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise UnusableInput(f"header length {n} exceeds the safetensors limit of {MAX_HEADER_BYTES} bytes", path)
            if 8 + n > file_size:
                raise UnusableInput(f"header length {n} runs past the end of the {file_size}-byte file", path)
            raw = fh.read(n)
    except OSError as exc:
        raise UnusableInput(f"cannot read: {exc.strerror or exc}", path) from None
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
    except UnicodeDecodeError:
        raise UnusableInput("safetensors header is not UTF-8", path) from None
    except ValueError as exc:
        raise UnusableInput(f"safetensors header is not valid JSON: {exc}", path) from None
    except RecursionError:
        raise UnusableInput("safetensors header is not valid JSON: nested too deeply", path) from None
    if not isinstance(doc, dict):
        raise UnusableInput("safetensors header is not a JSON object", path)

    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise UnusableInput("safetensors __metadata__ is not an object", path)
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        if not isinstance(entry, dict):
            raise UnusableInput(f"tensor {name!r} has a malformed header entry (not an object)", path)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise UnusableInput(f"tensor {name!r} has a malformed header entry (dtype {_short(dtype)})", path)
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise UnusableInput(f"tensor {name!r} has a malformed header entry (shape {_short(shape)})", path)
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(x) for x in offsets):
            raise UnusableInput(f"tensor {name!r} has a malformed header entry (data_offsets {_short(offsets)})", path)
        shape = tuple(shape)
        begin, end = offsets
        if any(d < 0 for d in shape):
            raise UnusableInput(f"tensor {name!r} has a negative dimension {_short(list(shape))}", path)
        if begin < 0 or end < 0 or max(begin, end, *shape, 0) > _MAX_OFFSET:
            raise UnusableInput(f"tensor {name!r} has an out-of-range shape or data_offsets", path)
        if _count(shape) > _MAX_OFFSET:
            raise UnusableInput(f"tensor {name!r} shape {_short(list(shape))} has more elements than any file can hold", path)
        tensors[name] = TensorInfo(name, dtype, shape, begin, end)

    header = SafetensorsHeader(path, file_size, n, tensors, {str(k): str(v) for k, v in metadata.items()})
    _check_layout(header)
    return header


# Offsets and element counts are u64/usize in the reference implementation; anything past
# 2**53 cannot be a real file and would only overflow downstream arithmetic.
_MAX_OFFSET = 2**53


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _count(shape: tuple[int, ...]) -> int:
    """prod(shape), stopping early once it is past any real file (a header may list many huge dims)."""
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n *= d
        if n > _MAX_OFFSET:
            return n
    return n


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_layout(h: SafetensorsHeader) -> None:
    """Record offsets out of range, overlaps, gaps and size mismatches as problems."""
    data_len = h.file_size - h.data_start
    cursor = 0
    for t in sorted(h.tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.dtype not in DTYPE_BYTES:
            h.problems.append((t.name, f"unknown dtype {t.dtype}"))
        if t.end < t.begin:
            h.problems.append((t.name, f"data_offsets [{t.begin}, {t.end}] end before they begin"))
            continue
        if t.end > data_len:
            h.problems.append((t.name, f"data_offsets [{t.begin}, {t.end}] run past the data buffer of {data_len} bytes "
                                       "(file truncated?)"))
        expected = t.nbytes_expected
        if expected is not None and expected != t.nbytes_declared:
            h.problems.append((t.name, f"{t.dtype}{list(t.shape)} needs {expected} bytes but its offsets span "
                                       f"{t.nbytes_declared}"))
        if t.begin < cursor:
            h.problems.append((t.name, f"data_offsets [{t.begin}, {t.end}] overlap the previous tensor (ends at {cursor})"))
        elif t.begin > cursor:
            h.problems.append((t.name, f"{t.begin - cursor} unused bytes before this tensor"))
        cursor = max(cursor, t.end)
    if cursor < data_len:
        h.problems.append(("", f"{data_len - cursor} trailing bytes after the last tensor"))


def read_tensor(header: SafetensorsHeader, name: str) -> np.ndarray:
    """Read one tensor's data (only its bytes) as a numpy array.

    BF16 is returned as float32; F8 types as raw uint8.
    """
    import numpy as np

    t = header.tensors[name]
    expected = t.nbytes_expected
    if expected is None or expected != t.nbytes_declared or t.end > header.file_size - header.data_start:
        raise UnusableInput(f"tensor {name} has unusable offsets", header.path)
    count = prod(t.shape)
    with header.path.open("rb") as fh:
        fh.seek(header.data_start + t.begin)
        arr = np.fromfile(fh, dtype=NUMPY_DTYPE[t.dtype], count=count)
    if arr.size != count:
        raise UnusableInput(f"tensor {name} is truncated", header.path)
    if t.dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.reshape(t.shape)


def write(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors with the reference ``safetensors`` library (the exact on-disk format)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


# The reference writer orders tensors by dtype (this enum order, descending),
# then by name; the header is compact JSON padded with spaces to 8 bytes.
_DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
                "I32", "U32", "F32", "F64", "I64", "U64"]


def predict_file_size(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None,
                      order: list[str] | None = None) -> int:
    """Exact size of the file the reference writer produces for ``(name, dtype, shape)`` entries.

    ``order``: the tensors' order in the data section when a writer does not use the
    reference one (the header's offsets, and so its length, depend on it); names not in
    it follow in the reference order.
    """
    ordered = sorted(entries, key=lambda e: (-_DTYPE_ORDER.index(e[1]), e[0]))
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        ordered.sort(key=lambda e: rank.get(e[0], len(rank)))
    doc: dict[str, Any] = {}
    if metadata:
        doc["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in ordered:
        n = DTYPE_BYTES[dtype] * prod(shape)
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header = len(json.dumps(doc, separators=(",", ":")).encode())
    header += -header % 8
    return 8 + header + offset
