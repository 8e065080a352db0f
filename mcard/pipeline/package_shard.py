"""Split one safetensors file into shards plus ``model.safetensors.index.json``, as transformers does.

transformers' ``save_pretrained(max_shard_size=...)`` fills a shard with
tensors in order until the next one would pass the limit, puts a tensor larger
than the limit in a shard of its own, names the shards
``model-00001-of-00003.safetensors`` and writes an index whose
``metadata.total_size`` is the sum of the tensors' bytes and whose
``weight_map`` maps every tensor to its shard. Tensor bytes are copied
unchanged, a range at a time, never loaded whole.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..core.safetensors_io import SafetensorsHeader, TensorInfo

COPY_CHUNK = 8 << 20


def shard_name(stem: str, i: int, n: int) -> str:
    return f"{stem}-{i:05d}-of-{n:05d}.safetensors"


def plan_shards(header: SafetensorsHeader, max_shard_bytes: int) -> list[list[TensorInfo]]:
    """Tensors grouped into shards of at most ``max_shard_bytes`` of tensor data (one oversized tensor alone)."""
    shards: list[list[TensorInfo]] = [[]]
    size = 0
    for t in sorted(header.tensors.values(), key=lambda t: (t.begin, t.name)):
        n = t.nbytes_declared
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return [s for s in shards if s]


def _header_bytes(tensors: list[TensorInfo], metadata: dict[str, str]) -> bytes:
    doc: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        doc[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes_declared]}
        offset += t.nbytes_declared
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_shards(header: SafetensorsHeader, out_dir: Path, stem: str, max_shard_bytes: int,
                 on_file: Callable[[str, Path], None],
                 opener: Callable[[Path], BinaryIO] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Write the shards into ``out_dir``; returns (shard names, index document).

    ``on_file(name, path)`` is called once per shard written (for hashing); ``opener(path)`` opens a
    shard for writing (``mcard package`` passes its :class:`mcard.core.pathguard.Target`'s, which follows no symlink).
    """
    groups = plan_shards(header, max_shard_bytes)
    names = [shard_name(stem, i + 1, len(groups)) for i in range(len(groups))]
    weight_map: dict[str, str] = {}
    metadata = {"format": "pt", **header.metadata}
    with header.path.open("rb") as src:
        for name, tensors in zip(names, groups, strict=True):
            path = out_dir / name
            with (opener(path) if opener is not None else path.open("wb")) as dst:
                dst.write(_header_bytes(tensors, metadata))
                for t in tensors:
                    src.seek(header.data_start + t.begin)
                    left = t.nbytes_declared
                    while left:
                        chunk = src.read(min(COPY_CHUNK, left))
                        if not chunk:
                            raise OSError(f"{header.path} ended inside tensor {t.name}")
                        dst.write(chunk)
                        left -= len(chunk)
                    weight_map[t.name] = name
            on_file(name, path)
    total = sum(t.nbytes_declared for t in header.tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    return names, index
