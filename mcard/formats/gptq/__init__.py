"""GPTQ checkpoints (AutoGPTQ, GPTQ-for-LLaMa, GPTQModel), safetensors only.

Layout facts (AutoGPTQ ``qlinear_cuda.py``, GPTQModel ``model_dequant.py``), per
linear with K inputs, N outputs, b bits and G = ceil(K/g) groups:
``qweight`` I32 [K/32*b, N] packed along K; ``qzeros`` I32 [G, N/32*b] packed
along N; ``scales`` F16 [G, N]; ``g_idx`` I32 [K]; optional ``bias`` F16 [N].
``W[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n])``; the v1 format
stores z - 1, ``checkpoint_format: gptq_v2`` stores z. Validation reads headers,
configs, g_idx and qzeros; never qweight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.arch import Linear, ModelShape
from ...core.errors import UnusableInput
from ...core.report import Report, Runtime
from ...core.size import SizeEstimate
from ...core.variant import Variant
from .. import common as _common, params as _params
from ..packing import MARLIN_GROUPS, groups_of, pack_cols, pack_rows, unpack_cols, unpack_rows, valid_group_size
from . import config as _gptq_config
from .config import read_quant_config

NAME = "gptq"
SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx", ".bias")
# Tensors whose values `check` reads (_gptq_check._per_linear); `validate REPO` fetches only these.
VALIDATE_READS = (".g_idx", ".qzeros")
V1, V2 = _gptq_config.V1, _gptq_config.V2
MARLIN_BITS = (4, 8)
MACHETE_GROUPS = (-1, 128)  # vLLM machete_utils.MACHETE_SUPPORTED_GROUP_SIZES
EXLLAMA_BITS = 4
WEIGHTS_FILE = "gptq_model-{bits}bit-{group_size}g.safetensors"  # AutoGPTQ's default name
# The writers' differences that change a checkpoint's size: AutoGPTQ stores a bias for every
# linear (zeros where the model has none) and lets the safetensors library order the data;
# GPTQModel (7.x) stores no bias a model does not have and writes the float tensors first
# (embeddings, norms, lm_head), then each linear's g_idx, scales, qweight, qzeros in module order.
WRITERS = ("autogptq", "gptqmodel")
_GPTQMODEL_SUFFIXES = (".g_idx", ".scales", ".qweight", ".qzeros", ".bias")
METADATA = {"format": "pt"}
_IGNORABLE = (".rotary_emb.inv_freq",)
# What `mcard size --format gptq` and a registry variant may set, and the values each can take.
PARAMS = {
    "bits": _params.choice(_gptq_config.VALID_BITS),
    "group_size": _params.group_size(valid_group_size),
    "desc_act": _params.Param("bool"),
    "sym": _params.Param("bool"),
    "checkpoint_format": _params.choice(_gptq_config.CHECKPOINT_FORMATS, normalize=str.lower, sizes=False),
    "damp_percent": _params.Param("number", "strictly between 0 and 1", _gptq_config.valid_damp, sizes=False),
    "writer": _params.choice(WRITERS, normalize=str.lower),  # the layout: AutoGPTQ's bias on every linear or not
}


@dataclass
class GptqLinear:
    """One GPTQ-quantized linear as stored on disk."""

    name: str
    in_features: int
    out_features: int
    bits: int
    group_size: int  # as declared (-1 allowed)
    sym: bool
    desc_act: bool
    checkpoint_format: str  # "gptq" (v1, zeros stored minus one) or "gptq_v2"
    qweight: np.ndarray  # int32 [K*b/32, N]
    qzeros: np.ndarray  # int32 [G, N*b/32]
    scales: np.ndarray  # float16 [G, N]
    g_idx: np.ndarray  # int32 [K]
    bias: np.ndarray | None  # float16 [N]


def tensor_shapes(k: int, n: int, bits: int, group_size: int) -> dict[str, tuple[int, ...]]:
    """Suffix -> shape of one linear's tensors, as AutoGPTQ allocates them."""
    _g, groups = groups_of(k, group_size)
    return {
        ".qweight": (k // 32 * bits, n),
        ".qzeros": (groups, n // 32 * bits),
        ".scales": (groups, n),
        ".g_idx": (k,),
        ".bias": (n,),
    }


_DTYPES = {".qweight": "I32", ".qzeros": "I32", ".scales": "F16", ".g_idx": "I32", ".bias": "F16"}


# -- detection and reading ------------------------------------------------------
def detect(variant: Variant) -> bool:
    if "quantize_config.json" in variant.files:
        return True
    try:
        qc = (variant.config("config.json") or {}).get("quantization_config")
    except Exception:  # noqa: BLE001 - a broken config.json is another module's finding
        qc = None
    if isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "gptq":
        return True
    names = variant.tensors
    return any(n.endswith(".qweight") and n[: -len(".qweight")] + ".g_idx" in names for n in names)


def quantized_linears(variant: Variant) -> list[str]:
    """Module names that have a ``.qweight`` tensor, in file order."""
    return [n[: -len(".qweight")] for n in variant.tensors if n.endswith(".qweight")]


def load_linear(variant: Variant, name: str) -> GptqLinear:
    """Read one linear's tensors and its parameters (config first, tensors where it is silent).

    Raises :class:`UnusableInput` when the config or the tensors' shapes cannot describe a GPTQ linear.
    """
    params, _src, _f = read_quant_config(variant)
    qweight = _common.require(variant, f"{name}.qweight")
    qzeros = _common.require(variant, f"{name}.qzeros")
    scales = _common.require(variant, f"{name}.scales")
    if qweight.ndim != 2 or qzeros.ndim != 2 or scales.ndim != 2 or 0 in scales.shape:
        raise UnusableInput(
            f"cannot dequantize {name}: qweight {list(qweight.shape)}, qzeros {list(qzeros.shape)} and scales "
            f"{list(scales.shape)} are not a GPTQ linear's 2-D tensors", variant.path)
    n = int(scales.shape[1])
    bits = params.get("bits") or qzeros.shape[1] * 32 // n
    group_size = params.get("group_size", -1)
    if not _gptq_config.params_ok({"bits": bits, "group_size": group_size}):
        raise UnusableInput(f"cannot dequantize {name}: bits {bits!r} / group_size {group_size!r} are not usable",
                            variant.path)
    k = qweight.shape[0] * 32 // bits
    g_idx = variant.read(f"{name}.g_idx") if variant.has(f"{name}.g_idx") else None
    if k == 0 or k * bits % 32 or n * bits % 32:
        raise UnusableInput(f"cannot dequantize {name}: qweight {list(qweight.shape)} and scales "
                            f"{list(scales.shape)} are not whole {bits}-bit words", variant.path)
    if g_idx is None:
        g_idx = (np.arange(k) // groups_of(k, group_size)[0]).astype(np.int32)
    bias = variant.read(f"{name}.bias") if variant.has(f"{name}.bias") else None
    want = tensor_shapes(k, n, bits, group_size)
    have = {".qweight": qweight.shape, ".qzeros": qzeros.shape, ".scales": scales.shape, ".g_idx": g_idx.shape}
    if bias is not None:
        have[".bias"] = bias.shape
    bad = _common.shape_mismatches(have, want)
    if bad:
        raise UnusableInput(f"cannot dequantize {name} at {bits} bits, group_size {group_size}: "
                            f"inconsistent shapes: {', '.join(bad)}", variant.path)
    groups = want[".scales"][0]
    if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= groups):
        raise UnusableInput(f"cannot dequantize {name}: g_idx values outside [0, {groups})", variant.path)
    return GptqLinear(
        name, k, n, bits, group_size, bool(params.get("sym", True)), bool(params.get("desc_act", False)),
        str(params.get("checkpoint_format", V1)), qweight, qzeros, scales, g_idx.astype(np.int32), bias,
    )


# -- packing and dequantization -------------------------------------------------
def unpack_qweight(qweight: np.ndarray, bits: int) -> np.ndarray:
    """int32 [K*b/32, N] -> int32 [K, N] of values 0..2^b-1 (3-bit straddling layout handled)."""
    return unpack_rows(qweight, bits)


def unpack_qzeros(qzeros: np.ndarray, bits: int, n: int) -> np.ndarray:
    """int32 [G, N*b/32] -> the stored zero values [G, N] (v1: true zero minus one)."""
    return unpack_cols(qzeros, bits)[:, :n]


def true_zeros(lin: GptqLinear) -> np.ndarray:
    """[G, N] zero points: v1 stores z - 1 (read back modulo 2^b), v2 stores z."""
    stored = unpack_qzeros(lin.qzeros, lin.bits, lin.out_features)
    if lin.checkpoint_format == V2:
        return stored
    return (stored + 1) % (1 << lin.bits)


def dequantize_linear(lin: GptqLinear) -> np.ndarray:
    """float32 [N, K] (``nn.Linear.weight`` orientation)."""
    q = unpack_qweight(lin.qweight, lin.bits).astype(np.float32)  # [K, N]
    z = true_zeros(lin).astype(np.float32)[lin.g_idx]
    s = lin.scales.astype(np.float32)[lin.g_idx]
    return np.ascontiguousarray((s * (q - z)).T)


def dequantize(variant: Variant, name: str) -> np.ndarray:
    name = _common.linear_name(name, SUFFIXES)
    return dequantize_linear(load_linear(variant, name))


def quantize(
    weight: np.ndarray, bits: int = 4, group_size: int = 128, desc_act: bool = False, sym: bool = True,
    checkpoint_format: str = V1, bias: np.ndarray | None = None, name: str = "",
    rng: np.random.Generator | None = None,
) -> GptqLinear:
    """Round-to-nearest GPTQ quantization of ``weight`` [N, K] into the exact on-disk layout.

    Per group (AutoGPTQ's ``Quantizer``): the range includes 0; sym uses
    z = 2^(b-1) and a range symmetric around 0; scales are rounded to fp16
    before the codes are computed, so dequantization reproduces them. With
    ``desc_act`` the columns are visited in a seeded random order and
    ``g_idx[k] = invperm[k] // g``.
    """
    w = np.asarray(weight, dtype=np.float32)
    n, k = w.shape
    g, groups = groups_of(k, group_size)
    maxq = (1 << bits) - 1
    perm = (rng or np.random.default_rng(0)).permutation(k) if desc_act else np.arange(k)
    g_idx = (np.argsort(perm) // g).astype(np.int32)
    scales = np.empty((groups, n), np.float16)
    zeros = np.empty((groups, n), np.int64)
    for j in range(groups):
        x = w[:, perm[j * g:(j + 1) * g]]
        xmin, xmax = np.minimum(x.min(axis=1), 0), np.maximum(x.max(axis=1), 0)
        if sym:
            xmax = np.maximum(-xmin, xmax)
            xmin = np.where(xmin < 0, -xmax, xmin)
        empty = (xmin == 0) & (xmax == 0)
        xmin, xmax = np.where(empty, -1, xmin), np.where(empty, 1, xmax)
        s16 = ((xmax - xmin) / maxq).astype(np.float16)
        s16 = np.where(s16 > 0, s16, np.float16(2**-24))
        scales[j] = s16
        zeros[j] = (maxq + 1) // 2 if sym else np.clip(np.round(-xmin / s16.astype(np.float32)), 0, maxq)
    s = scales.astype(np.float32)[g_idx].T  # [N, K]
    q = np.clip(np.round(w / s) + zeros[g_idx].T, 0, maxq).astype(np.int64)
    stored = zeros if checkpoint_format == V2 else (zeros - 1) % (1 << bits)
    return GptqLinear(
        name, k, n, bits, group_size, sym, desc_act, checkpoint_format,
        pack_rows(q.T, bits), pack_cols(stored, bits), scales, g_idx,
        None if bias is None else np.asarray(bias, np.float16),
    )


# -- runtimes and sizes -----------------------------------------------------------
def runtimes(bits: int, group_size: int, sym: bool, desc_act: bool, checkpoint_format: str = V1) -> list[Runtime]:
    """Which runtimes load these parameters, by their published rules."""
    v2 = checkpoint_format == V2
    v2_reason = "gptq_v2 zero points: load with GPTQModel or convert to v1"
    ex_ok = bits == EXLLAMA_BITS and not v2
    ex_reason = v2_reason if v2 else "" if ex_ok else f"needs 4-bit, not {bits}-bit"
    marlin_why = [
        why for bad, why in (
            (not sym, "needs sym=True"),
            (bits not in MARLIN_BITS, f"needs 4 or 8 bits, not {bits}"),
            (group_size not in MARLIN_GROUPS, f"needs group size in {MARLIN_GROUPS}, not {group_size}"),
            (v2, v2_reason),
        ) if bad
    ]
    machete_why = marlin_why + [w for bad, w in (
        (desc_act, "no act-order support"),
        (group_size not in MACHETE_GROUPS and group_size in MARLIN_GROUPS, f"needs group size in {MACHETE_GROUPS}"),
    ) if bad]
    return [
        Runtime("ExLlama", ex_ok, ex_reason),
        Runtime("ExLlamaV2", ex_ok, ex_reason),
        Runtime("Marlin", not marlin_why, "; ".join(marlin_why)),
        Runtime("Machete", not machete_why, "; ".join(machete_why) or "needs an SM90 GPU"),
        Runtime("transformers", True, "via optimum/GPTQModel" if not v2 else "via GPTQModel"),
        Runtime("llama.cpp", False, "does not load GPTQ; needs conversion to GGUF"),
    ]


def expected_tensors(
    shape: ModelShape, bits: int, group_size: int, bias: bool = True, dtype: str = ""
) -> tuple[_common.Expected, set[str]]:
    """Every tensor of a GPTQ checkpoint of ``shape``, and the names that may be absent."""
    out = _common.fp_tensors(shape, dtype)
    optional: set[str] = set()
    for lin in shape.linears():
        for suffix, dims in tensor_shapes(lin.in_features, lin.out_features, bits, group_size).items():
            if suffix == ".bias" and not (bias or lin.bias):
                continue
            out[lin.name + suffix] = ((_DTYPES[suffix],), dims)
        if not lin.bias:
            optional.add(lin.name + ".bias")
    return out, optional


def writer_order(shape: ModelShape, writer: str) -> list[str] | None:
    """The data order ``writer`` gives a checkpoint's tensors (None: the safetensors library's)."""
    if writer != "gptqmodel":
        return None
    return list(shape.other_tensors()) + [lin.name + s for lin in shape.linears() for s in _GPTQMODEL_SUFFIXES]


def predict_size(
    shape: ModelShape, bits: int = 4, group_size: int = 128, desc_act: bool = False, sym: bool = True,
    bias: bool | None = None, dtype: str | None = None, writer: str = "autogptq",
    config_doc: dict[str, Any] | None = None, **_: Any,
) -> SizeEstimate:
    """Exact size of the single safetensors file a GPTQ writer writes.

    ``writer``: ``autogptq`` (the default, as TheBloke's published tables: a bias on every
    linear) or ``gptqmodel`` (no bias the model lacks, its own tensor order). ``bias``
    overrides the writer's choice. ``dtype``: the float tensors' (default: config.json's, else F16).
    """
    writer = (writer or "autogptq").lower()
    if writer not in WRITERS:
        raise UnusableInput(f"unknown GPTQ writer {writer!r} (known: {', '.join(WRITERS)})")
    bias = (writer == "autogptq") if bias is None else bias
    dtype = (dtype or (_common.linear_weight_dtype(config_doc) if config_doc else "F16")).upper()
    expected, _opt = expected_tensors(shape, bits, group_size, bias, dtype)
    entries = {name: (d[0], dims) for name, (d, dims) in expected.items()}
    parts = dict.fromkeys(("qweight", "qzeros", "scales", "g_idx", "bias", "embeddings", "lm_head", "norms"), 0)
    tensors = []
    from ...core.safetensors_io import DTYPE_BYTES

    for name, (dt, dims) in entries.items():
        nbytes = DTYPE_BYTES[dt] * int(np.prod(dims))
        suffix = name.rsplit(".", 1)[-1]
        kind = suffix if suffix in parts and not name.endswith("norm.weight") else (
            "embeddings" if "embed_tokens" in name else "lm_head" if name.startswith("lm_head") else "norms")
        parts[kind] += nbytes
        tensors.append((name, dt, nbytes))
    total = _common.predicted_file_bytes(entries, METADATA, writer_order(shape, writer))
    parts["header"] = total - sum(parts.values())
    params = {"bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym, "bias": bias, "writer": writer}
    return SizeEstimate(NAME, params, total, parts, tensors)


# -- validation ---------------------------------------------------------------------
def check(variant: Variant, report: Report) -> None:
    """Config, tensor set and shapes, g_idx, zero points, size and runtimes."""
    from . import checks as _gptq_check

    _gptq_check.check(variant, report)


# -- writing ------------------------------------------------------------------------
def write_variant(
    folder: str | Path, config: dict[str, Any], bits: int = 4, group_size: int = 128, desc_act: bool = False,
    sym: bool = True, checkpoint_format: str = V1, config_file: str = "quantize_config.json", seed: int = 0,
    bias: bool = True,
) -> dict[str, np.ndarray]:
    """Write a random GPTQ checkpoint as AutoGPTQ lays it out; returns {module: dequantized [N, K]}."""
    from ...core.safetensors_io import write

    folder = Path(folder)
    shape = ModelShape.from_config(config)
    rng = np.random.default_rng(seed)

    def quantize_one(lin: Linear, w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        b = np.zeros(lin.out_features, np.float16) if (bias or lin.bias) else None
        q = quantize(w, bits, group_size, desc_act, sym, checkpoint_format, b, lin.name, rng)
        named = {f"{lin.name}.qweight": q.qweight, f"{lin.name}.qzeros": q.qzeros,
                 f"{lin.name}.scales": q.scales, f"{lin.name}.g_idx": q.g_idx}
        if b is not None:
            named[f"{lin.name}.bias"] = b
        return named, dequantize_linear(q)

    tensors, out = _common.random_quantized_tensors(shape, rng, quantize_one)
    qcfg = _gptq_config.make_config(bits, group_size, desc_act, sym, checkpoint_format, config_file)
    cfg = dict(config, torch_dtype="float16")
    if config_file == "config.json":
        cfg["quantization_config"] = qcfg
    else:
        _common.write_config(folder, config_file, qcfg)
    _common.write_config(folder, "config.json", cfg)
    write(folder / WEIGHTS_FILE.format(bits=bits, group_size=group_size), tensors, METADATA)
    return out


__all__ = [
    "NAME", "GptqLinear", "detect", "check", "read_quant_config", "quantized_linears", "load_linear",
    "unpack_qweight", "unpack_qzeros", "true_zeros", "dequantize_linear", "dequantize", "quantize",
    "runtimes", "predict_size", "write_variant", "tensor_shapes", "expected_tensors", "writer_order", "WRITERS",
]
