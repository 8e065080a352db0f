"""The bitsandbytes 4-bit format's spec (aliases ``nf4`` and ``fp4``): what the rest of mcard asks of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec import INT4_KERNEL_TOLERANCE, CardSpec, PerLinearSmoke

if TYPE_CHECKING:
    from ...core.report import Runtime
    from ...core.variant import Variant
    from ...registry.entry import RegistryVariant

CARD = CardSpec(
    family="bnb",
    columns=("Branch", "Quant type", "Double quant", "Size", "Compatible runtimes", "Description"),
    tags=("bitsandbytes", "4-bit"), check_alias_column="Quant type")


class BnbSpec(PerLinearSmoke):
    name = "bnb"
    folder = "bnb"
    aliases = {"nf4": {"quant_type": "nf4"}, "fp4": {"quant_type": "fp4"}}  # the quant type is the alias
    card = CARD
    own_keys = ("double_quant",)
    kernel_tolerance = INT4_KERNEL_TOLERANCE

    def dequantize(self, variant: Variant, name: str) -> Any:
        return self.module.dequantize(variant, name)

    def size_params(self, v: RegistryVariant) -> dict[str, Any]:
        return {"double_quant": v.double_quant}

    def rule_runtimes(self, v: RegistryVariant) -> list[Runtime]:
        return list(self.module.runtimes(quant_type=v.format, double_quant=v.double_quant))

    def card_cells(self, v: RegistryVariant, row: Any) -> list[Any]:
        from ...card.rows import runtimes_cell, size_cell

        return [v.branch, v.format, v.double_quant, size_cell(row.size, row.predicted), runtimes_cell(row.runtimes),
                v.description]

    def kernel_runs(self, v: RegistryVariant, architecture: str | None = None) -> bool:
        from cupy_kernels import limits

        return not limits.why_not_bnb(None)  # the blocksize is not in the registry: bitsandbytes' default

    def quantization_config(self, v: RegistryVariant, source: dict[str, Any] | None,
                            weights_base: str) -> dict[str, Any]:
        return {"bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_storage": "uint8",
                "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
                "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, **(source or {}),
                "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                "bnb_4bit_quant_type": v.format, "bnb_4bit_use_double_quant": v.double_quant}

    def describe(self, variants: list[RegistryVariant]) -> str:
        v = variants[0]
        return f"bitsandbytes {v.format.upper()}{', double quant' if v.double_quant else ''}"


SPEC = BnbSpec()
