"""GGUF headers: magic, version, kv pairs and tensor infos, read with every length bounded.

Private to :mod:`mcard.formats.gguf`, which re-exports :func:`read`, :class:`GgufFile`
and :class:`GgufTensor`. The header is parsed from a memory map with every length
checked against the file size, so a corrupt count never allocates and a truncated
data section still yields a header (and findings). ``gguf.GGUFReader`` is not used:
it fails outright on a truncated data section.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from ...core.errors import UnusableInput
from ...core.variant import bad_magic
from .. import ggml_types as gt

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # the GGUF versions llama.cpp writes and mcard reads
_SCALAR = {  # value type -> struct format
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_MAX_DIMS = 4
_KEEP_ARRAY = 64  # arrays longer than this keep only their length (tokens, scores...)


@dataclass
class GgufTensor:
    name: str
    type: str  # "Q4_K"; "type 99" for an id neither gguf nor mcard knows
    shape: tuple[int, ...]  # gguf order: ne0 first, as in the file
    rows: int
    cols: int
    offset: int  # absolute file offset of the data
    nbytes: int  # for an unknown type: the bytes up to the next tensor (or the end of the file)
    type_id: int = -1

    @property
    def known(self) -> bool:
        """Whether the type id is one mcard can size (False: nbytes is only the room it occupies)."""
        return self.type in gt.TYPES


@dataclass
class GgufFile:
    path: Path
    version: int
    file_size: int
    alignment: int
    data_start: int
    kv: dict[str, Any]  # scalars, strings, short arrays; long arrays as ("array", length)
    tensors: list[GgufTensor] = field(default_factory=list)
    kv_bytes: int = 0  # the kv pairs' bytes, between the 24-byte fixed header and the tensor infos

    @property
    def bad_types(self) -> list[tuple[str, int]]:
        """(tensor, type id) of the tensors whose type id is unknown."""
        return [(t.name, t.type_id) for t in self.tensors if not t.known]

    def tensor(self, name: str) -> GgufTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise UnusableInput(f"no tensor {name!r} in this GGUF file", self.path)

    @property
    def file_type(self) -> str | None:
        ft = self.kv.get("general.file_type")
        return gt.FTYPE_BY_ID.get(ft) if isinstance(ft, int) else None

    @property
    def split(self) -> tuple[int, int, int] | None:
        """(split.no, split.count, split.tensors.count) of a gguf-split shard, or None."""
        keys = ("split.no", "split.count", "split.tensors.count")
        ints = [v for v in (self.kv.get(k) for k in keys) if isinstance(v, int) and not isinstance(v, bool)]
        return (ints[0], ints[1], ints[2]) if len(ints) == len(keys) else None


class _Cursor:
    """Bounded little-endian reads from a memory map; raises UnusableInput past the end."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise UnusableInput(f"GGUF header truncated in the {what} (offset {self.pos}, needs {n} bytes)", self.path)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        return self.take(n, what).decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            sub, count = self.unpack("<I", what), self.unpack("<Q", what)
            if sub in _SCALAR:  # fixed width: skip in one step, bounded by the file size
                width = struct.calcsize(_SCALAR[GGUFValueType(sub)])
                if count * width > self.size - self.pos:
                    raise UnusableInput(f"GGUF kv array {what} runs past the end of the file", self.path)
                if count <= _KEEP_ARRAY:
                    return [self.value(sub, what) for _ in range(count)]
                self.pos += count * width
                return ("array", count)
            if count > self.size - self.pos:
                raise UnusableInput(f"GGUF kv array {what} claims {count} items, more than the file holds", self.path)
            items = [self.value(sub, what) for _ in range(count)]
            return items if count <= _KEEP_ARRAY else ("array", count)
        if vtype not in _SCALAR:
            raise UnusableInput(f"GGUF kv {what} has unknown value type {vtype}", self.path)
        return self.unpack(_SCALAR[GGUFValueType(vtype)], what)


def read(path: str | Path, file_size: int | None = None) -> GgufFile:
    """Parse a GGUF header. Bad magic/version or a truncated kv/tensor table -> UnusableInput.

    ``file_size``: the size of the whole file when ``path`` holds only its first part
    (raw ``.gguf-split-a`` parts joined with ``cat``); the header must lie in that part.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise UnusableInput(f"not a GGUF file: only {size} bytes", path)
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        cur = _Cursor(mm, path)
        magic = cur.take(4, "magic")
        if magic != MAGIC:
            raise UnusableInput(bad_magic(magic, MAGIC, "GGUF"), path)
        version = cur.unpack("<I", "version")
        if version not in VERSIONS:
            raise UnusableInput(f"GGUF version {version} is not supported (only 2 and 3)", path)
        n_tensors, n_kv = cur.unpack("<Q", "tensor count"), cur.unpack("<Q", "kv count")
        # a kv pair takes >= 13 bytes (key length, type, 1-byte value); a tensor info >= 28.
        if n_kv * 13 > size or n_tensors * 28 > size:
            raise UnusableInput(f"GGUF header claims {n_tensors} tensors and {n_kv} kv pairs: implausible for a "
                                f"{size}-byte file", path)
        kv: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"kv #{i} key")
            kv[key] = cur.value(cur.unpack("<I", f"kv {key}"), key)
        kv_bytes = cur.pos - 24
        align = kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise UnusableInput(f"GGUF general.alignment {align!r} is not a power of two", path)
        raw = []
        for i in range(n_tensors):
            name = cur.string(f"tensor info #{i}")
            n_dims = cur.unpack("<I", f"tensor info {name}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise UnusableInput(f"GGUF tensor {name!r} has {n_dims} dimensions", path)
            dims = tuple(cur.unpack("<Q", f"tensor info {name}") for _ in range(n_dims))
            raw.append((name, dims, cur.unpack("<I", f"tensor info {name}"), cur.unpack("<Q", f"tensor info {name}")))
        data_start = -(-cur.pos // align) * align
    out = GgufFile(path, version, size if file_size is None else file_size, align, data_start, kv, kv_bytes=kv_bytes)
    for name, dims, tid, off in raw:
        n = int(np.prod(dims, dtype=np.float64)) if dims else 1
        rows = n // dims[0] if dims[0] else 0
        tname = gt.type_name(tid)
        nbytes = gt.tensor_bytes(tname, (n,)) if tname is not None else -1
        out.tensors.append(GgufTensor(name, tname or f"type {tid}", dims, rows, dims[0], data_start + off, nbytes, tid))
    _size_unknown(out)
    return out


def _size_unknown(g: GgufFile) -> None:
    """An unknown type's bytes: the room up to the next tensor's data, or to the end of the file."""
    starts = sorted({t.offset for t in g.tensors})
    for t in g.tensors:
        if t.nbytes < 0:
            later = [o for o in starts if o > t.offset]
            t.nbytes = max(0, (later[0] if later else g.file_size) - t.offset)
