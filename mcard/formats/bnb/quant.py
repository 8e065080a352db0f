"""bitsandbytes 4-bit code books and the quantize/dequantize math of one linear.

Private to :mod:`mcard.formats.bnb` (which re-exports the public names): the
NF4/FP4 code books and the CUDA quantizer's decision trees, the 256-entry
dynamic map of double quantization, :class:`Bnb4Linear` (one serialized
linear's tensors) and ``quantize``/``dequantize_linear``, which need no files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

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
# Suffixes under ``<module>.``; the quant_state one gets the quant type appended.
SUFFIX_WEIGHT = "weight"
SUFFIX_ABSMAX = "weight.absmax"
SUFFIX_QUANT_MAP = "weight.quant_map"
SUFFIX_NESTED_ABSMAX = "weight.nested_absmax"
SUFFIX_NESTED_QUANT_MAP = "weight.nested_quant_map"
SUFFIX_QUANT_STATE = "weight." + QUANT_STATE_PREFIX

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
            assert self.nested_absmax is not None and self.nested_quant_map is not None  # double quant keeps both
            out[p + SUFFIX_NESTED_ABSMAX] = self.nested_absmax
            out[p + SUFFIX_NESTED_QUANT_MAP] = self.nested_quant_map
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
