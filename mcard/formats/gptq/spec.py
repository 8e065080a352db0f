"""The GPTQ format's spec: what the registry, cards, smoke, sync and package ask of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import quant_config
from ..spec import INT4_KERNEL_TOLERANCE, CardSpec, PerLinearSmoke

if TYPE_CHECKING:
    from ...core.report import Runtime
    from ...core.variant import Variant
    from ...registry.entry import RegistryVariant

CARD = CardSpec(
    family="gptq",
    columns=("Branch", "Bits", "Group Size", "Act Order", "File Size", "ExLlama Compatible", "Made With",
             "Description"),
    tags=("gptq",), bits_tags=True, size_column="File Size")
# Keys of a quantizer's config that are older spellings or flags the packaged config does not carry.
_NOT_PACKAGED = (*quant_config.ALIASES, "is_marlin_format")


class GptqSpec(PerLinearSmoke):
    name = "gptq"
    folder = "gptq"
    aliases = {"gptq": {}}
    card = CARD
    required_keys = ("bits", "group_size")
    registry_keys = ("dataset", "seq_len")  # the card's provenance table
    compared_params = ("bits", "group_size", "desc_act", "sym", "checkpoint_format")
    kernel_tolerance = INT4_KERNEL_TOLERANCE
    quant_config_file = "quantize_config.json"  # AutoGPTQ's, read beside config.json and packaged

    def dequantize(self, variant: Variant, name: str) -> Any:
        return self.module.dequantize(variant, name)

    def size_params(self, v: RegistryVariant) -> dict[str, Any]:
        # made_with = "GPTQModel": its layout (no bias, its tensor order)
        writer = "gptqmodel" if (v.made_with or "").lower().startswith("gptqmodel") else "autogptq"
        return {"bits": v.bits, "group_size": v.group_size, "desc_act": v.desc_act, "writer": writer}

    def rule_runtimes(self, v: RegistryVariant) -> list[Runtime]:
        return list(self.module.runtimes(bits=v.bits, group_size=v.group_size, sym=v.sym, desc_act=v.desc_act,
                                         checkpoint_format=v.checkpoint_format))

    def card_cells(self, v: RegistryVariant, row: Any) -> list[Any]:
        from ...card.rows import exllama_cell, size_cell

        return [v.branch, v.bits, v.group_size, v.desc_act, size_cell(row.size, row.predicted),
                exllama_cell(row.runtimes), v.made_with or "-", v.description]

    def kernel_runs(self, v: RegistryVariant, architecture: str | None = None) -> bool:
        from cupy_kernels import limits

        return not limits.why_not_gptq(v.bits)

    def quantization_config(self, v: RegistryVariant, source: dict[str, Any] | None,
                            weights_base: str) -> dict[str, Any]:
        """AutoGPTQ's quantize_config.json, also config.json's quantization_config."""
        src = {k: val for k, val in (source or {}).items() if k not in _NOT_PACKAGED}
        return {**src,
                "bits": v.bits, "group_size": v.group_size,
                "damp_percent": v.damp_percent if v.damp_percent is not None else src.get("damp_percent", 0.01),
                "desc_act": v.desc_act, "sym": v.sym,
                "true_sequential": src.get("true_sequential", True), "static_groups": src.get("static_groups", False),
                "checkpoint_format": v.checkpoint_format, "model_name_or_path": src.get("model_name_or_path"),
                "model_file_base_name": weights_base, "quant_method": self.name}

    def describe(self, variants: list[RegistryVariant]) -> str:
        v = variants[0]
        group = "no grouping" if v.group_size == -1 else f"group size {v.group_size}"
        return (f"GPTQ {v.bits}-bit, {group}, {'act-order' if v.desc_act else 'no act-order'}, "
                f"{'sym' if v.sym else 'asym'}, checkpoint_format {v.checkpoint_format}")


SPEC = GptqSpec()
__all__ = ["CARD", "SPEC", "GptqSpec"]
