"""llama.cpp's per-tensor quantization type rules ("mixes"), as tables and small functions.

One place per fact, shared by :mod:`mcard.formats.gguf` and :mod:`mcard.formats.ggml`.

Two rule versions are modelled:

``current``
    llama.cpp ``src/llama-quant.cpp`` ``llama_tensor_get_type`` (2024-2025), for
    dense llama-family models (no experts, not Falcon), k-quant and legacy ftypes.
``2023``
    The first k-quant rules (June 2023, ``llama.cpp`` ``llama_model_quantize_internal``),
    used by GGML v3 (ggjt) files and early GGUF files: ``attention.wv``/``attn_v``,
    ``attention.wo``/``attn_output`` and ``feed_forward.w2``/``ffn_down`` get more bits
    in the *_M/*_L and q2_K mixes; everything else keeps the base type, output included
    (TheBloke's June 2023 ggjt files confirm it: see ``tests/test_seed_sizes_ggml.py``).
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

QK_K = 256

# ftype name -> (general.file_type id, base ggml type). Names as llama-quantize spells them.
FTYPES: dict[str, tuple[int, str]] = {
    "F32": (int(LlamaFileType.ALL_F32), "F32"),
    "F16": (int(LlamaFileType.MOSTLY_F16), "F16"),
    "BF16": (int(LlamaFileType.MOSTLY_BF16), "BF16"),
    "Q4_0": (int(LlamaFileType.MOSTLY_Q4_0), "Q4_0"),
    "Q4_1": (int(LlamaFileType.MOSTLY_Q4_1), "Q4_1"),
    "Q5_0": (int(LlamaFileType.MOSTLY_Q5_0), "Q5_0"),
    "Q5_1": (int(LlamaFileType.MOSTLY_Q5_1), "Q5_1"),
    "Q8_0": (int(LlamaFileType.MOSTLY_Q8_0), "Q8_0"),
    "Q2_K": (int(LlamaFileType.MOSTLY_Q2_K), "Q2_K"),
    "Q2_K_S": (int(LlamaFileType.MOSTLY_Q2_K_S), "Q2_K"),
    "Q3_K_S": (int(LlamaFileType.MOSTLY_Q3_K_S), "Q3_K"),
    "Q3_K_M": (int(LlamaFileType.MOSTLY_Q3_K_M), "Q3_K"),
    "Q3_K_L": (int(LlamaFileType.MOSTLY_Q3_K_L), "Q3_K"),
    "Q4_K_S": (int(LlamaFileType.MOSTLY_Q4_K_S), "Q4_K"),
    "Q4_K_M": (int(LlamaFileType.MOSTLY_Q4_K_M), "Q4_K"),
    "Q5_K_S": (int(LlamaFileType.MOSTLY_Q5_K_S), "Q5_K"),
    "Q5_K_M": (int(LlamaFileType.MOSTLY_Q5_K_M), "Q5_K"),
    "Q6_K": (int(LlamaFileType.MOSTLY_Q6_K), "Q6_K"),
}
FTYPE_BY_ID: dict[int, str] = {i: name for name, (i, _b) in FTYPES.items()}
# Aliases: the legacy names of these ftypes (q3_K = Q3_K_M etc.).
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "FP16": "F16", "FP32": "F32"}

# When a row length is not a multiple of the chosen type's block (llama-quant.cpp fallback).
FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# Tensor roles: the GGUF name part and the GGML v3 (ggjt) name part of each per-layer tensor.
LAYER_ROLES: dict[str, str] = {
    "attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
    "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
}
NORM_ROLES = ("attn_norm", "ffn_norm", "output_norm")


def canonical_ftype(ftype: str) -> str:
    """Normalise ``q4_k_m``/``Q4_K_M``/``q4_K`` to a key of :data:`FTYPES`; ValueError if unknown."""
    key = ftype.strip().upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in FTYPES:
        if f"MOSTLY_{key}" in LlamaFileType.__members__:  # llama.cpp has it; its mix is not modelled here
            raise ValueError(f"{key} is a llama.cpp type mcard does not model (modelled: {', '.join(FTYPES)})")
        raise ValueError(f"unknown GGUF/GGML type {ftype!r} (known: {', '.join(FTYPES)})")
    return key


def block(type_name: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type, from gguf's GGML_QUANT_SIZES."""
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]


def row_bytes(type_name: str, cols: int) -> int:
    elems, nbytes = block(type_name)
    return cols // elems * nbytes


def tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor (``shape`` in any order; the element count is what matters)."""
    n = 1
    for d in shape:
        n *= int(d)
    elems, nbytes = block(type_name)
    return n // elems * nbytes


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the *_M mixes."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def is_quantized_tensor(name: str, n_dims: int) -> bool:
    """llama.cpp quantizes 2-D ``*weight`` tensors that are not norms."""
    return name.endswith("weight") and n_dims >= 2 and "_norm.weight" not in name and "norm.weight" != name


def _fit(new: str, ne0: int) -> str:
    """The fallback when the row length ne0 is not a multiple of the type's block size."""
    if new in ("F32", "F16", "BF16") or ne0 % block(new)[0] == 0:
        return new
    new = FALLBACK.get(new, "F16")
    return new if ne0 % block(new)[0] == 0 else "F16"


def role_type(
    role: str, layer: int, n_layers: int, ftype: str, *, ne0: int, n_gqa: int = 1,
    is_70b: bool = False, has_output: bool = True, rules: str = "current",
) -> str:
    """The ggml type llama.cpp gives tensor ``role`` (``attn_v``, ``output``, ``token_embd``...).

    ``ne0`` is the tensor's row length; ``n_gqa`` = n_head / n_head_kv; ``has_output``
    is False when the embeddings are tied (then token_embd follows the output rule).
    """
    ftype = canonical_ftype(ftype)
    base = FTYPES[ftype][1]
    if role in NORM_ROLES:
        return "F32"
    if base in ("F32", "F16", "BF16"):
        return base
    if rules == "2023":
        return _fit(_rules_2023(role, layer, n_layers, ftype, base), ne0)
    new = base
    if role == "output" or (role == "token_embd" and not has_output):
        if ne0 % block(base)[0] != 0:
            new = "Q8_0"
        elif base != "Q8_0":
            new = "Q6_K"
        return new
    if role == "token_embd":
        return _fit(new, ne0)
    more = use_more_bits(layer, n_layers)
    if role == "attn_v":
        if ftype == "Q2_K":
            new = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif ftype == "Q2_K_S" and n_gqa >= 4:
            new = "Q4_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if layer < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and more:
            new = "Q6_K"
        elif ftype == "Q4_K_S" and layer < 4:
            new = "Q5_K"
        if is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
    elif role == "ffn_down":
        if ftype == "Q2_K":
            new = "Q3_K"
        elif ftype == "Q2_K_S" and layer < n_layers // 8:
            new = "Q4_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if layer < n_layers // 16 else "Q4_K"
        elif ftype == "Q3_K_L":
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and more:
            new = "Q6_K"
        elif ftype == "Q4_K_S" and layer < n_layers // 8:
            new = "Q5_K"
    elif role == "attn_output":
        new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, base)
    return _fit(new, ne0)


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


# --- round-to-nearest k-quant packers (format-exact ggml block layouts) ------------------
# Simple RTN, not llama.cpp's error-minimising search: the bytes follow ggml's block_qN_K
# structs exactly, so gguf.quants.dequantize (and llama.cpp) read them back.

def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def _asym(x: np.ndarray, sub: int, qmax: int, sbits: int):
    """Sub-block scales/mins for value = d*sc*q - dmin*m: returns d, dmin (f16), sc, m, q."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    lo = np.minimum(xs.min(-1), 0.0)
    hi = xs.max(-1)
    scale = (hi - lo) / qmax
    offset = -lo
    smax = (1 << sbits) - 1
    d = _f16(scale.max(-1) / smax)
    dmin = _f16(offset.max(-1) / smax)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, smax).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(offset, dmin32)), 0, smax).astype(np.uint8)
    eff_s = (d32 * sc)[..., None]
    eff_m = (dmin32 * m)[..., None]
    q = np.clip(np.rint(_safe_div(xs + eff_m, eff_s)), 0, qmax).astype(np.uint8)
    return d, dmin, sc, m, q.reshape(n, -1)


def _sym(x: np.ndarray, sub: int, qlo: int, qhi: int, smax: int):
    """value = d*sc*q with q in [qlo, qhi], sc in [0, smax]: returns d (f16), sc, q (int)."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    amax = np.abs(xs).max(-1)
    scale = amax / max(-qlo, qhi)
    d = _f16(scale.max(-1) / smax)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, smax).astype(np.int32)
    q = np.clip(np.rint(_safe_div(xs, (d32 * sc)[..., None])), qlo, qhi).astype(np.int32)
    return d, sc, q.reshape(n, -1)


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min packing of block_q4_K / block_q5_K."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    return out


def _nibbles_32(q: np.ndarray) -> np.ndarray:
    """Pairs of 32-element sub-blocks into one 32-byte run: low nibble first sub-block."""
    q = q.reshape(q.shape[0], -1, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(q.shape[0], -1).astype(np.uint8)


def _crumbs_128(q: np.ndarray) -> np.ndarray:
    """2-bit values, 128-element halves: element 128h+32s+l in byte 32h+l at bit 2s."""
    q = q.reshape(q.shape[0], 2, 4, 32).astype(np.uint8)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(q.shape[0], 64)


def _bits_8x32(bits: np.ndarray) -> np.ndarray:
    """One bit per element: element 32b+l in byte l at bit b."""
    b = bits.reshape(bits.shape[0], 8, 32).astype(np.uint8)
    return np.bitwise_or.reduce(b << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)


def pack_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _asym(x, 32, 15, 6)
    return np.concatenate([_f16b(d), _f16b(dmin), _pack_scales_k4(sc, m), _nibbles_32(q)], axis=1)


def pack_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _asym(x, 32, 31, 6)
    qh = _bits_8x32(q >> 4)
    return np.concatenate([_f16b(d), _f16b(dmin), _pack_scales_k4(sc, m), qh, _nibbles_32(q & 0xF)], axis=1)


def pack_q2_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _asym(x, 16, 3, 4)
    scales = (sc & 0xF) | (m << 4)
    return np.concatenate([scales.astype(np.uint8), _crumbs_128(q), _f16b(d), _f16b(dmin)], axis=1)


def pack_q3_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _sym(x, 16, -4, 3, 31)
    v = (q + 4).astype(np.uint8)
    s = (sc + 32).astype(np.uint8)
    lo, hi = s & 0xF, s >> 4
    scales = np.concatenate(
        [lo[:, 0:8] | (lo[:, 8:16] << 4), hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)],
        axis=1,
    )
    return np.concatenate([_bits_8x32(v >> 2), _crumbs_128(v & 3), scales, _f16b(d)], axis=1)


def pack_q6_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _sym(x, 16, -32, 31, 127)
    v = (q + 32).astype(np.uint8)
    n = v.shape[0]
    low = (v & 0xF).reshape(n, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    qh = _crumbs_128(v >> 4)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16b(d)], axis=1)


def _f16b(d: np.ndarray) -> np.ndarray:
    return d.astype("<f2").view(np.uint8).reshape(-1, 2)


# ggml type -> packer of [n_blocks, 256] float32 blocks into [n_blocks, block bytes].
PACKERS = {"Q2_K": pack_q2_k, "Q3_K": pack_q3_k, "Q4_K": pack_q4_k, "Q5_K": pack_q5_k, "Q6_K": pack_q6_k}
