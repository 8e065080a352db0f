"""The AWQ format's spec: what the registry, cards, smoke, sync and package ask of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec import INT4_KERNEL_TOLERANCE, CardSpec, PerLinearSmoke
from . import DEFAULTS

if TYPE_CHECKING:
    from ...core.report import Runtime
    from ...core.variant import Variant
    from ...registry.entry import RegistryVariant

CARD = CardSpec(
    family="awq",
    columns=("Branch", "Bits", "Group Size", "Version", "AWQ Dataset", "Seq Len", "Size", "Compatible runtimes",
             "Made With", "Description"),
    tags=("awq",), bits_tags=True)


_DEFAULT_VERSION = str(DEFAULTS["version"])


class AwqSpec(PerLinearSmoke):
    name = "awq"
    folder = "awq"
    aliases = {"awq": {}}
    card = CARD
    required_keys = ("bits", "group_size")
    own_keys = ("version", "zero_point")
    registry_keys = ("dataset", "seq_len")  # the card's AWQ Dataset and Seq Len columns
    compared_params = ("bits", "group_size")
    kernel_tolerance = INT4_KERNEL_TOLERANCE

    registry_defaults = {"version": _DEFAULT_VERSION}

    def dequantize(self, variant: Variant, name: str) -> Any:
        return self.module.dequantize(variant, name)

    def size_params(self, v: RegistryVariant) -> dict[str, Any]:
        return {"bits": v.bits, "group_size": v.group_size, "version": v.version or _DEFAULT_VERSION}

    def rule_runtimes(self, v: RegistryVariant) -> list[Runtime]:
        return list(self.module.runtimes(bits=v.bits, group_size=v.group_size, version=v.version or self.module.GEMM,
                                         zero_point=v.zero_point))

    def card_cells(self, v: RegistryVariant, row: Any) -> list[Any]:
        from ...card.rows import runtimes_cell, size_cell

        return [v.branch, v.bits, v.group_size, (v.version or _DEFAULT_VERSION).upper(), v.dataset or "-",
                v.seq_len if v.seq_len is not None else "-", size_cell(row.size, row.predicted),
                runtimes_cell(row.runtimes), v.made_with or "-", v.description]

    def kernel_runs(self, v: RegistryVariant, architecture: str | None = None) -> bool:
        from cupy_kernels import limits

        return not limits.why_not_awq(v.version, v.group_size)

    def quantization_config(self, v: RegistryVariant, source: dict[str, Any] | None,
                            weights_base: str) -> dict[str, Any]:
        return {**(source or {}), "quant_method": self.name, "bits": v.bits, "group_size": v.group_size,
                "zero_point": v.zero_point, "version": v.version or _DEFAULT_VERSION}

    def describe(self, variants: list[RegistryVariant]) -> str:
        v = variants[0]
        return f"AWQ {v.bits}-bit, group size {v.group_size}, {(v.version or _DEFAULT_VERSION).upper()}"


SPEC = AwqSpec()
