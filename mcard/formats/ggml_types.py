"""ggml tensor types and llama.cpp file types ("ftypes"): ids, block sizes, default types.

One place for these facts, shared by :mod:`.gguf`, :mod:`.ggml`, :mod:`.gguf.mix`
and :mod:`.gguf.split`. Ids and block sizes come from the installed ``gguf``
package; types newer than it (ggml ``ggml-common.h`` at the llama.cpp commit named
in ``tests/fixtures/llamacpp/README.md``) are added from :data:`_NEWER_TYPES`, so a
file that uses them is still sized and checked, and a type id neither knows is
reported as unknown instead of being dropped.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..core.errors import UnusableInput

QK_K = 256

# Types the installed gguf package may not know yet: name -> (type id, elements per block, bytes per block).
_NEWER_TYPES: dict[str, tuple[int, int, int]] = {
    "MXFP4": (39, 32, 1 + 16),
    "NVFP4": (40, 64, 4 + 32),
    "Q1_0": (41, 128, 2 + 16),  # fp16 d + 1 bit a weight: +d or -d
    "Q2_0": (42, 64, 2 + 16),   # fp16 d + 2 bits a weight: (q - 1) * d
}

# name -> (type id, elements per block, bytes per block), every type mcard can size.
TYPES: dict[str, tuple[int, int, int]] = {
    t.name: (int(t), *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES
}
for _name, _fact in _NEWER_TYPES.items():
    TYPES.setdefault(_name, _fact)
TYPE_BY_ID: dict[int, str] = {tid: name for name, (tid, _e, _b) in TYPES.items()}
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
_NOT_QUANTIZED = (*FLOAT_TYPES, "I8", "I16", "I32", "I64")

# llama-quantize's file types (llama.h ``llama_ftype``, tools/quantize QUANT_OPTIONS):
# name -> (general.file_type id, default tensor type ``llama_ftype_get_default_type``).
FTYPES: dict[str, tuple[int, str]] = {
    "F32": (0, "F32"), "F16": (1, "F16"), "BF16": (32, "BF16"),
    "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"), "Q8_0": (7, "Q8_0"), "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"),
    "Q2_K": (10, "Q2_K"), "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"), "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
    "IQ2_XXS": (19, "IQ2_XXS"), "IQ2_XS": (20, "IQ2_XS"), "Q2_K_S": (21, "Q2_K"), "IQ3_XS": (22, "IQ3_S"),
    "IQ3_XXS": (23, "IQ3_XXS"), "IQ1_S": (24, "IQ1_S"), "IQ4_NL": (25, "IQ4_NL"), "IQ3_S": (26, "IQ3_S"),
    "IQ3_M": (27, "IQ3_S"), "IQ2_S": (28, "IQ2_XS"), "IQ2_M": (29, "IQ2_S"), "IQ4_XS": (30, "IQ4_XS"),
    "IQ1_M": (31, "IQ1_M"),
    "TQ1_0": (36, "TQ1_0"), "TQ2_0": (37, "TQ2_0"), "MXFP4_MOE": (38, "MXFP4"),
    "Q1_0": (40, "Q1_0"), "Q2_0": (41, "Q2_0"),
}
FTYPE_BY_ID: dict[int, str] = {i: name for name, (i, _t) in FTYPES.items()}
# The file types of llama.cpp's GGML (ggjt v3) era, before GGUF (August 2023): ids up to Q6_K's.
GGML_FTYPES: tuple[str, ...] = tuple(name for name, (i, _t) in FTYPES.items() if i <= FTYPES["Q6_K"][0])
# llama-quantize's aliases (Q4_K = Q4_K_M...) and common spellings.
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "FP16": "F16", "FP32": "F32"}


class UnknownType(UnusableInput, ValueError):
    """A GGUF/GGML type or mix mcard does not know: one line, exit 2 (and a ValueError for library callers)."""


def canonical_ftype(ftype: str) -> str:
    """Normalise ``q4_k_m``/``Q4_K_M``/``q4_K`` to a key of :data:`FTYPES`.

    Raises :class:`UnknownType` naming the known file types (exit 2 on the command line).
    """
    key = str(ftype).strip().upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in FTYPES:
        if f"MOSTLY_{key}" in LlamaFileType.__members__:  # the gguf package names it; its mix is not modelled here
            raise UnknownType(f"{key} is a llama.cpp type mcard does not model (modelled: {', '.join(FTYPES)})")
        raise UnknownType(f"unknown GGUF/GGML type {str(ftype)[:40]!r} (known: {', '.join(FTYPES)})")
    return key


def type_name(type_id: int) -> str | None:
    """The ggml type name of an id, or None when neither gguf nor mcard knows it."""
    return TYPE_BY_ID.get(type_id)


def block(type_name: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type."""
    _tid, elems, nbytes = TYPES[type_name]
    return elems, nbytes


def is_quantized(type_name: str) -> bool:
    return type_name not in _NOT_QUANTIZED


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


# -- dequantizers for types the installed gguf package cannot decode -----------------------------
def _d16(blocks: np.ndarray) -> np.ndarray:
    return blocks[:, :2].copy().view("<f2").astype(np.float32)


def _dequant_q1_0(blocks: np.ndarray) -> np.ndarray:
    """ggml ``dequantize_row_q1_0``: bit j of the block (byte j/8, bit j%8) set -> +d, else -d."""
    d = _d16(blocks)
    bits = np.unpackbits(blocks[:, 2:], axis=1, bitorder="little").astype(bool)
    return np.where(bits, d, -d).astype(np.float32)


def _dequant_q2_0(blocks: np.ndarray) -> np.ndarray:
    """ggml ``dequantize_row_q2_0``: 2-bit q (byte j/4, bits 2*(j%4)) -> (q - 1) * d."""
    d = _d16(blocks)
    qs = blocks[:, 2:]
    q = np.stack([(qs >> s) & 3 for s in (0, 2, 4, 6)], axis=2).reshape(len(blocks), -1)
    return ((q.astype(np.int32) - 1).astype(np.float32) * d).astype(np.float32)


DEQUANTIZERS = {"Q1_0": _dequant_q1_0, "Q2_0": _dequant_q2_0}
