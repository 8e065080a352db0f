"""bitsandbytes 4-bit (NF4/FP4) checkpoints as transformers serializes them.

Layout facts (bitsandbytes ``functional.py`` ``QuantState.as_dict(packed=True)``,
``quantize_4bit``, ``get_4bit_type``; transformers ``quantizer_bnb_4bit.py``).
Per quantized linear ``M`` with weight [N, K] (n = N*K elements):

* ``M.weight`` uint8 [(n+1)//2, 1]: two 4-bit codes a byte, element 2i in the
  high nibble, 2i+1 in the low nibble, row-major over [N, K].
* ``M.weight.absmax``: per block of 64 elements, float32 [ceil(n/64)]; with
  double quantization (``bnb_4bit_use_double_quant``) uint8 codes into the
  256-entry dynamic map of ``absmax - mean(absmax)``.
* ``M.weight.quant_map`` float32 [16]: the NF4 or FP4 code book.
* double quant only: ``M.weight.nested_absmax`` float32 [ceil(blocks/256)],
  ``M.weight.nested_quant_map`` float32 [256] (``create_dynamic_map()``).
* ``M.weight.quant_state.bitsandbytes__<nf4|fp4>`` uint8: UTF-8 bytes of
  ``json.dumps`` of {quant_type, blocksize, dtype, shape, [nested_blocksize,
  nested_dtype, nested_offset]} in that order.

Dequantization: ``W = quant_map[code] * absmax[block]``; with double quant
``absmax = nested_quant_map[q] * nested_absmax[i // 256] + nested_offset``.
Embeddings, norms and ``lm_head`` stay in the compute dtype.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..arch import Linear, ModelShape
from ..errors import UnusableInput
from ..report import Report, Runtime
from ..size import SizeEstimate
from ..variant import Variant
from . import _common

NAME = "bnb"

# get_4bit_type("nf4"): Tensor(data) / max|data| (already 1.0), float32 values.
_NF4_RAW = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_CODE: tuple[float, ...] = tuple(float(np.float32(v)) for v in _NF4_RAW)
# get_4bit_type("fp4"): sign bit + 3-bit e2m1 pattern, divided by 12 in float32.
_FP4_RAW = (0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)
FP4_CODE: tuple[float, ...] = tuple(float(np.float32(v) / np.float32(12.0)) for v in _FP4_RAW)
CODE_BOOKS: dict[str, tuple[float, ...]] = {"nf4": NF4_CODE, "fp4": FP4_CODE}

# The CUDA quantizer's decision trees (kernels.cu dQuantizeNF4 / dQuantizeFP4):
# code = number of thresholds strictly below x (NF4); FP4 picks a magnitude
# bucket then adds the sign bit 0b1000 for x < 0.
_NF4_THRESHOLDS = np.array([
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
], np.float32)
_FP4_THRESHOLDS = np.array(
    [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333], np.float32
)
_FP4_BY_MAGNITUDE = np.array([0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011], np.uint8)

DEFAULT_BLOCKSIZE = 64  # transformers always quantizes weights in blocks of 64
NESTED_BLOCKSIZE = 256  # quantize_blockwise(absmax, blocksize=256)
QUANT_TYPES = ("nf4", "fp4")
QUANT_STATE_PREFIX = "quant_state.bitsandbytes__"
TORCH_DTYPES = ("float16", "bfloat16", "float32")
# Suffixes under ``<module>.``; the quant_state one gets the quant type appended.
SUFFIX_WEIGHT = "weight"
SUFFIX_ABSMAX = "weight.absmax"
SUFFIX_QUANT_MAP = "weight.quant_map"
SUFFIX_NESTED_ABSMAX = "weight.nested_absmax"
SUFFIX_NESTED_QUANT_MAP = "weight.nested_quant_map"
SUFFIX_QUANT_STATE = "weight." + QUANT_STATE_PREFIX
# A float32 mean printed by float.__repr__ is 17-20 characters; used by
# predict_size where the real offset is unknown (changes the file by a few bytes).
TYPICAL_NESTED_OFFSET = 0.011892005056142807
SAFETENSORS_METADATA = {"format": "pt"}

# bitsandbytes create_dynamic_map(signed=True) (torch CPU float32 arithmetic),
# stored as little-endian float32 bytes: 127 negatives, 0, 127 positives, 1.0.
_DYNAMIC_MAP_HEX = (
    "33337ebf9a997abf000077bf666673bfcdcc6fbf33336cbf9a9968bf000065bf666661bfcdcc5dbf33335abf9a9956bf"
    "000053bf66664fbfcdcc4bbf333348bf9a9944bf000041bf66663dbfcdcc39bf343336bf9a9932bf00002fbf66662bbf"
    "cdcc27bf343324bf9a9920bf00001dbf666619bfcdcc15bf343312bf9a990ebf00000bbf666607bfcccc03bf333300bf"
    "3233f9be0000f2becccceabe9a99e3be6666dcbe3333d5be0000cebeccccc6be9a99bfbe6666b8be3333b1be0000aabe"
    "cccca2be9a999bbe666694be34338dbe000086be99997dbe33336fbecdcc60be666652be000044be9a9935be333327be"
    "cdcc18be66660abe0000f8bd3433dbbd85ebc9bdf728c4bd6766bebdd7a3b8bd48e1b2bdb81eadbd2a5ca7bd9a99a1bd"
    "0ad79bbd7b1496bdeb5190bd5d8f8abdcdcc84bd7b147ebd5d8f72bd3d0a67bd1f855bbd000050bde17a44bdc3f538bd"
    "a3702dbd85eb21bd676616bd48e10abd52b8febc15aee7bcd7a3d0bc9a99b9bc5d8fa2bc1f858bbcc3f568bc48e13abc"
    "643b1fbc180416bccdcc0cbc819503bc6abcf4bbd34de2bb3bdfcfbba470bdbb0d02abbb749398bbdd2486bb8a6c67bb"
    "5c8f42bb2db21dbbfca9f1ba9defa7baff6577ba3ee859ba806a3cbac1ec1eba016f01ba83e2c7b905e78cb90bd723b9"
    "4b1fbab8b3ef8ab8348037b80642b2b7ff0502b7941a5ab6b7a313b500000000b7a31335941a5a36ff0502370642b237"
    "34803738b3ef8a384b1fba380bd7233905e78c3983e2c739016f013ac1ec1e3a806a3c3a3ee8593aff65773a9defa73a"
    "fca9f13a2db21d3b5c8f423b8a6c673bdd24863b7493983b0d02ab3ba470bd3b3bdfcf3bd34de23b6abcf43b8195033c"
    "cdcc0c3c1804163c643b1f3c48e13a3cc3f5683c1f858b3c5d8fa23c9a99b93cd7a3d03c15aee73c52b8fe3c48e10a3d"
    "6766163d85eb213da3702d3dc3f5383de17a443d0000503d1f855b3d3d0a673d5d8f723d7b147e3dcdcc843d5d8f8a3d"
    "eb51903d7b14963d0ad79b3d9a99a13d2a5ca73db81ead3d48e1b23dd7a3b83d6766be3df728c43d85ebc93d3433db3d"
    "0000f83d66660a3ecdcc183e3333273e9a99353e0000443e6666523ecdcc603e33336f3e99997d3e0000863e34338d3e"
    "6666943e9a999b3ecccca23e0000aa3e3333b13e6666b83e9a99bf3eccccc63e0000ce3e3333d53e6666dc3e9a99e33e"
    "ccccea3e0000f23e3233f93e3333003fcccc033f6666073f00000b3f9a990e3f3433123fcdcc153f6666193f00001d3f"
    "9a99203f3433243fcdcc273f66662b3f00002f3f9a99323f3433363fcdcc393f66663d3f0000413f9a99443f3333483f"
    "cdcc4b3f66664f3f0000533f9a99563f33335a3fcdcc5d3f6666613f0000653f9a99683f33336c3fcdcc6f3f6666733f"
    "0000773f9a997a3f33337e3f0000803f"
)
DYNAMIC_MAP: np.ndarray = np.frombuffer(bytes.fromhex(_DYNAMIC_MAP_HEX), "<f4").copy()
DYNAMIC_MAP.setflags(write=False)


@dataclass
class Bnb4Linear:
    """One serialized bitsandbytes 4-bit linear (tensors as stored, numpy)."""

    name: str
    in_features: int
    out_features: int
    quant_type: str  # "nf4" | "fp4"
    blocksize: int
    dtype: str  # compute/original dtype named in the quant_state ("float16"...)
    weight: np.ndarray  # uint8 [(N*K+1)//2, 1]
    absmax: np.ndarray  # uint8 (double quant) or float32, [ceil(N*K/blocksize)]
    quant_map: np.ndarray  # float32 [16]
    nested_absmax: np.ndarray | None = None  # float32 [ceil(n_absmax/256)]
    nested_quant_map: np.ndarray | None = None  # float32 [256]
    nested_blocksize: int | None = None
    nested_offset: float | None = None
    bias: np.ndarray | None = None

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    def quant_state_json(self) -> dict[str, Any]:
        """The JSON bitsandbytes packs into ``weight.quant_state.bitsandbytes__<type>``."""
        doc: dict[str, Any] = {
            "quant_type": self.quant_type, "blocksize": self.blocksize, "dtype": self.dtype,
            "shape": [self.out_features, self.in_features],
        }
        if self.double_quant:
            doc.update(nested_blocksize=self.nested_blocksize, nested_dtype="float32", nested_offset=self.nested_offset)
        return doc

    def tensors(self) -> dict[str, np.ndarray]:
        """The state-dict entries transformers writes for this linear."""
        p = f"{self.name}."
        out = {p + SUFFIX_WEIGHT: self.weight, p + SUFFIX_ABSMAX: self.absmax, p + SUFFIX_QUANT_MAP: self.quant_map}
        if self.double_quant:
            out[p + SUFFIX_NESTED_ABSMAX] = self.nested_absmax  # type: ignore[assignment]
            out[p + SUFFIX_NESTED_QUANT_MAP] = self.nested_quant_map  # type: ignore[assignment]
        out[p + SUFFIX_QUANT_STATE + self.quant_type] = pack_json(self.quant_state_json())
        if self.bias is not None:
            out[p + "bias"] = self.bias
        return out


def pack_json(doc: dict[str, Any]) -> np.ndarray:
    """bitsandbytes ``pack_dict_to_tensor``: ``json.dumps`` bytes as a uint8 vector."""
    return np.frombuffer(json.dumps(doc).encode("utf-8"), np.uint8).copy()


def n_blocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


# -- quantize / dequantize -----------------------------------------------------
def _encode_4bit(scaled: np.ndarray, quant_type: str) -> np.ndarray:
    if quant_type == "nf4":
        codes = np.searchsorted(_NF4_THRESHOLDS, scaled, side="left").astype(np.uint8)
        codes[np.isnan(scaled)] = 0  # a 0/0 block: every comparison is false -> 0b0000
        return codes
    mag = np.searchsorted(_FP4_THRESHOLDS, np.abs(scaled), side="left")
    mag[np.isnan(scaled)] = 0
    return _FP4_BY_MAGNITUDE[mag] + np.where(scaled < 0, 8, 0).astype(np.uint8)


def _encode_dynamic(x: np.ndarray, code: np.ndarray = DYNAMIC_MAP) -> np.ndarray:
    """kernels.cu ``dQuantize<0>``: 7-step binary search over the 256-entry map, then nearest side."""
    pivot = np.full(x.shape, 127, np.int64)
    lo_p = np.zeros(x.shape, np.int64)
    up_p = np.full(x.shape, 255, np.int64)
    lo = np.full(x.shape, -1.0, np.float32)
    up = np.full(x.shape, 1.0, np.float32)
    val = code[pivot]
    for step in (64, 32, 16, 8, 4, 2, 1):
        gt = x > val
        lo_p, lo = np.where(gt, pivot, lo_p), np.where(gt, val, lo)
        up_p, up = np.where(gt, up_p, pivot), np.where(gt, up, val)
        pivot = np.where(gt, pivot + step, pivot - step)
        val = code[pivot]
    up = np.where(up_p == 255, code[255], up)
    lo = np.where(lo_p == 0, code[0], lo)
    half = np.float32(0.5)
    above = np.where(x > (up + val) * half, up_p, pivot)
    below = np.where(x < (lo + val) * half, lo_p, pivot)
    return np.where(x > val, above, below).astype(np.uint8)


def _block_absmax(flat: np.ndarray, blocksize: int) -> np.ndarray:
    pad = -flat.size % blocksize
    padded = np.concatenate([flat, np.zeros(pad, np.float32)]) if pad else flat
    return np.abs(padded.reshape(-1, blocksize)).max(axis=1).astype(np.float32)


def _scale(flat: np.ndarray, absmax: np.ndarray, blocksize: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.float32(1.0) / absmax  # the kernel multiplies by 1/absmax
        return (flat * np.repeat(inv, blocksize)[: flat.size]).astype(np.float32)


def quantize(weight: np.ndarray, quant_type: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE,
             double_quant: bool = True, name: str = "", dtype: str = "float16",
             bias: np.ndarray | None = None) -> Bnb4Linear:
    """Quantize a float [N, K] weight as bitsandbytes' CUDA ``quantize_4bit`` does."""
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, not {quant_type!r}")
    w = np.asarray(weight, np.float32)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {w.shape}")
    flat = w.reshape(-1)
    absmax = _block_absmax(flat, blocksize)
    codes = _encode_4bit(_scale(flat, absmax, blocksize), quant_type)
    if codes.size % 2:
        codes = np.concatenate([codes, np.zeros(1, np.uint8)])
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    lin = Bnb4Linear(name, w.shape[1], w.shape[0], quant_type, blocksize, dtype, packed, absmax,
                     np.array(CODE_BOOKS[quant_type], np.float32), bias=bias)
    if double_quant:
        offset = np.float32(absmax.astype(np.float64).mean())
        centred = (absmax - offset).astype(np.float32)
        nested = _block_absmax(centred, NESTED_BLOCKSIZE)
        lin.absmax = _encode_dynamic(_scale(centred, nested, NESTED_BLOCKSIZE))
        lin.nested_absmax, lin.nested_quant_map = nested, DYNAMIC_MAP.copy()
        lin.nested_blocksize, lin.nested_offset = NESTED_BLOCKSIZE, float(offset)
    return lin


def absmax_float(lin: Bnb4Linear) -> np.ndarray:
    """float32 per-block absmax, undoing double quantization when present."""
    if lin.nested_absmax is None:
        return np.asarray(lin.absmax, np.float32).reshape(-1)
    assert lin.nested_quant_map is not None and lin.nested_blocksize and lin.nested_offset is not None
    q = np.asarray(lin.absmax).reshape(-1).astype(np.int64)
    scale = np.repeat(np.asarray(lin.nested_absmax, np.float32), lin.nested_blocksize)[: q.size]
    return (np.asarray(lin.nested_quant_map, np.float32)[q] * scale + np.float32(lin.nested_offset)).astype(np.float32)


def unpack_codes(lin: Bnb4Linear) -> np.ndarray:
    """The 4-bit codes, one per element (high nibble first), length N*K."""
    b = np.asarray(lin.weight, np.uint8).reshape(-1)
    codes = np.empty(b.size * 2, np.uint8)
    codes[0::2], codes[1::2] = b >> 4, b & 0x0F
    return codes[: lin.out_features * lin.in_features]


def dequantize_linear(lin: Bnb4Linear) -> np.ndarray:
    """float32 [N, K] weight: ``quant_map[code] * absmax[block]``."""
    n = lin.out_features * lin.in_features
    values = np.asarray(lin.quant_map, np.float32)[unpack_codes(lin)]
    scale = np.repeat(absmax_float(lin), lin.blocksize)[:n]
    return (values * scale).astype(np.float32).reshape(lin.out_features, lin.in_features)


# -- reading a variant ----------------------------------------------------------
def _state_key(variant: Variant, module: str) -> tuple[str, str] | None:
    """(tensor name, quant type) of a module's quant_state tensor, if present."""
    for qt in QUANT_TYPES:
        key = f"{module}.{SUFFIX_QUANT_STATE}{qt}"
        if variant.has(key):
            return key, qt
    return None


def _module_name(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def quantized_linears(variant: Variant) -> list[str]:
    """Module names of every serialized 4-bit linear, in tensor-name order."""
    marker = "." + SUFFIX_QUANT_STATE
    return sorted({n.split(marker)[0] for n in variant.tensors if marker in n})


def _parse_state(variant: Variant, key: str) -> dict[str, Any]:
    raw = bytes(np.asarray(variant.read(key), np.uint8).reshape(-1))
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"quant_state is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("quant_state JSON is not an object")
    return doc


def load_linear(variant: Variant, name: str) -> Bnb4Linear:
    """Read one quantized linear (module name, with or without ``.weight``)."""
    module = _module_name(name)
    found = _state_key(variant, module)
    if found is None:
        raise UnusableInput(f"{module!r} is not a bitsandbytes 4-bit linear in this variant", variant.path)
    key, qt = found
    try:
        doc = _parse_state(variant, key)
        out_f, in_f = (int(d) for d in doc["shape"])
        blocksize = int(doc.get("blocksize", DEFAULT_BLOCKSIZE))
    except (ValueError, KeyError, TypeError) as exc:
        raise UnusableInput(f"{key}: unusable quant_state ({exc})", variant.path) from None
    p = f"{module}."
    lin = Bnb4Linear(
        module, in_f, out_f, qt, blocksize, str(doc.get("dtype", "float16")),
        _common.require(variant, p + SUFFIX_WEIGHT), _common.require(variant, p + SUFFIX_ABSMAX),
        _common.require(variant, p + SUFFIX_QUANT_MAP).astype(np.float32),
        bias=variant.read(p + "bias") if variant.has(p + "bias") else None,
    )
    if variant.has(p + SUFFIX_NESTED_ABSMAX):
        lin.nested_absmax = _common.require(variant, p + SUFFIX_NESTED_ABSMAX).astype(np.float32)
        lin.nested_quant_map = _common.require(variant, p + SUFFIX_NESTED_QUANT_MAP).astype(np.float32)
        lin.nested_blocksize = int(doc.get("nested_blocksize", NESTED_BLOCKSIZE))
        lin.nested_offset = float(doc.get("nested_offset", 0.0))
    return lin


def dequantize(variant: Variant, name: str) -> np.ndarray:
    """float32 [out, in] weight of a quantized linear; other tensors are read as float32."""
    if _state_key(variant, _module_name(name)) is None:
        tensor = name if variant.has(name) else f"{name}.weight"
        return _common.require(variant, tensor).astype(np.float32)
    return dequantize_linear(load_linear(variant, name))


# -- config ------------------------------------------------------------------------
def _quant_config(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    qc = (cfg or {}).get("quantization_config")
    return qc if isinstance(qc, dict) and qc.get("quant_method") == "bitsandbytes" else None


def detect(variant: Variant) -> bool:
    if _quant_config(variant.config("config.json")) is not None:
        return True
    marker = "." + SUFFIX_QUANT_STATE
    return any(marker in n for n in variant.tensors)


def _linear_entries(lin: Linear, qt: str, dq: bool, dtype: str, qs_len: int,
                    blocksize: int = DEFAULT_BLOCKSIZE) -> _common.Expected:
    """Expected tensors of one quantized linear (name -> (dtypes, shape))."""
    n = lin.out_features * lin.in_features
    blocks = n_blocks(n, blocksize)
    p = f"{lin.name}."
    out: _common.Expected = {
        p + SUFFIX_WEIGHT: (("U8",), ((n + 1) // 2, 1)),
        p + SUFFIX_ABSMAX: (("U8",) if dq else ("F32",), (blocks,)),
        p + SUFFIX_QUANT_MAP: (("F32",), (16,)),
    }
    if dq:
        out[p + SUFFIX_NESTED_ABSMAX] = (("F32",), (n_blocks(blocks, NESTED_BLOCKSIZE),))
        out[p + SUFFIX_NESTED_QUANT_MAP] = (("F32",), (256,))
    out[p + SUFFIX_QUANT_STATE + qt] = (("U8",), (qs_len,))
    if lin.bias:
        out[p + "bias"] = ((dtype, *(d for d in _common.FLOAT_DTYPES if d != dtype)), (lin.out_features,))
    return out


def _state_len(lin: Linear, qt: str, dq: bool, torch_dtype: str, offset: float = TYPICAL_NESTED_OFFSET) -> int:
    doc: dict[str, Any] = {"quant_type": qt, "blocksize": DEFAULT_BLOCKSIZE, "dtype": torch_dtype,
                           "shape": [lin.out_features, lin.in_features]}
    if dq:
        doc.update(nested_blocksize=NESTED_BLOCKSIZE, nested_dtype="float32", nested_offset=offset)
    return len(pack_json(doc))


def _fp_entries(shape: ModelShape, dtype: str) -> _common.Expected:
    others = tuple(d for d in _common.FLOAT_DTYPES if d != dtype)
    return {n: ((dtype, *others), dims) for n, dims in shape.other_tensors().items()}


# -- validate ------------------------------------------------------------------------
def _read_small(variant: Variant, name: str) -> np.ndarray | None:
    try:
        return variant.read(name) if variant.has(name) else None
    except UnusableInput:  # bad offsets: reported by the layout checks
        return None


def _check_state(variant: Variant, report: Report, key: str, lin: Linear, qt: str, cfg_qt: str | None, dq: bool) -> None:
    """quant_state JSON: parses, and agrees with the key, the config and the linear's shape."""
    rel = variant.tensors[key][0]
    try:
        raw = _read_small(variant, key)
        if raw is None:
            return
        doc = _parse_state(variant, key)
    except ValueError as exc:
        report.error("bad-quant-state", rel, key, str(exc))
        return
    problems = []
    if doc.get("quant_type") != qt:
        problems.append(f"quant_type {doc.get('quant_type')!r} but the tensor is named for {qt}")
    if cfg_qt is not None and qt != cfg_qt:
        problems.append(f"quant_type {qt} but config.json says bnb_4bit_quant_type {cfg_qt}")
    if doc.get("blocksize") != DEFAULT_BLOCKSIZE:
        problems.append(f"blocksize {doc.get('blocksize')!r}, expected {DEFAULT_BLOCKSIZE}")
    if doc.get("shape") != [lin.out_features, lin.in_features]:
        problems.append(f"shape {doc.get('shape')!r}, expected {[lin.out_features, lin.in_features]}")
    if doc.get("dtype") not in TORCH_DTYPES:
        problems.append(f"dtype {doc.get('dtype')!r} is not one of {', '.join(TORCH_DTYPES)}")
    if dq:
        if doc.get("nested_blocksize") != NESTED_BLOCKSIZE:
            problems.append(f"nested_blocksize {doc.get('nested_blocksize')!r}, expected {NESTED_BLOCKSIZE}")
        off = doc.get("nested_offset")
        if not isinstance(off, (int, float)) or isinstance(off, bool) or not math.isfinite(off):
            problems.append(f"nested_offset {off!r} is not a finite number")
    elif any(k.startswith("nested_") for k in doc):
        problems.append("nested_* fields present but there are no nested_absmax tensors")
    for message in problems:
        report.error("bad-quant-state", rel, key, message)


def _check_code_books(variant: Variant, report: Report, module: str, qt: str, dq: bool) -> None:
    name = f"{module}.{SUFFIX_QUANT_MAP}"
    qmap = _read_small(variant, name)
    if qmap is not None and qmap.shape == (16,):
        if not np.array_equal(qmap.astype(np.float32), np.array(CODE_BOOKS[qt], np.float32)):
            report.error("bad-code-book", variant.tensors[name][0], name, f"quant_map is not the {qt.upper()} code book")
    name = f"{module}.{SUFFIX_NESTED_QUANT_MAP}"
    nmap = _read_small(variant, name) if dq else None
    if nmap is not None and nmap.shape == (256,):
        if not np.allclose(nmap.astype(np.float32), DYNAMIC_MAP, rtol=0, atol=1e-6):
            report.error("bad-code-book", variant.tensors[name][0], name, "nested_quant_map is not bitsandbytes' dynamic map")


def check(variant: Variant, report: Report) -> None:
    report.format = NAME
    cfg = variant.config("config.json")
    qc = _quant_config(cfg)
    report.config_source = "config.json" if qc is not None else None
    cfg_qt: str | None = None
    cfg_dq: bool | None = None
    if qc is None:
        report.warning("no-quant-config", "config.json", "quantization_config",
                       "no bitsandbytes quantization_config: transformers will not load these tensors as 4-bit")
    else:
        if qc.get("load_in_8bit") and not qc.get("load_in_4bit"):
            report.error("unsupported-mode", "config.json", "quantization_config.load_in_8bit",
                         "bitsandbytes 8-bit (LLM.int8) checkpoints are not checked by mcard")
            return
        cfg_qt = str(qc.get("bnb_4bit_quant_type", "fp4"))  # BitsAndBytesConfig defaults
        cfg_dq = bool(qc.get("bnb_4bit_use_double_quant", False))
        if cfg_qt not in QUANT_TYPES:
            report.error("bad-quant-config", "config.json", "quantization_config.bnb_4bit_quant_type",
                         f"{cfg_qt!r} is not one of {', '.join(QUANT_TYPES)}")
            cfg_qt = None
    compute = str((qc or {}).get("bnb_4bit_compute_dtype") or "float32")
    dtype = _common.linear_weight_dtype(cfg)
    shape = _common.model_shape(variant, report) if cfg is not None else None
    if shape is None:  # consistency only: shapes come from each quant_state
        linears = []
        for module in quantized_linears(variant):
            try:
                lin4 = load_linear(variant, module)
            except UnusableInput as exc:
                report.error("bad-quant-state", "", module, exc.message)
                continue
            linears.append(Linear(module, -1, module.rsplit(".", 1)[-1], lin4.in_features, lin4.out_features))
    else:
        linears = shape.linears()
    expected: _common.Expected = _fp_entries(shape, dtype) if shape is not None else {}
    seen_qt: set[str] = set()
    dq_mismatch: list[str] = []
    for lin in linears:
        found = _state_key(variant, lin.name)
        qt = found[1] if found else (cfg_qt or "nf4")
        seen_qt.add(qt)
        dq = variant.has(f"{lin.name}.{SUFFIX_NESTED_ABSMAX}") or variant.has(f"{lin.name}.{SUFFIX_NESTED_QUANT_MAP}")
        if found is None and cfg_dq is not None:
            dq = cfg_dq
        if cfg_dq is not None and dq != cfg_dq:
            dq_mismatch.append(lin.name)
        qs_len = variant.tensors[found[0]][1].shape[0] if found and len(variant.tensors[found[0]][1].shape) == 1 else 0
        expected.update(_linear_entries(lin, qt, dq, dtype, qs_len or _state_len(lin, qt, dq, compute)))
        if found:
            _check_state(variant, report, found[0], lin, qt, cfg_qt, dq)
        _check_code_books(variant, report, lin.name, qt, dq)
    if dq_mismatch:
        said = "uses" if cfg_dq else "does not use"
        report.error("config-mismatch", "config.json", "quantization_config.bnb_4bit_use_double_quant",
                     f"config {said} double quantization but {len(dq_mismatch)} linear(s) disagree, "
                     f"first {dq_mismatch[0]}")
    report.params = {"quant_type": cfg_qt or ",".join(sorted(seen_qt)) or None, "double_quant": cfg_dq,
                     "compute_dtype": compute, "blocksize": DEFAULT_BLOCKSIZE, "linears": len(linears)}
    if shape is not None:
        _common.check_tensor_set(variant, report, expected, ignore=lambda n: n.endswith(".rotary_emb.inv_freq"))
        if len(variant.headers) == 1:
            predicted = _common.predicted_file_bytes({n: (d[0], s) for n, (d, s) in expected.items()}, SAFETENSORS_METADATA)
            _common.check_predicted_size(report, variant, predicted)
        else:
            report.predicted_bytes = predict_size(shape, quant_type=cfg_qt or "nf4", double_quant=bool(cfg_dq),
                                                  dtype=dtype, compute_dtype=compute).total_bytes
    report.runtimes = runtimes(cfg_qt or "nf4", bool(cfg_dq))


def runtimes(quant_type: str = "nf4", double_quant: bool = True) -> list[Runtime]:
    """Who loads a serialized bnb 4-bit checkpoint, by their published requirements."""
    return [
        Runtime("transformers+bitsandbytes (CUDA)", True,
                f"{quant_type} 4-bit serialization needs transformers>=4.37 and bitsandbytes>=0.41.3"),
        Runtime("transformers+bitsandbytes (multi-backend: CPU, ROCm, XPU)", True,
                "bitsandbytes>=0.45 backends; slower than CUDA"),
        Runtime("vLLM", True, "quantization='bitsandbytes' loads pre-quantized 4-bit checkpoints"),
        Runtime("llama.cpp", False, "cannot convert bnb 4-bit tensors; dequantize to fp16, then convert to GGUF"),
    ]


# -- sizes and builders --------------------------------------------------------------
def predict_size(shape: ModelShape, quant_type: str = "nf4", double_quant: bool = True,
                 blocksize: int = DEFAULT_BLOCKSIZE, dtype: str = "F16", compute_dtype: str = "float16",
                 **_: Any) -> SizeEstimate:
    """Size of a transformers ``save_pretrained`` single-file bnb 4-bit checkpoint.

    Exact except for each quant_state's ``nested_offset`` digits (a few bytes a linear).
    """
    quant_type, dtype = quant_type.lower(), dtype.upper()
    if quant_type not in QUANT_TYPES:
        raise UnusableInput(f"bnb quant_type must be nf4 or fp4, not {quant_type!r}")
    entries: _common.Expected = _fp_entries(shape, dtype)
    for lin in shape.linears():
        entries.update(_linear_entries(lin, quant_type, double_quant, dtype,
                                       _state_len(lin, quant_type, double_quant, compute_dtype), blocksize))
    kinds = ((".weight.nested_", "nested"), (".weight.quant_state.", "quant_state"), (".weight.absmax", "absmax"),
             (".weight.quant_map", "quant_map"), ("embed_tokens", "embeddings"), ("lm_head", "lm_head"),
             ("norm", "norms"), (".bias", "bias"))
    parts = {k: 0 for _s, k in kinds} | {"linears": 0}
    tensors = []
    from ..safetensors_io import DTYPE_BYTES

    for name, (dts, dims) in entries.items():
        nbytes = DTYPE_BYTES[dts[0]] * math.prod(dims)
        kind = next((k for s, k in kinds if s in name), "linears")
        parts[kind] += nbytes
        tensors.append((name, dts[0], nbytes))
    total = _common.predicted_file_bytes({n: (d[0], s) for n, (d, s) in entries.items()}, SAFETENSORS_METADATA)
    parts["header"] = total - sum(parts.values())
    params = {"quant_type": quant_type, "double_quant": double_quant, "blocksize": blocksize, "dtype": dtype}
    return SizeEstimate(NAME, params, total, parts, tensors)


def write_variant(folder: str | Path, config: dict[str, Any], quant_type: str = "nf4",
                  double_quant: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a format-exact bnb 4-bit checkpoint for ``config`` (random weights).

    Returns the float32 weights before quantization, by tensor name
    (``<module>.weight`` for quantized linears).
    """
    folder = Path(folder)
    shape = ModelShape.from_config(config)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    originals: dict[str, np.ndarray] = {}
    for name, dims in shape.other_tensors().items():
        base = np.ones(dims, np.float32) if "norm" in name else _common.rng_normal(rng, dims)
        tensors[name] = base.astype(np.float16)
        originals[name] = tensors[name].astype(np.float32)
    for lin in shape.linears():
        w = _common.rng_normal(rng, (lin.out_features, lin.in_features)).astype(np.float16).astype(np.float32)
        bias = _common.rng_normal(rng, (lin.out_features,)).astype(np.float16) if lin.bias else None
        originals[f"{lin.name}.weight"] = w
        tensors.update(quantize(w, quant_type, DEFAULT_BLOCKSIZE, double_quant, lin.name, "float16", bias).tensors())
    qc = {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
        "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_storage": "uint8",
        "llm_int8_threshold": 6.0, "llm_int8_skip_modules": None,
        "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
    }
    _common.write_config(folder, "config.json", dict(config, torch_dtype="float16", quantization_config=qc))
    from ..safetensors_io import write

    write(folder / "model.safetensors", tensors, SAFETENSORS_METADATA)
    return originals


__all__ = [
    "NAME", "NF4_CODE", "FP4_CODE", "DYNAMIC_MAP", "Bnb4Linear", "detect", "check", "quantized_linears",
    "load_linear", "absmax_float", "dequantize_linear", "dequantize", "quantize", "predict_size",
    "write_variant", "runtimes", "unpack_codes", "pack_json",
]
