"""The plain float checkpoint's spec (aliases ``fp16``, ``bf16``, ``fp32``): what the rest of mcard asks of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..common import TORCH_DTYPES
from ..spec import CardSpec, FormatSpec

if TYPE_CHECKING:
    from ...core.variant import Variant
    from ...registry.entry import RegistryVariant

CARD = CardSpec(family="hf", columns=("Branch", "Format", "Size", "Description"), quantized=False)


class HfSpec(FormatSpec):
    name = "hf"
    folder = "hf"
    aliases = {"fp16": {"dtype": "F16"}, "bf16": {"dtype": "BF16"}, "fp32": {"dtype": "F32"}}  # the dtype is the alias
    card = CARD

    def dequantize(self, variant: Variant, name: str) -> Any:
        return self.module.dequantize(variant, name)

    def model_config(self, v: RegistryVariant, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "torch_dtype": TORCH_DTYPES[self.aliases[v.format]["dtype"]]}


SPEC = HfSpec()
