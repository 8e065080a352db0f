"""llama.cpp's per-tensor type rules ("mixes"): which ggml type each tensor gets for a file type.

One place for these rules, shared by :mod:`.gguf` (validate, size) and :mod:`.ggml`.
Three rule versions are modelled, newest first (:data:`RULES`):

``current``
    llama.cpp ``src/llama-quant.cpp`` (``llama_tensor_get_type_impl`` and
    ``tensor_type_fallback``) at the commit that wrote ``tests/fixtures/llamacpp``
    (its README names it), for dense llama-family models: every file type
    llama-quantize makes (k-quants, i-quants with and without an importance
    matrix, TQ1_0/TQ2_0, Q1_0/Q2_0, MXFP4_MOE, legacy and float types).
    Rows whose length is not a multiple of the chosen type's block fall back:
    256-block i-quants to IQ4_NL; Q2_K, Q3_K, TQ1_0, TQ2_0, Q2_0 to Q4_0; Q4_K to
    Q5_0; Q5_K to Q5_1; Q6_K to Q8_0; and to F16 when even that does not fit.
``2024``
    The same choices with the 2024-2025 fallback, where Q2_K and Q3_K rows fell
    back to IQ4_NL.
``2023``
    The first k-quant rules (June 2023, ``llama_model_quantize_internal``), used by
    GGML v3 (ggjt) files and early GGUF files: ``attn_v``, ``attn_output`` and
    ``ffn_down`` get more bits in the *_M/*_L and Q2_K mixes; everything else keeps
    the base type, output included (TheBloke's June 2023 files confirm it: see
    ``tests/formats/test_seed_sizes_ggml.py``).

Tied embeddings: without an ``output.weight`` tensor, ``token_embd`` follows the
output rule. The importance matrix changes a few choices (IQ3_XXS ``attn_v`` and
``ffn_down``, IQ4_NL/IQ4_XS and Q4_0/Q5_0 ``ffn_down``); llama-quantize records
its use in the ``quantize.imatrix.*`` keys.
"""

from __future__ import annotations

from ...core.errors import UnusableInput
from ..ggml_types import FTYPES, block, canonical_ftype, is_quantized

RULES = ("current", "2024", "2023")
RULE_LABELS = {
    "current": "current",
    "2024": "2024-2025 (Q2_K/Q3_K rows fall back to IQ4_NL)",
    "2023": "2023 (first k-quant)",
}

# Tensor roles: the GGUF name part and the GGML v3 (ggjt) name part of each per-layer tensor.
LAYER_ROLES: dict[str, str] = {
    "attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
    "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
}
NORM_ROLES = ("attn_norm", "ffn_norm", "output_norm")

# File types whose low-bit branch of the rules applies.
_IQ_LOW = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_IQ_HIGHER_ATTN = ("IQ2_S", "IQ2_M")  # get IQ3_S where the others get Q2_K
_OUTPUT_Q5_K = ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
# Tensor types the quantizer refuses to write without an importance matrix (``tensor_requires_imatrix``).
IMATRIX_TYPES = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")

# Row-length fallback (``tensor_type_fallback``), per rule version.
_FALLBACK_256_IQ = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")
_FALLBACK: dict[str, dict[str, str]] = {
    "current": {**dict.fromkeys(_FALLBACK_256_IQ, "IQ4_NL"),
                **dict.fromkeys(("Q2_0", "Q2_K", "Q3_K", "TQ1_0", "TQ2_0"), "Q4_0"),
                "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"},
}
_FALLBACK["2024"] = {**_FALLBACK["current"], "Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL"}
_FALLBACK["2023"] = _FALLBACK["2024"]


class NoFallback(UnusableInput):
    """llama-quantize has no fallback for this type at this row length: it refuses to write the file."""


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the *_M mixes."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def is_quantized_tensor(name: str, n_dims: int) -> bool:
    """llama.cpp quantizes 2-D ``*weight`` tensors that are not norms."""
    return name.endswith("weight") and n_dims >= 2 and "_norm.weight" not in name and "norm.weight" != name


def fallback(new: str, ne0: int, rules: str = "current") -> str:
    """The type a tensor of row length ``ne0`` gets when ``new``'s block does not divide it."""
    if not is_quantized(new) or ne0 % block(new)[0] == 0:
        return new
    out = _FALLBACK[rules].get(new)
    if out is None:
        if block(new)[0] > 32:
            raise NoFallback(f"llama-quantize has no fallback for {new} rows of {ne0} (not a multiple of "
                             f"{block(new)[0]}): it cannot write this file type for this model")
        out = new
    return out if ne0 % block(out)[0] == 0 else "F16"


def requires_imatrix(role: str, type_name: str, ftype: str) -> bool:
    """Whether llama-quantize needs an importance matrix to write this tensor (``tensor_requires_imatrix``)."""
    if role in ("token_embd", "output"):
        return False
    return type_name in IMATRIX_TYPES or (type_name == "Q2_K" and canonical_ftype(ftype) == "Q2_K_S")


def role_type(
    role: str, layer: int, n_layers: int, ftype: str, *, ne0: int, n_gqa: int = 1,
    is_70b: bool = False, has_output: bool = True, rules: str = "current", has_imatrix: bool = False,
) -> str:
    """The ggml type llama.cpp gives tensor ``role`` (``attn_v``, ``output``, ``token_embd``...).

    ``ne0`` is the tensor's row length; ``n_gqa`` = n_head / n_head_kv; ``has_output``
    is False when the embeddings are tied (then token_embd follows the output rule).
    Raises :class:`NoFallback` where llama-quantize refuses the file type for this shape.
    """
    ftype = canonical_ftype(ftype)
    base = FTYPES[ftype][1]
    if role in NORM_ROLES:
        return "F32"
    if not is_quantized(base):
        return base
    if rules == "2023":
        return fallback(_rules_2023(role, layer, n_layers, ftype, base), ne0, rules)
    new = _choice(role, layer, n_layers, ftype, base, ne0, n_gqa, is_70b, has_output, has_imatrix)
    return fallback(new, ne0, rules)


def _choice(role: str, layer: int, n: int, ftype: str, base: str, ne0: int, gqa: int, is_70b: bool,
            has_output: bool, imatrix: bool) -> str:
    """``llama_tensor_get_type_impl`` for a dense llama-family model (no experts, not Falcon)."""
    if role == "output" or (role == "token_embd" and not has_output):
        if ftype == "MXFP4_MOE" or ne0 % block(base)[0]:
            return "Q8_0"
        if ftype in _OUTPUT_Q5_K:
            return "Q5_K"
        return base if base == "Q8_0" else "Q6_K"
    if ftype == "MXFP4_MOE":  # MXFP4 for 3-D expert tensors only; a dense model is all Q8_0
        return "Q8_0"
    if role == "token_embd":
        if ftype in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if ftype in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S"
        if ftype in ("TQ1_0", "TQ2_0", "Q2_0"):
            return "Q4_K"
        return base
    if ftype in _IQ_LOW:
        low = "IQ3_S" if ftype in _IQ_HIGHER_ATTN else "Q2_K"
        if role == "attn_v":
            return "Q4_K" if gqa >= 4 else low
        if role == "ffn_down":
            return low if layer < n // 8 else base
        if role == "attn_output":
            return {"IQ1_S": "IQ2_XXS", "IQ1_M": "IQ2_XXS", "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S"}.get(ftype, base)
        return base
    if role == "attn_v":
        return _attn_v(layer, n, ftype, base, gqa, is_70b, imatrix)
    if role in ("attn_k", "attn_q"):
        return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(ftype, base)
    if role == "ffn_down":
        return _ffn_down(layer, n, ftype, base, imatrix)
    if role == "attn_output":
        return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(ftype, base)
    if role in ("ffn_gate", "ffn_up") and ftype == "IQ3_XS" and n // 8 <= layer < 7 * n // 8:
        return "IQ3_XXS"
    return base


def _attn_v(layer: int, n: int, ftype: str, base: str, gqa: int, is_70b: bool, imatrix: bool) -> str:
    new = base
    if ftype == "Q2_K":
        new = "Q4_K" if gqa >= 4 else "Q3_K"
    elif ftype == "Q2_K_S" and gqa >= 4:
        new = "Q4_K"
    elif ftype == "IQ3_XXS":
        new = "Q4_K" if gqa >= 4 else "IQ3_XXS" if imatrix else "IQ3_S"
    elif ftype in ("IQ3_XS", "IQ3_S") and gqa >= 4:
        new = "Q4_K"
    elif ftype == "IQ3_M":
        new = "Q4_K"
    elif ftype == "Q3_K_M":
        new = "Q5_K" if layer < 2 else "Q4_K"
    elif ftype == "Q3_K_L":
        new = "Q5_K"
    elif ftype in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
        new = "Q5_K"
    elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n):
        new = "Q6_K"
    elif ftype == "Q4_K_S" and layer < 4:
        new = "Q5_K"
    if is_70b and new in ("Q3_K", "Q4_K"):
        new = "Q5_K"
    return new


def _ffn_down(layer: int, n: int, ftype: str, base: str, imatrix: bool) -> str:
    first = layer < n // 8
    if ftype == "Q2_K":
        return "Q3_K"
    if ftype == "Q2_K_S":
        return "Q4_K" if first else base
    if ftype == "IQ3_XXS" and not imatrix:
        return "Q4_K" if first else "Q3_K"
    if ftype == "Q3_K_M":
        return "Q5_K" if layer < n // 16 else "Q4_K"
    if ftype == "IQ3_M" and first:
        return "Q4_K"
    if ftype == "Q3_K_L":
        return "Q5_K"
    if ftype == "Q4_K_M":
        return "Q6_K" if use_more_bits(layer, n) else base
    if first and ftype in ("IQ4_NL", "IQ4_XS") and not imatrix:
        return "Q5_K"
    if ftype == "Q5_K_M" and use_more_bits(layer, n):
        return "Q6_K"
    if ftype == "Q4_K_S" and first:
        return "Q5_K"
    if ftype in ("Q4_0", "Q5_0") and imatrix and first:
        return "Q4_1" if ftype == "Q4_0" else "Q5_1"
    return base


# June 2023: (ftype) -> {role: type}; "half:" = Q6_K on use_more_bits layers only.
_RULES_2023: dict[str, dict[str, str]] = {
    "Q2_K": {"attn_v": "Q4_K", "attn_output": "Q4_K", "ffn_down": "Q4_K"},
    "Q3_K_M": {"attn_v": "Q4_K", "attn_output": "Q4_K", "ffn_down": "Q4_K"},
    "Q3_K_L": {"attn_v": "Q5_K", "attn_output": "Q5_K", "ffn_down": "Q5_K"},
    "Q4_K_M": {"attn_v": "half:Q6_K", "ffn_down": "half:Q6_K"},
    "Q5_K_M": {"attn_v": "half:Q6_K", "ffn_down": "half:Q6_K"},
}


def _rules_2023(role: str, layer: int, n_layers: int, ftype: str, base: str) -> str:
    chosen = _RULES_2023.get(ftype, {}).get(role, base)
    if chosen.startswith("half:"):
        return chosen[5:] if use_more_bits(layer, n_layers) else base
    return chosen
