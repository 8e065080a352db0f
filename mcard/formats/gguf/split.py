"""Split GGUF models: gguf-split shard sets and raw ``-split-a`` byte parts, for readers and writers.

One place for the layout facts (llama.cpp ``tools/gguf-split/gguf-split.cpp`` and
``llama_split_path`` in ``src/llama.cpp``), used by validate and size
(:mod:`.gguf`), the Hub side (one variant per shard set) and any writer that
must split a file the way llama.cpp does (the Hub refuses files over 50 GB):

* Shards are named ``<prefix>-%05d-of-%05d.gguf`` (1-based), each a complete GGUF
  file. Every shard carries ``split.no`` (uint16, 0-based), ``split.count``
  (uint16) and ``split.tensors.count`` (int32, the tensors of the whole model);
  only the first shard carries the model's other kv pairs. llama.cpp adds the
  three keys after the copied ones and sets ``split.count`` last (so it ends up
  last: setting a key removes it and appends it again).
* ``--split-max-size N[M|G]`` (decimal megabytes or gigabytes) counts tensor data
  only, each tensor padded to the alignment (32): a new shard starts when adding
  the next tensor would pass N. ``--split-max-tensors N`` (default 128) starts one
  every N tensors. Tensors keep the source file's order.
* Older repos published raw byte parts instead: ``<name>.gguf-split-a``,
  ``-split-b``... to be joined with ``cat`` into ``<name>.gguf``; only the first
  part starts with the GGUF header.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from ...core.errors import UnusableInput

KV_SPLIT_NO = "split.no"
KV_SPLIT_COUNT = "split.count"
KV_SPLIT_TENSORS_COUNT = "split.tensors.count"
SPLIT_KEYS = (KV_SPLIT_NO, KV_SPLIT_TENSORS_COUNT, KV_SPLIT_COUNT)  # their order in a written shard
DEFAULT_MAX_TENSORS = 128
ALIGNMENT = GGUF_DEFAULT_ALIGNMENT  # 32: gguf-split pads each tensor to it

_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_RAW_PART = re.compile(r"^(?P<joined>.+\.gguf)-split-(?P<letter>[a-z]{1,2})$")
# the split keys' value types: split.no and split.count uint16, split.tensors.count int32
_SPLIT_TYPES = {KV_SPLIT_NO: (GGUFValueType.UINT16, "<H"), KV_SPLIT_COUNT: (GGUFValueType.UINT16, "<H"),
                KV_SPLIT_TENSORS_COUNT: (GGUFValueType.INT32, "<i")}
# a kv pair: key length (uint64), key, value type (uint32), value
_SPLIT_KV_BYTES = sum(8 + len(k) + 4 + struct.calcsize(_SPLIT_TYPES[k][1]) for k in SPLIT_KEYS)


def shard_name(prefix: str, index: int, count: int) -> str:
    """File name of shard ``index`` (0-based) of ``count``: ``llama_split_path``."""
    return f"{prefix}-{index + 1:05d}-of-{count:05d}.gguf"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    """(prefix, index 0-based, count) of a shard file name (any folder), or None."""
    m = _SHARD.match(PurePosixPath(name).name)
    if not m or int(m["count"]) < 1 or not 1 <= int(m["no"]) <= int(m["count"]):
        return None
    prefix = str(PurePosixPath(name).parent / m["prefix"]) if "/" in name else m["prefix"]
    return prefix, int(m["no"]) - 1, int(m["count"])


def parse_raw_part(name: str) -> tuple[str, int] | None:
    """(joined file name, index 0-based) of a raw ``.gguf-split-a`` part, or None."""
    m = _RAW_PART.match(name)
    if not m:
        return None
    index = 0
    for ch in m["letter"]:
        index = index * 26 + (ord(ch) - ord("a"))
    return m["joined"], index


def is_split_name(name: str) -> bool:
    return parse_shard_name(name) is not None or parse_raw_part(name) is not None


@dataclass
class GgufModel:
    """One GGUF model in a folder: a single file, a gguf-split shard set, or raw byte parts."""

    name: str  # the single file, ``<prefix>-*-of-0000N.gguf``, or the joined ``<name>.gguf``
    kind: str  # "file" | "shards" | "parts"
    files: list[str]  # present files in order
    count: int  # how many files the set should have (shards: from the names)
    missing: list[str] = field(default_factory=list)  # expected file names not present


def group(files: list[str]) -> list[GgufModel]:
    """Group file names into models: shard sets by prefix and count, raw parts by joined name.

    ``files`` are the GGUF files (by magic) plus any raw ``-split-b``... parts, in any order.
    """
    shards: dict[tuple[str, int], dict[int, str]] = {}
    parts: dict[str, dict[int, str]] = {}
    singles = []
    for rel in files:
        s = parse_shard_name(rel)
        p = parse_raw_part(rel)
        if s is not None:
            shards.setdefault((s[0], s[2]), {})[s[1]] = rel
        elif p is not None:
            parts.setdefault(p[0], {})[p[1]] = rel
        else:
            singles.append(rel)
    out = [GgufModel(rel, "file", [rel], 1) for rel in singles]
    for (prefix, count), found in shards.items():
        names = [shard_name(prefix, i, count) for i in range(count)]
        out.append(GgufModel(f"{prefix}-*-of-{count:05d}.gguf", "shards", [found[i] for i in sorted(found)], count,
                             [n for i, n in enumerate(names) if i not in found]))
    for joined, found in parts.items():
        top = max(found) + 1
        letters = [_letters(i) for i in range(top)]
        out.append(GgufModel(joined, "parts", [found[i] for i in sorted(found)], top,
                             [f"{joined}-split-{ch}" for i, ch in enumerate(letters) if i not in found]))
    return sorted(out, key=lambda m: m.name)


def variants(files: list[tuple[str, int]]) -> list[dict]:
    """GGUF variants of a file listing [(path, size)]: a shard set or raw parts count once, with their total size.

    Each: ``name``, ``kind`` (file, shards, parts), ``files``, ``size``, ``missing`` (names absent).
    """
    sizes = dict(files)
    names = [p for p in sizes if p.endswith(".gguf") or parse_raw_part(p) is not None]
    return [{"name": m.name, "kind": m.kind, "files": m.files, "size": sum(sizes[f] for f in m.files),
             "missing": m.missing} for m in group(names)]


def expand(name: str, available: list[str]) -> list[str]:
    """Every file of the shard set or raw parts ``name`` belongs to, among ``available`` (else just ``name``)."""
    if not is_split_name(name):
        return [name]
    mine = group([name])[0].name
    pool = [p for p in available if is_split_name(p)] + ([name] if name not in available else [])
    return next((m.files for m in group(pool) if m.name == mine), [name])


def _letters(index: int) -> str:
    return chr(ord("a") + index) if index < 26 else chr(ord("a") + index // 26 - 1) + chr(ord("a") + index % 26)


def display_name(name: str) -> str:
    """How a card names a variant given by one of its files: a shard set or raw parts as the whole set."""
    shard = parse_shard_name(name)
    if shard is not None:
        return f"{shard[0]}-*-of-{shard[2]:05d}.gguf" if shard[2] > 1 else name
    part = parse_raw_part(name)
    return f"{part[0]}-split-*" if part is not None else name


MAX_SIZE_EXPECTED = "a positive number followed by M or G (e.g. 50G)"
_MAX_SIZE = re.compile(r"\s*(\d+)\s*([MG])\s*")


def valid_max_size(text: object) -> bool:
    """Whether ``text`` is a ``--split-max-size`` gguf-split reads (see :func:`parse_max_size`)."""
    m = _MAX_SIZE.fullmatch(str(text))
    return m is not None and int(m[1]) > 0


def parse_max_size(text: str) -> int:
    """``--split-max-size``: ``N`` followed by ``M`` (10^6 bytes) or ``G`` (10^9), as gguf-split reads it."""
    m = _MAX_SIZE.fullmatch(str(text))
    if m is None or not valid_max_size(text):
        raise UnusableInput(f"split size {text!r}: give {MAX_SIZE_EXPECTED}")
    return int(m[1]) * (1000**2 if m[2] == "M" else 1000**3)


def _pad(n: int, align: int = ALIGNMENT) -> int:
    return -(-n // align) * align


def plan(tensor_bytes: list[int], max_bytes: int | None = None, max_tensors: int | None = None) -> list[list[int]]:
    """Tensor indices per shard, as gguf-split assigns them (by size, or every ``max_tensors``)."""
    if (max_bytes is None) == (max_tensors is None):
        raise ValueError("give exactly one of max_bytes and max_tensors")
    shards: list[list[int]] = [[]]
    current = 0
    n = len(tensor_bytes)
    for i, nbytes in enumerate(tensor_bytes):
        padded = _pad(nbytes)
        if max_bytes is not None:
            split = current + padded > max_bytes
        else:
            assert max_tensors is not None  # exactly one of the two, checked above
            split = 0 < i < n and i % max_tensors == 0
        if split:
            if not shards[-1]:
                raise UnusableInput(f"a tensor of {nbytes} bytes is larger than the split size {max_bytes}")
            shards.append([])
            current = padded
        else:
            current += padded
        shards[-1].append(i)
    return shards


def tensor_info_bytes(name: str, n_dims: int) -> int:
    """Bytes of one tensor-info entry: name length, name, n_dims, dims, type, offset."""
    return 8 + len(name.encode()) + 4 + 8 * n_dims + 4 + 8


def shard_sizes(kv_bytes: int, tensors: list[tuple[str, int, int]], max_bytes: int | None = None,
                max_tensors: int | None = None, alignment: int = ALIGNMENT) -> list[int]:
    """Exact file sizes of the shards gguf-split writes.

    ``kv_bytes``: the unsplit file's kv pairs (without its 24-byte fixed header);
    ``tensors``: (name, n_dims, data bytes) in file order.
    """
    assignment = plan([nb for _n, _d, nb in tensors], max_bytes, max_tensors)
    sizes = []
    for i, idx in enumerate(assignment):
        meta = 24 + (kv_bytes if i == 0 else 0) + _SPLIT_KV_BYTES
        meta += sum(tensor_info_bytes(tensors[j][0], tensors[j][1]) for j in idx)
        sizes.append(_pad(meta, alignment) + sum(_pad(tensors[j][2], alignment) for j in idx))
    return sizes


def split_kv(index: int, count: int, n_tensors: int) -> bytes:
    """The three split kv pairs as gguf-split appends them to a shard's header."""
    values = {KV_SPLIT_NO: index, KV_SPLIT_COUNT: count, KV_SPLIT_TENSORS_COUNT: n_tensors}
    out = b""
    for key in SPLIT_KEYS:
        vtype, fmt = _SPLIT_TYPES[key]
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", int(vtype)) + struct.pack(fmt, values[key])
    return out


def write_shards(src: str | Path, out_prefix: str | Path, max_bytes: int | None = None,
                 max_tensors: int | None = None) -> list[Path]:
    """Split the GGUF file ``src`` into ``<out_prefix>-0000i-of-0000N.gguf`` exactly as ``gguf-split --split`` does.

    The first shard keeps every kv pair (copied byte for byte) and all shards get the
    split keys; tensors keep the source's order, data padded to the alignment with zeros.
    A writer that must keep files under the Hub's 50 GB (:data:`mcard.hub.rules.MAX_FILE_BYTES`) passes
    less than that as ``max_bytes``: the limit counts tensor data only, the header comes on top.
    """
    from .header import MAGIC, VERSIONS, read

    src, out_prefix = Path(src), Path(out_prefix)
    g = read(src)
    if g.split is not None:
        raise UnusableInput("already a shard of a split model", src)
    with src.open("rb") as fh:
        head = fh.read(24 + g.kv_bytes)
    n_kv = struct.unpack_from("<Q", head, 16)[0]
    kv = head[24:24 + g.kv_bytes]
    assignment = plan([t.nbytes for t in g.tensors], max_bytes, max_tensors)
    count = len(assignment)
    paths = []
    with src.open("rb") as fin:
        for i, idx in enumerate(assignment):
            infos, offset = b"", 0
            for j in idx:
                t = g.tensors[j]
                name = t.name.encode()
                infos += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t.shape))
                infos += struct.pack(f"<{len(t.shape)}Q", *t.shape) + struct.pack("<IQ", t.type_id, offset)
                offset += _pad(t.nbytes, g.alignment)
            shard_kv = (kv if i == 0 else b"") + split_kv(i, count, len(g.tensors))
            meta = MAGIC + struct.pack("<IQQ", VERSIONS[-1], len(idx), (n_kv if i == 0 else 0) + len(SPLIT_KEYS))
            meta += shard_kv + infos
            meta += bytes(_pad(len(meta), g.alignment) - len(meta))
            path = out_prefix.parent / shard_name(out_prefix.name, i, count)
            with path.open("wb") as fout:
                fout.write(meta)
                for j in idx:
                    t = g.tensors[j]
                    fin.seek(t.offset)
                    left = t.nbytes
                    while left:
                        chunk = fin.read(min(left, 64 << 20))
                        if not chunk:
                            raise UnusableInput(f"tensor {t.name} runs past the end of the file", src)
                        fout.write(chunk)
                        left -= len(chunk)
                    fout.write(bytes(_pad(t.nbytes, g.alignment) - t.nbytes))
            paths.append(path)
    return paths
