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
Embeddings, norms and ``lm_head`` stay in the model's dtype (``config.json``
``dtype``/``torch_dtype``), and so do the linears ``llm_int8_skip_modules``
names (transformers ``should_convert_module``: a pattern matching the module
name from its start up to a ``.`` boundary, as a regex, or as a suffix).
``bnb_4bit_quant_storage`` (``uint8`` by default; ``float16``, ``bfloat16``,
``float32``...) changes only how the packed weight is typed: the same bytes as
``[(n+1) // (2*itemsize), 1]`` of that dtype (bitsandbytes ``quantize_4bit``).

The code books, :class:`Bnb4Linear` and the quantize/dequantize math live in
:mod:`._bnb_quant`; this module re-exports them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ...core import untrusted
from ...core.arch import Linear, ModelShape
from ...core.errors import UnusableInput
from ...core.report import Report, Runtime
from ...core.safetensors_io import DTYPE_BYTES
from ...core.size import SizeEstimate
from ...core.variant import Variant
from .. import common as _common, params as _params
from .quant import (
    DEFAULT_BLOCKSIZE,
    DYNAMIC_MAP,
    FP4_CODE,
    NESTED_BLOCKSIZE,
    NF4_CODE,
    QUANT_TYPES,
    SUFFIX_ABSMAX,
    SUFFIX_NESTED_ABSMAX,
    SUFFIX_NESTED_QUANT_MAP,
    SUFFIX_QUANT_MAP,
    SUFFIX_QUANT_STATE,
    SUFFIX_WEIGHT,
    Bnb4Linear,
    absmax_float,
    dequantize_linear,
    n_blocks,
    pack_json,
    quantize,
    unpack_codes,
)

NAME = "bnb"
# Tensors whose values `check` reads (code books, quant_state JSON); `validate REPO` fetches only these.
VALIDATE_READS = ("." + SUFFIX_QUANT_MAP, "." + SUFFIX_NESTED_QUANT_MAP,
                  *("." + SUFFIX_QUANT_STATE + qt for qt in QUANT_TYPES))

TORCH_DTYPES = ("float16", "bfloat16", "float32")
# bnb_4bit_quant_storage -> the packed weight's safetensors dtype
STORAGE_DTYPES = {"uint8": "U8", "int8": "I8", "float16": "F16", "bfloat16": "BF16", "float32": "F32",
                  "int32": "I32", "float64": "F64", "int16": "I16", "uint16": "U16"}
# A float32 mean printed by float.__repr__ is 17-20 characters; used by
# predict_size where the real offset is unknown (changes the file by a few bytes).
TYPICAL_NESTED_OFFSET = 0.011892005056142807
SAFETENSORS_METADATA = {"format": "pt"}
# What `mcard size --format nf4|fp4` and a registry variant may set (the quant type is the format's name).
PARAMS = {"double_quant": _params.Param("bool")}


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
        _packed_bytes(variant, p + SUFFIX_WEIGHT), _common.require(variant, p + SUFFIX_ABSMAX),
        _common.require(variant, p + SUFFIX_QUANT_MAP).astype(np.float32),
        bias=variant.read(p + "bias") if variant.has(p + "bias") else None,
    )
    if variant.has(p + SUFFIX_NESTED_ABSMAX):
        lin.nested_absmax = _common.require(variant, p + SUFFIX_NESTED_ABSMAX).astype(np.float32)
        lin.nested_quant_map = _common.require(variant, p + SUFFIX_NESTED_QUANT_MAP).astype(np.float32)
        lin.nested_blocksize = int(doc.get("nested_blocksize", NESTED_BLOCKSIZE))
        lin.nested_offset = float(doc.get("nested_offset", 0.0))
    return lin


def _packed_bytes(variant: Variant, name: str) -> np.ndarray:
    """The packed 4-bit weight as uint8 [bytes, 1], whatever bnb_4bit_quant_storage typed it as."""
    arr = _common.require(variant, name)
    if variant.tensors[name][1].dtype == "BF16":  # read back as float32: its upper half is the stored bfloat16
        arr = (np.ascontiguousarray(arr, np.float32).view(np.uint32) >> 16).astype("<u2")
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(-1, 1)


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
                    blocksize: int = DEFAULT_BLOCKSIZE, storage: str = "U8") -> _common.Expected:
    """Expected tensors of one quantized linear (name -> (dtypes, shape)); ``storage``: the packed weight's dtype."""
    n = lin.out_features * lin.in_features
    blocks = n_blocks(n, blocksize)
    p = f"{lin.name}."
    out: _common.Expected = {
        p + SUFFIX_WEIGHT: ((storage,), ((n + 1) // (2 * DTYPE_BYTES[storage]), 1)),
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


def skipped(module: str, patterns: list[str] | None) -> bool:
    """transformers ``should_convert_module`` inverted: whether ``llm_int8_skip_modules`` keeps ``module`` unquantized."""
    for key in patterns or []:
        if module.endswith(key):
            return True
        pattern = rf"(?:{key})(?:(?<=\.)|(?=\.|$))"
        try:
            untrusted.compile_pattern(pattern)
        except untrusted.PatternError:
            continue  # not a usable regex: the suffix rule alone
        if untrusted.match(pattern, module):  # a pattern from a file: bounded in time (PatternError when over)
            return True
    return False


def _skip_list(qc: dict[str, Any] | None) -> list[str]:
    skip = (qc or {}).get("llm_int8_skip_modules")
    return [k for k in skip if isinstance(k, str)] if isinstance(skip, list) else []


def _storage(qc: dict[str, Any] | None) -> str:
    name = str((qc or {}).get("bnb_4bit_quant_storage") or "uint8").replace("torch.", "")
    return STORAGE_DTYPES.get(name, "U8")


def _kept_linear_entries(lin: Linear, dtype: str) -> _common.Expected:
    """A linear llm_int8_skip_modules kept in the model's dtype."""
    allowed = (dtype, *(d for d in _common.FLOAT_DTYPES if d != dtype))
    out: _common.Expected = {f"{lin.name}.weight": (allowed, (lin.out_features, lin.in_features))}
    if lin.bias:
        out[f"{lin.name}.bias"] = (allowed, (lin.out_features,))
    return out


def _fp_entries(shape: ModelShape, dtype: str) -> _common.Expected:
    others = tuple(d for d in _common.FLOAT_DTYPES if d != dtype)
    return {n: ((dtype, *others), dims) for n, dims in shape.other_tensors().items()}


# -- validate ------------------------------------------------------------------------


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
                 blocksize: int = DEFAULT_BLOCKSIZE, dtype: str | None = None, compute_dtype: str = "float16",
                 skip_modules: list[str] | None = None, quant_storage: str = "U8",
                 config_doc: dict[str, Any] | None = None, **_: Any) -> SizeEstimate:
    """Size of a transformers ``save_pretrained`` single-file bnb 4-bit checkpoint.

    ``dtype``: the unquantized parts' dtype (default: ``config.json``'s ``dtype``/``torch_dtype``,
    else F16); ``skip_modules``: ``llm_int8_skip_modules``; ``quant_storage``: the packed
    weights' dtype (``U8``, ``BF16``...). Exact except for each quant_state's
    ``nested_offset`` digits (a few bytes a linear).
    """
    quant_type = quant_type.lower()
    dtype = (dtype or (_common.linear_weight_dtype(config_doc) if config_doc else "F16")).upper()
    quant_storage = STORAGE_DTYPES.get(quant_storage.lower().replace("torch.", ""), quant_storage.upper())
    if quant_type not in QUANT_TYPES:
        raise UnusableInput(f"bnb quant_type must be nf4 or fp4, not {quant_type!r}")
    if quant_storage not in DTYPE_BYTES:
        raise UnusableInput(f"bnb quant_storage {quant_storage!r} is not a tensor dtype")
    entries: _common.Expected = _fp_entries(shape, dtype)
    for lin in shape.linears():
        if skipped(lin.name, skip_modules):
            entries.update(_kept_linear_entries(lin, dtype))
            continue
        entries.update(_linear_entries(lin, quant_type, double_quant, dtype,
                                       _state_len(lin, quant_type, double_quant, compute_dtype), blocksize, quant_storage))
    kinds = ((".weight.nested_", "nested"), (".weight.quant_state.", "quant_state"), (".weight.absmax", "absmax"),
             (".weight.quant_map", "quant_map"), ("embed_tokens", "embeddings"), ("lm_head", "lm_head"),
             ("norm", "norms"), (".bias", "bias"))
    parts = {k: 0 for _s, k in kinds} | {"linears": 0}
    tensors = []
    for name, (dts, dims) in entries.items():
        nbytes = DTYPE_BYTES[dts[0]] * math.prod(dims)
        kind = next((k for s, k in kinds if s in name), "linears")
        parts[kind] += nbytes
        tensors.append((name, dts[0], nbytes))
    total = _common.predicted_file_bytes({n: (d[0], s) for n, (d, s) in entries.items()}, SAFETENSORS_METADATA)
    parts["header"] = total - sum(parts.values())
    params = {"quant_type": quant_type, "double_quant": double_quant, "blocksize": blocksize, "dtype": dtype}
    if skip_modules:
        params["skip_modules"] = list(skip_modules)
    if quant_storage != "U8":
        params["quant_storage"] = quant_storage
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
    tensors: dict[str, np.ndarray] = _common.random_fp_tensors(shape, rng)
    originals: dict[str, np.ndarray] = {name: t.astype(np.float32) for name, t in tensors.items()}
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
    from ...core.safetensors_io import write

    write(folder / "model.safetensors", tensors, SAFETENSORS_METADATA)
    return originals


__all__ = [
    "NAME", "NF4_CODE", "FP4_CODE", "DYNAMIC_MAP", "Bnb4Linear", "detect", "check", "quantized_linears",
    "load_linear", "absmax_float", "dequantize_linear", "dequantize", "quantize", "predict_size",
    "write_variant", "runtimes", "unpack_codes", "pack_json",
]


def check(variant: Variant, report: Report) -> None:
    """validate for this format: see :mod:`.checks`."""
    from . import checks

    checks.check(variant, report)
