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
# Default weights file names, by format family (the names transformers / PEFT load).
WEIGHTS_NAME = {"lora": "adapter_model.safetensors"}
DEFAULT_WEIGHTS_NAME = "model.safetensors"
TORCH_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_GPTQ_ALIASES = ("w_bit", "q_group_size", "is_marlin_format")


def gptq_config(v: RegistryVariant, source: dict[str, Any] | None, weights_base: str) -> dict[str, Any]:
    """AutoGPTQ's quantize_config.json, also used as config.json's quantization_config."""
    src = {k: val for k, val in (source or {}).items() if k not in _GPTQ_ALIASES}
    return {**src,
            "bits": v.bits, "group_size": v.group_size,
            "damp_percent": v.damp_percent if v.damp_percent is not None else src.get("damp_percent", 0.01),
            "desc_act": v.desc_act, "sym": v.sym,
            "true_sequential": src.get("true_sequential", True), "static_groups": src.get("static_groups", False),
            "checkpoint_format": v.checkpoint_format, "model_name_or_path": src.get("model_name_or_path"),
            "model_file_base_name": weights_base, "quant_method": "gptq"}


def quantization_config(v: RegistryVariant, source: dict[str, Any] | None, weights_base: str) -> dict[str, Any] | None:
    """config.json's ``quantization_config`` for the variant (None for unquantized and adapter formats)."""
    src = dict(source or {})
    if v.format == "gptq":
        return gptq_config(v, src, weights_base)
    if v.format == "awq":
        return {**src, "quant_method": "awq", "bits": v.bits, "group_size": v.group_size,
                "zero_point": v.zero_point, "version": v.version or "gemm"}
    if v.format in ("nf4", "fp4"):
        return {"bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_storage": "uint8",
                "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
                "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, **src,
                "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                "bnb_4bit_quant_type": v.format, "bnb_4bit_use_double_quant": v.double_quant}
    return None


def model_config(v: RegistryVariant, base: dict[str, Any], qc: dict[str, Any] | None) -> dict[str, Any]:
    """The base model's config.json with the variant's quantization_config (or torch_dtype) set."""
    out = {k: val for k, val in base.items() if k != "quantization_config"}
    if qc is not None:
        out["quantization_config"] = qc
    if v.format in TORCH_DTYPE:
        out["torch_dtype"] = TORCH_DTYPE[v.format]
    return out


def registry_mismatches(v: RegistryVariant, params: dict[str, Any]) -> list[str]:
    """Where the entry and what validate read from the files disagree on a parameter."""
    keys = {"gptq": ("bits", "group_size", "desc_act", "sym", "checkpoint_format"),
            "awq": ("bits", "group_size"), "lora": ("r",)}.get(v.format, ())
    out = []
    for key in keys:
        want, got = getattr(v, key, None), params.get(key)
        if want is not None and got is not None and want != got:
            out.append(f"registry-mismatch: the registry says {key}={want} but the files say {key}={got}")
    return out


def describe(variants: list[RegistryVariant]) -> str:
    """What a commit of these variants holds, for its message: ``GPTQ 4-bit, group size 32, act-order``."""
    v = variants[0]
    if v.family == "gguf":
        return f"{v.format.upper()} " + ", ".join(x.type or x.key for x in variants)
    if v.format == "gptq":
        group = "no grouping" if v.group_size == -1 else f"group size {v.group_size}"
        return (f"GPTQ {v.bits}-bit, {group}, {'act-order' if v.desc_act else 'no act-order'}, "
                f"{'sym' if v.sym else 'asym'}, checkpoint_format {v.checkpoint_format}")
    if v.format == "awq":
        return f"AWQ {v.bits}-bit, group size {v.group_size}, {(v.version or 'gemm').upper()}"
    if v.format in ("nf4", "fp4"):
        return f"bitsandbytes {v.format.upper()}{', double quant' if v.double_quant else ''}"
    if v.format == "lora":
        return f"LoRA adapter, r {v.r}" + (f", alpha {v.alpha:g}" if v.alpha is not None else "")
    return f"{v.format} weights"
