"""Remote validate for GGUF: the header's byte range, fetched before the file is downloaded."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from ...core.errors import UnusableInput
from .header import MAGIC, VERSIONS, read

PREFIX_START = 1 << 20  # the head fetched for a .gguf file: most headers fit
PREFIX_MAX = 64 << 20  # a header that does not parse within this is too large to validate remotely


def fetch_header(mirror: Any, rf: Any, head: bytes, scratch: Path) -> None:
    """A prefix doubled from ``head`` up to :data:`PREFIX_MAX` until :func:`.header.read` parses it as a
    file of its own (its bounded reader raises on any read past the end, so success means the whole
    header lies in the prefix and parses exactly as in the full file)."""
    data = bytearray(head)
    fd, name = tempfile.mkstemp(suffix=".gguf", dir=scratch)
    os.close(fd)
    probe = Path(name)
    try:
        while True:
            if len(data) >= 8 and (data[:4] != MAGIC or struct.unpack("<I", data[4:8])[0] not in VERSIONS):
                break  # bad magic or version: validate reports it from the bytes already there
            probe.write_bytes(data)
            try:
                read(probe)  # a bounded reader: parses only if the header fits the prefix
                break
            except Exception:  # noqa: BLE001 - the prefix is short, or the header is broken
                if len(data) >= rf.size:
                    break  # the whole file is here: validate reports what is wrong with it
                if len(data) >= PREFIX_MAX:
                    raise UnusableInput(f"GGUF header does not parse within its first {PREFIX_MAX >> 20} MiB; "
                                        "too large to validate remotely (fetch it and validate locally)", rf.path) from None
                data += mirror.reader.get(rf, len(data), min(rf.size, 2 * len(data)))
    finally:
        probe.unlink(missing_ok=True)
    mirror.write(rf, 0, bytes(data))
