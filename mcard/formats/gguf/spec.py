"""The GGUF format's spec: its variants are files; what the registry, cards, smoke and package ask of it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..spec import INT4_KERNEL_TOLERANCE, CardSpec, FormatSpec
from .remote import PREFIX_START

if TYPE_CHECKING:
    from ...core.variant import Variant
    from ...registry.entry import RegistryVariant

CARD = CardSpec(
    family="gguf",
    columns=("Name", "Quant method", "Bits", "Size", "Max RAM required", "Use case"),
    bits_tags=True, ram=True, sort_by_size=True)


class GgufSpec(FormatSpec):
    name = "gguf"
    folder = "gguf"
    aliases = {"gguf": {}}
    card = CARD
    files_are_variants = True
    required_keys = ("file", "type")
    registry_keys = ("bits", "ram")  # bits: else from the type's name; ram: "Max RAM required"
    file_kinds = ("gguf",)
    # a GGUF header holds the vocabulary: read 1 MiB first
    remote_heads: ClassVar[tuple[tuple[str, int], ...]] = ((".gguf", PREFIX_START),)
    kernel_tolerance: ClassVar[float | None] = INT4_KERNEL_TOLERANCE

    def dequantize(self, variant: Variant, name: str) -> Any:
        return self.module.dequantize(variant, name)

    def size_params(self, v: RegistryVariant) -> dict[str, Any]:
        return {"type": v.type}

    def file_display_name(self, file: str) -> str:
        from .split import display_name

        return display_name(file)

    def card_cells(self, v: RegistryVariant, row: Any) -> list[Any]:
        from ...card.rows import size_cell

        return [self.file_display_name(v.file) if v.file else v.file, v.type, v.bits if v.bits is not None else "-",
                size_cell(row.size, row.predicted), size_cell(row.ram, row.predicted), v.description]

    def smoke_layers(self, variant: Variant, count: int | None, spread: Callable[..., list[str]]
                     ) -> tuple[list[Any], str]:
        from .smoke import layers

        return layers(variant, count, spread)

    def kernel_runs(self, v: RegistryVariant, architecture: str | None = None) -> bool:
        """Whether any tensor type of the variant's mix has a kernel (the mix needs the architecture;
        without one, the base type alone)."""
        from cupy_kernels import limits

        return any(not limits.why_not_gguf(t) for t in _mix_types(architecture, str(v.type)))

    def remote_reads(self, mirror: Any, remote_file: Any, head: bytes, scratch: Path) -> None:
        from .remote import fetch_header

        fetch_header(mirror, remote_file, head, scratch)

    def describe(self, variants: list[RegistryVariant]) -> str:
        return f"{variants[0].format.upper()} " + ", ".join(x.type or x.key for x in variants)


@functools.lru_cache(maxsize=1024)
def _mix_types(architecture: str | None, qtype: str) -> frozenset[str]:
    """The ggml tensor types of a GGUF mix (its base type alone without an architecture)."""
    import json

    from ...core.arch import ModelShape
    from .. import ggml_types as gt
    from . import expected_types

    ftype = gt.canonical_ftype(qtype)
    if architecture is None:
        return frozenset({gt.FTYPES[ftype][1]})
    return frozenset(expected_types(ModelShape.from_config(json.loads(architecture)), ftype).values())


SPEC = GgufSpec()
