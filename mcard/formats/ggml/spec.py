"""The legacy GGML format's spec: its variants are files, its card is GGUF's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, cast

from ..gguf.spec import CARD, GgufSpec


class GgmlSpec(GgufSpec):
    name = "ggml"
    folder = "ggml"
    aliases = {"ggml": {}}
    card = CARD  # a GGML file is listed in a GGUF-family card
    file_kinds = ("ggml",)
    remote_heads = ()
    kernel_tolerance = None  # no smoke layers: llama.cpp no longer loads GGML files

    def smoke_layers(self, variant: Any, count: int | None, spread: Any) -> tuple[list[Any], str]:
        return super(GgufSpec, self).smoke_layers(variant, count, spread)

    def kernel_runs(self, v: Any, architecture: str | None = None) -> bool:
        return False

    def remote_reads(self, mirror: Any, remote_file: Any, head: bytes, scratch: Path) -> None:
        """The vocabulary, then each tensor header, hopping over the data, as :func:`~mcard.formats.ggml.walk`
        reads them (one request per tensor: they interleave with the data)."""
        import struct

        from ...hub.ranges import LazyRemoteFile
        from . import BadGgml, walk

        f = LazyRemoteFile(mirror, remote_file, head)
        try:
            walk(cast(BinaryIO, f), remote_file.size, remote_file.path)  # a read-only binary file
        except (BadGgml, struct.error):
            pass  # validate reports what is wrong from the bytes fetched so far
        finally:
            f.to_mirror()


SPEC = GgmlSpec()
