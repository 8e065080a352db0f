"""The pickle checkpoint's spec: detected and described, never unpickled; no registry alias, no card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec import FormatSpec


class PickleSpec(FormatSpec):
    name = "pickle"
    folder = "pickled"  # a package named `pickle` would shadow the standard library's module
    file_kinds = ("pickle",)

    def remote_reads(self, mirror: Any, remote_file: Any, head: bytes, scratch: Path) -> None:
        from .remote import fetch_scanned

        fetch_scanned(mirror, remote_file, head)


SPEC = PickleSpec()
