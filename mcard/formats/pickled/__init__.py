"""Pickle checkpoints (``.pt``, ``.bin``, ``.pth``): detected and described, never unpickled.

A ``torch.save`` file is a zip archive holding ``<name>/data.pkl`` plus one
entry per storage under ``<name>/data/``; an older one is a bare pickle. We
read the zip directory and walk the pickle's opcodes with
:func:`pickletools.genops`, which parses without executing anything, to list
the globals it would import: anything outside torch's rebuild helpers and
``collections.OrderedDict`` would run arbitrary code on load.
"""

from __future__ import annotations

import io
import lzma
import pickletools
import zipfile
import zlib
from pathlib import Path

from ...core.errors import UnusableInput
from ...core.report import Report, Runtime
from ...core.variant import Variant

NAME = "pickle"
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # the opcode stream of a checkpoint is small
MAX_ZIP_DIRECTORY = 64 * 1024 * 1024  # zipfile reads the whole central directory into memory

# Globals a plain state_dict needs; anything else is flagged.
SAFE_GLOBALS = {
    "collections OrderedDict",
    "torch._utils _rebuild_tensor_v2",
    "torch._utils _rebuild_parameter",
    "torch HalfStorage", "torch FloatStorage", "torch BFloat16Storage", "torch IntStorage",
    "torch LongStorage", "torch ByteStorage", "torch CharStorage", "torch ShortStorage",
    "torch BoolStorage", "torch DoubleStorage",
    "torch float16", "torch float32", "torch bfloat16", "torch int32", "torch int64",
    "torch int8", "torch uint8", "torch bool",
}


def detect(variant: Variant) -> bool:
    return bool(variant.files_of("pickle"))


def scan(path: Path) -> tuple[str, list[str], int]:
    """(container, globals imported, storage count) of a pickle checkpoint, without loading it."""
    data: bytes
    storages = 0
    container = "bare pickle"
    try:
        is_zip = zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:  # e.g. a multi-disk zip64 end record
        raise UnusableInput(f"corrupt zip archive: {exc}", path) from None
    if is_zip:
        container = "torch zip"
        try:
            directory = _directory_size(path)
            if directory > MAX_ZIP_DIRECTORY:
                raise UnusableInput(f"the zip end record claims a {directory}-byte central directory "
                                    f"(limit {MAX_ZIP_DIRECTORY}); refused", path)
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                storages = sum(1 for n in names if "/data/" in n)
                pkl = next((n for n in names if n.endswith("data.pkl")), None)
                if pkl is None or zf.getinfo(pkl).file_size > MAX_PICKLE_BYTES:
                    return container, [], storages
                with zf.open(pkl) as member:  # bounded even if the directory lies about the size
                    data = member.read(MAX_PICKLE_BYTES)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
                RuntimeError, zlib.error, lzma.LZMAError) as exc:  # UnicodeDecodeError is a ValueError
            raise UnusableInput(f"corrupt torch zip archive: {exc}", path) from None
    else:
        with path.open("rb") as fh:
            data = fh.read(MAX_PICKLE_BYTES)
    return container, _globals(data), storages


def _directory_size(path: Path) -> int:
    """The central directory size the zip's end record (zip64 too) claims, before zipfile reads it."""
    with path.open("rb") as fh:
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # private: the parser zipfile itself uses
    return int(end[zipfile._ECD_SIZE]) if end else 0  # type: ignore[attr-defined]  # private, as above


def _globals(data: bytes) -> list[str]:
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace("\n", " "))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]} {strings[-1]}")
            elif op.name == "STOP":
                break
    except Exception:  # noqa: BLE001 - a truncated or legacy stream: report what was seen
        pass
    return sorted(set(found))


def check(variant: Variant, report: Report) -> None:
    report.format = NAME
    for rel in variant.files_of("pickle"):
        try:
            container, imports, storages = scan(variant.abspath(rel))
        except UnusableInput as exc:
            report.error("pickle-only", rel, "", f"{exc.message}; pickle weights cannot be validated and mcard never unpickles")
            continue
        report.error(
            "pickle-only", rel, "",
            f"{container} checkpoint ({storages} storages): pickle weights cannot be validated without "
            "executing them; mcard never unpickles. Publish safetensors instead.",
        )
        unsafe = [g for g in imports if g not in SAFE_GLOBALS]
        if unsafe:
            report.error("pickle-unsafe-import", rel, "", f"pickle imports {', '.join(unsafe)}: loading it runs that code")
    report.runtimes = [Runtime("transformers", False, "pickle weights are refused by loaders that require safetensors")]
