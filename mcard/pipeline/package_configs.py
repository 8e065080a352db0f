"""The configs a packaged branch carries, built from its registry entry and the quantizer's own files.

The registry entry is the source of truth for the quantization parameters;
the quantizer's configs add what the registry does not record (AutoGPTQ's
``true_sequential``, bitsandbytes' compute dtype, AWQ's skipped modules...).
Where the two disagree on a parameter that changes how tensors are read, the
variant fails validation before anything is packaged (:func:`registry_mismatches`).
"""

from __future__ import annotations

from typing import Any

from ..registry.entry import RegistryVariant

# The base model's tokenizer and generation files a runtime needs next to the weights.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "generation_config.json",
)


def quantization_config(v: RegistryVariant, source: dict[str, Any] | None, weights_base: str) -> dict[str, Any] | None:
    """config.json's ``quantization_config`` for the variant (None for unquantized and adapter formats)."""
    return v.spec.quantization_config(v, dict(source or {}), weights_base)


def model_config(v: RegistryVariant, base: dict[str, Any], qc: dict[str, Any] | None) -> dict[str, Any]:
    """The base model's config.json with the variant's quantization_config (or torch_dtype) set."""
    out = {k: val for k, val in base.items() if k != "quantization_config"}
    if qc is not None:
        out["quantization_config"] = qc
    return v.spec.model_config(v, out)


def registry_mismatches(v: RegistryVariant, params: dict[str, Any]) -> list[str]:
    """Where the entry and what validate read from the files disagree on a parameter (``sync`` and
    ``package`` both ask; the format's spec names the parameters)."""
    out = []
    for key in v.spec.compared_params:
        want, got = getattr(v, key, None), params.get(key)
        if want is not None and got is not None and want != got:
            out.append(f"registry-mismatch: the registry says {key}={want} but the files say {key}={got}")
    return out


def describe(variants: list[RegistryVariant]) -> str:
    """What a commit of these variants holds, for its message: ``GPTQ 4-bit, group size 32, act-order``."""
    return variants[0].spec.describe(variants)
