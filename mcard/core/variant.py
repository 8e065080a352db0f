"""A variant on disk: its files, configs and safetensors headers, read lazily once.

Every format module inspects a :class:`Variant`; nothing here knows about a
particular quantization format beyond recognising file kinds by their magic.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import UnusableInput
from .jsonio import load_json_object
from .safetensors_io import SafetensorsHeader, TensorInfo, read_header

ZIP_MAGIC = b"PK\x03\x04"  # a torch.save zip archive (holds a pickle)
# The file names pickle checkpoints go by (torch.save, raw pickles); a .bin may also be a legacy GGML file.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_RAW_GGUF_PART = re.compile(r".+\.gguf-split-[a-z]{1,2}$")
_SKIP_DIRS = {".git", ".cache", "__pycache__"}

CONFIG_NAMES = (
    "config.json",
    "quantize_config.json",
    "quant_config.json",
    "adapter_config.json",
    "tokenizer_config.json",
    "generation_config.json",
)




@functools.cache
def _magics() -> tuple[tuple[bytes, str], ...]:
    """Magic bytes at the start of a file -> kind, as the formats state them (GGML's legacy magics
    are uint32 little-endian 'ggml' / 'ggmf' / 'ggjt', so they read reversed on disk)."""
    from ..formats.ggml import MAGICS as GGML_MAGICS
    from ..formats.gguf.header import MAGIC as GGUF_MAGIC

    return ((GGUF_MAGIC, "gguf"), *((struct.pack("<I", m), "ggml") for m in GGML_MAGICS), (ZIP_MAGIC, "pickle"))


def suffix_magics() -> dict[str, bytes]:
    """A file named like a model file of a kind -> the magic it must start with."""
    from ..formats.gguf.header import MAGIC as GGUF_MAGIC

    return {".gguf": GGUF_MAGIC}


def bad_magic(head: bytes, expected: bytes, kind: str) -> str:
    """One line saying what a file starts with instead of its kind's magic."""
    seen = " ".join(f"{b:02x}" for b in head[:4]) or "nothing"
    return f"not a {kind} file: bad magic, it starts with {head[:4]!r} ({seen}), a {kind} file starts with {expected!r}"


def misnamed_files(variant: Variant) -> list[tuple[str, str]]:
    """(file, problem) for files named like a model file (``*.gguf``) whose bytes are not one."""
    out = []
    for rel, kind in variant.kinds.items():
        expected = suffix_magics().get(Path(rel).suffix.lower())
        if expected is not None and kind == "other":
            with variant.abspath(rel).open("rb") as fh:
                out.append((rel, bad_magic(fh.read(4), expected, Path(rel).suffix[1:].upper())))
    return out


def sniff(path: Path) -> str:
    """The kind of a file: safetensors, gguf, ggml, pickle, json or other."""
    name = path.name
    if name.endswith(".safetensors"):
        return "safetensors"
    if _RAW_GGUF_PART.match(name):  # a byte part of a GGUF file split with `split` (only part a has the header)
        return "gguf"
    if name.endswith(".json"):
        return "json"
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return "other"
    for magic, kind in _magics():
        if head == magic:
            return kind
    if head[:1] == b"\x80" and path.suffix in PICKLE_SUFFIXES:
        return "pickle"  # legacy torch.save / raw pickle, protocol 2+
    if path.suffix in PICKLE_SUFFIXES and head:
        return "pickle"
    return "other"


@dataclass
class Variant:
    """A variant folder (or a single file inside one) as found on disk."""

    path: Path  # what the user named
    root: Path  # the folder
    files: list[str]  # relative paths (posix), sorted
    single_file: str | None = None
    _configs: dict[str, dict[str, Any] | None] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Variant:
        path = Path(path)
        if not path.exists():
            raise UnusableInput("no such file or folder", path)
        if path.is_file():
            return cls(path, path.parent, [path.name], single_file=path.name)
        if not path.is_dir():  # a FIFO, a device, a socket: never read (mcard.core.untrusted's rule)
            raise UnusableInput("not a regular file or a folder; only regular files are read", path)
        files = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and not any(part in _SKIP_DIRS for part in p.relative_to(path).parts)
        )
        return cls(path, path, files)

    # -- files ----------------------------------------------------------------
    def abspath(self, rel: str) -> Path:
        return self.root / rel

    def size(self, rel: str) -> int:
        return self.abspath(rel).stat().st_size

    @cached_property
    def kinds(self) -> dict[str, str]:
        return {rel: sniff(self.abspath(rel)) for rel in self.files}

    def files_of(self, kind: str) -> list[str]:
        return [rel for rel, k in self.kinds.items() if k == kind]

    # -- configs ----------------------------------------------------------------
    def config(self, name: str) -> dict[str, Any] | None:
        """A JSON config next to the variant (also for a single-file variant), or None."""
        if name not in self._configs:
            p = self.root / name
            self._configs[name] = load_json_object(p) if p.is_file() else None
        return self._configs[name]

    # -- safetensors ------------------------------------------------------------
    @cached_property
    def headers(self) -> dict[str, SafetensorsHeader]:
        return {rel: read_header(self.abspath(rel)) for rel in self.files_of("safetensors")}

    @cached_property
    def tensors(self) -> dict[str, tuple[str, TensorInfo]]:
        """Every tensor name -> (file, info), over all shards. Duplicates: see :attr:`duplicates`."""
        out: dict[str, tuple[str, TensorInfo]] = {}
        for rel, header in self.headers.items():
            for name, info in header.tensors.items():
                out.setdefault(name, (rel, info))
        return out

    @cached_property
    def duplicates(self) -> list[tuple[str, str, str]]:
        """(tensor, first file, second file) for tensors stored in more than one shard."""
        seen: dict[str, str] = {}
        dups = []
        for rel, header in self.headers.items():
            for name in header.tensors:
                if name in seen:
                    dups.append((name, seen[name], rel))
                else:
                    seen[name] = rel
        return dups

    def read(self, name: str):
        """Read one tensor's data as numpy (only that tensor's bytes)."""
        from .safetensors_io import read_tensor

        try:
            rel, _info = self.tensors[name]
        except KeyError:
            raise UnusableInput(f"no tensor named {name!r}", self.path) from None
        return read_tensor(self.headers[rel], name)

    def has(self, name: str) -> bool:
        return name in self.tensors
