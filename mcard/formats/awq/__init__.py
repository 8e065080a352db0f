"""AWQ checkpoints (AutoAWQ GEMM and GEMV layouts), safetensors only.

Layout facts (AutoAWQ ``awq/modules/linear/gemm.py`` and ``gemv.py``), per
linear with K inputs, N outputs, 4 bits, group size g (K when -1), G = K // g:

* GEMM: ``qweight`` I32 [K, N/8] packed along N in :data:`AWQ_ORDER`;
  ``qzeros`` I32 [G, N/8] same order; ``scales`` F16 [G, N].
* GEMV: ``qweight`` I32 [N, K/8] packed along K in natural order; ``qzeros``
  I32 [N, Z] and ``scales`` F16 [N, 8Z], zero-padded, where Z is
  ``calculate_zeros_width(K, g)`` (:func:`gemv_zeros_width`).

No g_idx, no -1 zero offset: ``W = (q - z) * s``. Optional ``bias`` F16 [N]
only where the original linear had one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.arch import Linear, ModelShape
from ...core.errors import UnusableInput
from ...core.report import Finding, Report, Runtime
from ...core.safetensors_io import DTYPE_BYTES, write
from ...core.size import SizeEstimate
from ...core.variant import Variant
from .. import common as _common, params as _params, quant_config
from ..packing import AWQ_ORDER, MARLIN_GROUPS, groups_of, pack_awq, pack_cols, unpack_awq, unpack_cols, valid_group_size

NAME = "awq"
BITS = 4  # AutoAWQ and vLLM: "Only 4-bit are supported for now."
PACK = 32 // BITS
GEMM, GEMV = "gemm", "gemv"
VERSIONS = (GEMM, GEMV)
SOURCES = ("config.json", "quant_config.json")  # transformers reads config.json first (spellings: quant_config)
COMPARED = ("bits", "group_size", "zero_point", "version")
DEFAULTS: dict[str, Any] = {"bits": BITS, "group_size": 128, "zero_point": True, "version": GEMM}
WEIGHTS_FILE = "model.safetensors"
METADATA = {"format": "pt"}
SUFFIXES = (".qweight", ".qzeros", ".scales", ".bias")
_DTYPES = {".qweight": "I32", ".qzeros": "I32", ".scales": "F16", ".bias": "F16"}
# What `mcard size --format awq` and a registry variant may set, and the values each can take.
PARAMS = {
    "bits": _params.choice((BITS,)),
    "group_size": _params.group_size(valid_group_size),
    "version": _params.choice(VERSIONS, normalize=str.lower),
    "zero_point": _params.Param("bool", sizes=False),
}

__all__ = ["NAME", "AWQ_ORDER", "AwqLinear", "detect", "check", "read_quant_config", "quantized_linears",
           "load_linear", "unpack_awq", "dequantize_linear", "dequantize", "quantize", "runtimes",
           "predict_size", "write_variant", "tensor_shapes", "gemv_zeros_width"]


@dataclass
class AwqLinear:
    """One AWQ linear as stored on disk (arrays in the layout of ``version``)."""

    name: str
    in_features: int
    out_features: int
    bits: int
    group_size: int  # as declared (-1 allowed)
    version: str  # gemm or gemv
    qweight: np.ndarray  # GEMM int32 [K, N/8]; GEMV [N, K/8]
    qzeros: np.ndarray  # GEMM int32 [K/g, N/8]; GEMV [N, Z]
    scales: np.ndarray  # GEMM float16 [K/g, N]; GEMV [N, 8Z]
    bias: np.ndarray | None = None  # float16 [N]


def gemv_zeros_width(k: int, group_size: int) -> int:
    """AutoAWQ ``calculate_zeros_width``: int32 columns of GEMV qzeros (scales have 8x)."""
    g = groups_of(k, group_size)[0]
    multiplier = 1 if g >= 128 else {64: 2, 32: 4}.get(g)
    if multiplier is None:
        raise ValueError(f"GEMV supports group sizes 32, 64 and >= 128, not {g}")
    base = -(-(k // g) // PACK)
    return -(-base // multiplier) * multiplier


def tensor_shapes(k: int, n: int, group_size: int, version: str = GEMM) -> dict[str, tuple[int, ...]]:
    """Suffix -> shape of one linear's tensors, as AutoAWQ allocates them."""
    if version == GEMV:
        z = gemv_zeros_width(k, group_size)
        return {".qweight": (n, k // PACK), ".qzeros": (n, z), ".scales": (n, z * PACK), ".bias": (n,)}
    groups = k // groups_of(k, group_size)[0]
    return {".qweight": (k, n // PACK), ".qzeros": (groups, n // PACK), ".scales": (groups, n), ".bias": (n,)}


# -- detection and configs -----------------------------------------------------------
def _sources(variant: Variant, report: Report | None = None) -> dict[str, dict[str, Any]]:
    """AWQ's quant config sources (:func:`mcard.formats.quant_config.sources`): config.json's section
    when its quant_method is awq, and quant_config.json; spellings normalized."""
    def load(name: str) -> Any:
        try:
            return variant.config(name)
        except UnusableInput as exc:
            if report is not None:
                report.error("bad-config", name, "", f"cannot parse: {exc.message}")
            return None

    return {name: doc for name, doc in quant_config.sources(load, SOURCES).items()
            if name != "config.json" or quant_config.method(name, doc) == NAME}


def detect(variant: Variant) -> bool:
    found = _sources(variant)
    if "config.json" in found:
        return True
    qc = found.get("quant_config.json")
    raw = variant.config("quant_config.json") if qc is not None else None
    if qc is not None and any(k in (raw or {}) for k in quant_config.ALIASES) and (
            "version" in qc or qc.get("quant_method") == NAME):  # AutoAWQ's own spelling
        return True
    names = variant.tensors
    has_q = any(n.endswith(".qweight") for n in names)
    return has_q and not any(n.endswith(".g_idx") for n in names)


def read_quant_config(variant: Variant) -> tuple[dict[str, Any], str | None, list[Finding]]:
    """AWQ parameters, the source used, and findings (``bad-config``, ``config-conflict``)."""
    scratch = Report(path="")
    found = _sources(variant, scratch)
    for doc in found.values():
        if isinstance(doc.get("version"), str):
            doc["version"] = doc["version"].lower()
    if not found:
        return {}, None, scratch.findings
    primary, *others = list(found)
    where = {"config.json": "config.json quantization_config", "quant_config.json": "quant_config.json"}
    for other in others:
        for key in COMPARED:
            a, b = found[primary].get(key), found[other].get(key)
            if a is not None and b is not None and a != b:
                scratch.error("config-conflict", other, key,
                              f"{where[other]} says {key} {b!r} but {where[primary]} says {a!r}")
    params = {**DEFAULTS, **found[primary]}
    bits, gs = params["bits"], params["group_size"]
    if bits != BITS or isinstance(bits, bool):
        scratch.error("bad-config", primary, "bits", f"bits {bits!r}: AWQ checkpoints are 4-bit")
    if isinstance(gs, bool) or not isinstance(gs, int) or (gs != -1 and gs <= 0):
        scratch.error("bad-config", primary, "group_size", f"group_size {gs!r} must be -1 or a positive integer")
    if params["version"] not in VERSIONS:
        scratch.error("bad-config", primary, "version", f"version {params['version']!r} is not one of {VERSIONS}")
    if not isinstance(params["zero_point"], bool):
        scratch.error("bad-config", primary, "zero_point", f"zero_point {params['zero_point']!r} is not true/false")
    return params, where[primary], scratch.findings


def quantized_linears(variant: Variant) -> list[str]:
    return [n[: -len(".qweight")] for n in variant.tensors if n.endswith(".qweight")]


def load_linear(variant: Variant, name: str) -> AwqLinear:
    """Read one linear. Raises :class:`UnusableInput` when config or shapes cannot describe an AWQ linear."""
    params, _src, _f = read_quant_config(variant)
    version = str(params.get("version", GEMM))
    group_size = params.get("group_size", 128)
    if version not in VERSIONS or isinstance(group_size, bool) or not isinstance(group_size, int) or (
            group_size != -1 and group_size <= 0):
        raise UnusableInput(f"cannot dequantize {name}: version {version!r} / group_size {group_size!r} "
                            "are not usable", variant.path)
    qweight, qzeros, scales = (_common.require(variant, name + s) for s in (".qweight", ".qzeros", ".scales"))
    if qweight.ndim != 2 or 0 in qweight.shape:
        raise UnusableInput(f"cannot dequantize {name}: qweight {list(qweight.shape)} is not a packed 2-D tensor",
                            variant.path)
    k, n = (qweight.shape[0], qweight.shape[1] * PACK) if version == GEMM else (qweight.shape[1] * PACK, qweight.shape[0])
    bias = variant.read(name + ".bias") if variant.has(name + ".bias") else None
    if group_size != -1 and k % group_size:
        raise UnusableInput(f"cannot dequantize {name}: {k} inputs are not whole groups of {group_size}", variant.path)
    try:
        want = tensor_shapes(k, n, group_size, version)
    except ValueError as exc:
        raise UnusableInput(f"cannot dequantize {name}: {exc}", variant.path) from None
    have = {".qweight": qweight.shape, ".qzeros": qzeros.shape, ".scales": scales.shape}
    if bias is not None:
        have[".bias"] = bias.shape
    bad = _common.shape_mismatches(have, want)
    if bad:
        raise UnusableInput(f"cannot dequantize {name} ({version}, group_size {group_size}): "
                            f"inconsistent shapes: {', '.join(bad)}", variant.path)
    return AwqLinear(name, k, n, BITS, group_size, version, qweight, qzeros, scales, bias)


# -- quantization ---------------------------------------------------------------------
def dequantize_linear(lin: AwqLinear) -> np.ndarray:
    """float32 [N, K]: ``(q - z) * s`` per group."""
    g, _groups = groups_of(lin.in_features, lin.group_size)
    gi = np.arange(lin.in_features) // g
    if lin.version == GEMV:
        q = unpack_cols(lin.qweight, BITS).astype(np.float32)  # [N, K]
        z = unpack_cols(lin.qzeros, BITS).astype(np.float32)[:, gi]
        return (q - z) * lin.scales.astype(np.float32)[:, gi]
    q = unpack_awq(lin.qweight).astype(np.float32)  # [K, N]
    z = unpack_awq(lin.qzeros).astype(np.float32)[gi]
    return np.ascontiguousarray(((q - z) * lin.scales.astype(np.float32)[gi]).T)


def dequantize(variant: Variant, name: str) -> np.ndarray:
    return dequantize_linear(load_linear(variant, _common.linear_name(name, SUFFIXES)))


def quantize(weight: np.ndarray, bits: int = BITS, group_size: int = 128, zero_point: bool = True,
             version: str = GEMM, bias: np.ndarray | None = None, name: str = "") -> AwqLinear:
    """Round-to-nearest AWQ quantization of ``weight`` [N, K] (AutoAWQ ``pseudo_quantize_tensor``).

    zero_point: scale (max - min) / 15, z = clamp(-round(min / s), 0, 15).
    Without zero_point (which AutoAWQ cannot pack) the symmetric grid is
    stored with z = 8. Scales are rounded to fp16 before the codes.
    """
    if bits != BITS:
        raise ValueError(f"AWQ packs 4-bit values only, not {bits}")
    w = np.asarray(weight, dtype=np.float32)
    n, k = w.shape
    g, _ = groups_of(k, group_size)
    if k % g:
        raise ValueError(f"{k} inputs are not a multiple of group size {g}")
    x = w.reshape(n, k // g, g)
    maxq = (1 << bits) - 1
    if zero_point:
        lo, hi = x.min(axis=2), x.max(axis=2)
        s = (np.maximum(hi - lo, 1e-5) / maxq).astype(np.float16).astype(np.float32)
        z = np.clip(-np.round(lo / s), 0, maxq)
    else:
        s = (np.maximum(np.abs(x).max(axis=2), 1e-5) / (maxq // 2)).astype(np.float16).astype(np.float32)
        z = np.full(s.shape, (maxq + 1) // 2, np.float32)
    q = np.clip(np.round(x / s[..., None]) + z[..., None], 0, maxq).astype(np.int64).reshape(n, k)
    z = z.astype(np.int64)  # [N, G]
    if version == GEMV:
        width = gemv_zeros_width(k, group_size)
        zp = np.zeros((n, width * PACK), np.int64)
        zp[:, : z.shape[1]] = z
        sp = np.zeros((n, width * PACK), np.float16)
        sp[:, : s.shape[1]] = s
        qw, qz, sc = pack_cols(q, BITS), pack_cols(zp, BITS), sp
    else:
        qw, qz, sc = pack_awq(q.T), pack_awq(z.T), s.T.astype(np.float16)
    b = None if bias is None else np.asarray(bias, np.float16)
    return AwqLinear(name, k, n, bits, group_size, version, qw, qz, np.ascontiguousarray(sc), b)


# -- runtimes and sizes ------------------------------------------------------------------
def runtimes(bits: int = BITS, group_size: int = 128, version: str = GEMM, zero_point: bool = True, **_: Any) -> list[Runtime]:
    """Which runtimes load these parameters, by their published rules."""
    gemm_why = "" if version == GEMM else f"reads the GEMM layout, not {version}"
    bits_why = "" if bits == BITS else f"needs 4-bit, not {bits}-bit"
    marlin_why = "; ".join(w for w in (
        bits_why, gemm_why,
        "" if group_size in MARLIN_GROUPS else f"needs group size in {MARLIN_GROUPS}, not {group_size}",
        "" if zero_point else "needs zero_point=True",
    ) if w)
    vllm_why = "; ".join(w for w in (bits_why, gemm_why) if w)
    return [
        Runtime("vLLM AWQ", not vllm_why, vllm_why),
        Runtime("Marlin", not marlin_why, marlin_why),
        Runtime("transformers", not bits_why, bits_why or "via autoawq (GEMM and GEMV kernels)"),
        Runtime("ExLlama", False, "ExLlama v1/v2 load GPTQ, not AWQ"),
        Runtime("llama.cpp", False, "does not load AWQ; needs conversion to GGUF"),
    ]


def expected_tensors(shape: ModelShape, group_size: int = 128, version: str = GEMM, bias: bool = False,
                     dtype: str = "") -> tuple[_common.Expected, set[str]]:
    """Every tensor of an AWQ checkpoint of ``shape``, and the names that may be absent."""
    out = _common.fp_tensors(shape, dtype)
    optional: set[str] = set()
    for lin in shape.linears():
        for suffix, dims in tensor_shapes(lin.in_features, lin.out_features, group_size, version).items():
            if suffix == ".bias" and not (bias or lin.bias):
                optional.add(lin.name + suffix)
                continue
            out[lin.name + suffix] = ((_DTYPES[suffix],), dims)
    return out, optional


def predict_size(shape: ModelShape, bits: int = BITS, group_size: int = 128, version: str = GEMM,
                 bias: bool = False, dtype: str = "F16", **_: Any) -> SizeEstimate:
    """Exact size of the single ``model.safetensors`` AutoAWQ writes."""
    if bits != BITS:
        raise UnusableInput(f"AWQ is 4-bit only, not {bits}-bit")
    try:
        expected, _opt = expected_tensors(shape, group_size, version, bias, dtype)
    except ValueError as exc:  # e.g. a GEMV group size AutoAWQ cannot lay out
        raise UnusableInput(f"awq {version}: {exc}") from None
    entries = {name: (d[0], dims) for name, (d, dims) in expected.items()}
    parts = dict.fromkeys(("qweight", "qzeros", "scales", "bias", "embeddings", "lm_head", "norms"), 0)
    tensors = []
    for name, (dt, dims) in entries.items():
        nbytes = DTYPE_BYTES[dt] * int(np.prod(dims))
        suffix = name.rsplit(".", 1)[-1]
        kind = suffix if suffix in parts else (
            "embeddings" if "embed_tokens" in name else "lm_head" if name.startswith("lm_head") else "norms")
        parts[kind] += nbytes
        tensors.append((name, dt, nbytes))
    total = _common.predicted_file_bytes(entries, METADATA)
    parts["header"] = total - sum(parts.values())
    return SizeEstimate(NAME, {"bits": bits, "group_size": group_size, "version": version}, total, parts, tensors)


# -- validation -------------------------------------------------------------------------
def _implied_version(variant: Variant, name: str, k: int, n: int, group_size: int) -> tuple[str, int] | None:
    """(version, groups) that one linear's headers imply, or None."""
    qw, sc = variant.tensors.get(name + ".qweight"), variant.tensors.get(name + ".scales")
    if not (qw and sc) or len(sc[1].shape) != 2:
        return None
    if qw[1].shape == (k, n // PACK) and sc[1].shape[1] == n:
        return GEMM, sc[1].shape[0]
    if qw[1].shape == (n, k // PACK) and sc[1].shape[0] == n:
        return GEMV, -1
    return None


def check(variant: Variant, report: Report) -> None:
    """Config, tensor set and shapes, size and runtimes (headers only)."""
    report.format = NAME
    params, source, findings = read_quant_config(variant)
    report.findings.extend(findings)
    report.config_source = source
    params = {**DEFAULTS, **params}
    report.params = {k: params[k] for k in COMPARED}
    shape = _common.model_shape(variant, report)
    if shape is None:
        return
    version = params["version"] if params["version"] in VERSIONS else GEMM
    gs = params["group_size"] if isinstance(params["group_size"], int) and params["group_size"] != 0 else 128
    lins = shape.linears()
    implied = {lin.name: _implied_version(variant, lin.name, lin.in_features, lin.out_features, gs) for lin in lins}
    votes = Counter(v[0] for v in implied.values() if v)
    top = votes.most_common(1)[0][0] if votes else version
    if top != version and votes[top] * 2 > len(lins):
        report.error("config-mismatch", source or "", "version",
                     f"config says version {version} but {votes[top]}/{len(lins)} linears have the {top} layout")
        version = top
    if version == GEMM:
        gvotes = Counter(lin.in_features // v[1] if v[1] > 1 else -1
                         for lin in lins if (v := implied[lin.name]) and v[0] == GEMM)
        top_g = gvotes.most_common(1)[0][0] if gvotes else gs
        if groups_of(lins[0].in_features, top_g)[1] != groups_of(lins[0].in_features, gs)[1] and gvotes[top_g] * 2 > len(lins):
            report.error("config-mismatch", source or "", "group_size",
                         f"config says group_size {gs} but the scales of {gvotes[top_g]}/{len(lins)} linears imply {top_g}")
            gs = top_g
    try:
        expected, optional = expected_tensors(shape, gs, version)
    except ValueError as exc:
        report.error("bad-config", source or "", "group_size", str(exc))
        return
    _common.check_tensor_set(variant, report, expected, optional, ignore=lambda n: n.endswith(".rotary_emb.inv_freq"))
    has_bias = any(variant.has(lin.name + ".bias") for lin in lins if not lin.bias)
    dtype = _common.linear_weight_dtype(variant.config("config.json"))
    est = predict_size(shape, BITS, gs, version, has_bias, dtype)
    if len(variant.headers) == 1:
        _common.check_predicted_size(report, variant, est.total_bytes)
    else:
        report.predicted_bytes = est.total_bytes
    report.params.update(group_size=gs, version=version)
    bits = params["bits"] if isinstance(params["bits"], int) else BITS
    report.runtimes = runtimes(bits, gs, version, bool(params["zero_point"]))


# -- writing ------------------------------------------------------------------------------
def write_variant(folder: str | Path, config: dict[str, Any], group_size: int = 128, version: str = GEMM,
                  config_style: str = "config.json", seed: int = 0, zero_point: bool = True) -> dict[str, np.ndarray]:
    """Write a random AWQ checkpoint as AutoAWQ lays it out; returns {module: dequantized [N, K]}."""
    folder = Path(folder)
    shape = ModelShape.from_config(config)
    rng = np.random.default_rng(seed)

    def quantize_one(lin: Linear, w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        b = _common.rng_normal(rng, (lin.out_features,)).astype(np.float16) if lin.bias else None
        q = quantize(w, BITS, group_size, zero_point, version, b, lin.name)
        named = {lin.name + ".qweight": q.qweight, lin.name + ".qzeros": q.qzeros, lin.name + ".scales": q.scales}
        if b is not None:
            named[lin.name + ".bias"] = b
        return named, dequantize_linear(q)

    tensors, out = _common.random_quantized_tensors(shape, rng, quantize_one)
    cfg = dict(config, torch_dtype="float16")
    if config_style == "quant_config.json":
        _common.write_config(folder, "quant_config.json", {
            "zero_point": zero_point, "q_group_size": group_size, "w_bit": BITS, "version": version.upper()})
    else:
        cfg["quantization_config"] = {"quant_method": NAME, "bits": BITS, "group_size": group_size,
                                      "zero_point": zero_point, "version": version, "modules_to_not_convert": None}
    _common.write_config(folder, "config.json", cfg)
    write(folder / WEIGHTS_FILE, tensors, METADATA)
    return out
