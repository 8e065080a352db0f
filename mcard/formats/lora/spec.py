"""The PEFT LoRA adapter format's spec: what the registry, cards and package ask of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec import CardSpec, FormatSpec
from . import CONFIG_NAME, WEIGHTS_NAME

if TYPE_CHECKING:
    from ...core.variant import Variant
    from ...registry.entry import RegistryVariant

CARD = CardSpec(
    family="lora",
    columns=("Branch", "Rank (r)", "Alpha", "Dropout", "Target modules", "Size", "Dataset", "Description"),
    tags=("lora", "peft"), library_name="peft")  # the Hub shows adapters as PEFT repos (and offers the snippet)


class LoraSpec(FormatSpec):
    name = "lora"
    folder = "lora"
    aliases = {"lora": {}}
    card = CARD
    compared_params = ("r",)
    weights_name = WEIGHTS_NAME
    adapter_config = CONFIG_NAME

    def dequantize(self, variant: Variant, name: str) -> Any:
        return self.module.dequantize(variant, name)

    def size_params(self, v: RegistryVariant) -> dict[str, Any] | None:
        if v.r is None:  # no rank, no size; lora_alpha and dropout do not change the file
            return None
        return {"r": v.r, "target_modules": list(v.target_modules) or None}

    def card_cells(self, v: RegistryVariant, row: Any) -> list[Any]:
        from ...card.evals import format_value
        from ...card.rows import size_cell, target_modules_text

        return [v.branch, v.r if v.r is not None else "-", format_value(v.alpha) if v.alpha is not None else "-",
                format_value(v.dropout) if v.dropout is not None else "-", target_modules_text(v),
                size_cell(row.size, row.predicted), v.dataset or "-", v.description]

    def describe(self, variants: list[RegistryVariant]) -> str:
        v = variants[0]
        return f"LoRA adapter, r {v.r}" + (f", alpha {v.alpha:g}" if v.alpha is not None else "")


SPEC = LoraSpec()
