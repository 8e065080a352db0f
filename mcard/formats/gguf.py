"""GGUF files (llama.cpp): header reading, validation, exact sizes, dequantization, builders.

The header (magic, version, kv pairs, tensor infos) is parsed by :mod:`._gguf_header`
(re-exported here as :func:`read`, :class:`GgufFile`, :class:`GgufTensor`) with every
length checked against the file size, so a truncated data section still yields findings.
Facts (type ids, block sizes, value types) come from the ``gguf`` package; the type
mixes from :mod:`._kquant`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

from ..arch import ModelShape
from ..errors import UnusableInput
from ..report import Report, Runtime
from ..size import RAM_OVERHEAD_BYTES, SizeEstimate
from ..variant import Variant
from . import _common, _params
from . import _kquant as kq
from ._gguf_header import GgufFile, GgufTensor, read

NAME = "gguf"
# predict_size's estimate of the metadata: kv pairs besides the vocabulary, and per vocab
# token: string length (8) + ~6 bytes of text + score (4) + token type (4).
_KV_BASE_BYTES = 1200
_VOCAB_BYTES_PER_TOKEN = 22
# transformers' GGUF loader (docs "GGUF and interaction with Transformers"): types it dequantizes.
# What `mcard size --format gguf` and a registry variant may set: the llama.cpp type (ftype) of the mix.
PARAMS = {"type": _params.Param("str", "one of " + ", ".join(kq.FTYPES), normalize=kq.canonical_ftype, required=True)}
_TRANSFORMERS_TYPES = {
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "IQ4_NL",
}


# -- tensors --------------------------------------------------------------------------------
def tensor_types(path: str | Path) -> dict[str, str]:
    return {t.name: t.type for t in read(path).tensors}


def load_tensor(path: str | Path, name: str) -> tuple[str, np.ndarray, tuple[int, int]]:
    """(type, raw block bytes uint8 [rows, bytes_per_row], (rows, cols)) of one tensor."""
    g = read(path)
    t = g.tensor(name)
    if t.offset + t.nbytes > g.file_size:
        raise UnusableInput(f"tensor {name!r} runs past the end of the file (truncated?)", path)
    block = GGML_QUANT_SIZES[GGMLQuantizationType[t.type]][0]
    if t.rows <= 0 or t.cols <= 0 or t.cols % block:
        raise UnusableInput(f"tensor {name!r} of type {t.type} with dims {list(t.shape)} cannot be decoded", path)
    with open(path, "rb") as fh:
        fh.seek(t.offset)
        raw = np.frombuffer(fh.read(t.nbytes), np.uint8)
    return t.type, raw.reshape(t.rows, -1), (t.rows, t.cols)


def dequantize_tensor(path: str | Path, name: str) -> np.ndarray:
    """float32 [rows, cols] via gguf.quants.dequantize."""
    tname, raw, (rows, cols) = load_tensor(path, name)
    try:
        out = quants.dequantize(raw, GGMLQuantizationType[tname])
    except NotImplementedError:
        raise UnusableInput(f"gguf cannot dequantize {tname} (tensor {name})", path) from None
    return np.asarray(out, np.float32).reshape(rows, cols)


def _single_file(variant: Variant) -> Path:
    files = variant.files_of("gguf")
    if len(files) != 1:
        raise UnusableInput(f"expected one GGUF file, found {len(files)}: name the file", variant.path)
    return variant.abspath(files[0])


def dequantize(variant: Variant, name: str) -> np.ndarray:
    return dequantize_tensor(_single_file(variant), name)


def quantize_rows(x: np.ndarray, type_name: str) -> np.ndarray:
    """Quantize float32 [rows, cols] into ggml blocks: uint8 [rows, bytes_per_row].

    Legacy types, F16, BF16 use gguf.quants.quantize; Q2_K..Q6_K use mcard's
    round-to-nearest packers (:data:`._kquant.PACKERS`), format-exact.
    """
    x = np.ascontiguousarray(x, np.float32)
    rows, cols = x.shape
    elems, _nb = kq.block(type_name)
    if cols % elems:
        raise ValueError(f"{type_name} needs rows that are multiples of {elems}, got {cols}")
    if type_name in kq.PACKERS:
        return kq.PACKERS[type_name](x.reshape(-1, elems)).reshape(rows, -1)
    out = quants.quantize(x, GGMLQuantizationType[type_name])
    return np.ascontiguousarray(out).view(np.uint8).reshape(rows, -1)


# -- expectations ---------------------------------------------------------------------------
def expected_tensors(shape: ModelShape) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """llama.cpp's tensor names -> (ne dims ne0 first, role, layer) for a llama-family model."""
    h, q, kv, m = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim, shape.intermediate_size
    out: dict[str, tuple[tuple[int, ...], str, int]] = {"token_embd.weight": ((h, shape.vocab_size), "token_embd", -1)}
    dims = {"attn_norm": (h,), "attn_q": (h, q), "attn_k": (h, kv), "attn_v": (h, kv), "attn_output": (q, h),
            "ffn_norm": (h,), "ffn_gate": (h, m), "ffn_up": (h, m), "ffn_down": (m, h)}
    for i in range(shape.num_layers):
        for role in kq.LAYER_ROLES:
            out[f"blk.{i}.{role}.weight"] = (dims[role], role, i)
    out["output_norm.weight"] = ((h,), "output_norm", -1)
    if not shape.tie_word_embeddings:
        out["output.weight"] = ((h, shape.vocab_size), "output", -1)
    return out


def expected_types(shape: ModelShape, ftype: str, rules: str = "current") -> dict[str, str]:
    """Tensor name -> ggml type per llama.cpp's rules (:func:`._kquant.role_type`)."""
    gqa = max(1, shape.num_heads // max(1, shape.num_kv_heads))
    is_70b = shape.model_type == "llama" and shape.num_layers == 80
    has_output = not shape.tie_word_embeddings
    return {
        name: kq.role_type(role, layer, shape.num_layers, ftype, ne0=dims[0], n_gqa=gqa, is_70b=is_70b,
                           has_output=has_output, rules=rules)
        for name, (dims, role, layer) in expected_tensors(shape).items()
    }


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def predict_size(shape: ModelShape, type: str = "Q4_K_M", **_: Any) -> SizeEstimate:
    """Predicted GGUF file size for ``shape`` quantized as ``type`` (an ftype: Q4_K_M, Q8_0...).

    Exact: tensor data bytes with 32-byte alignment padding, and the tensor-info table.
    Estimated: the kv section (``_KV_BASE_BYTES`` plus ``_VOCAB_BYTES_PER_TOKEN`` per
    vocabulary token; real vocabularies vary with token lengths and BPE merges).
    """
    ftype = kq.canonical_ftype(type)
    types = expected_types(shape, ftype)
    parts: dict[str, int] = {}
    tensors = []
    info = 0
    data = 0
    for name, (dims, role, _layer) in expected_tensors(shape).items():
        nb = kq.tensor_bytes(types[name], dims)
        kind = "norms" if role in kq.NORM_ROLES else role
        parts[kind] = parts.get(kind, 0) + _pad(nb, GGUF_DEFAULT_ALIGNMENT)
        tensors.append((name, types[name], nb))
        info += 8 + len(name) + 4 + 8 * len(dims) + 4 + 8
        data += _pad(nb, GGUF_DEFAULT_ALIGNMENT)
    meta = _pad(24 + _KV_BASE_BYTES + _VOCAB_BYTES_PER_TOKEN * shape.vocab_size + info, GGUF_DEFAULT_ALIGNMENT)
    parts["metadata"] = meta
    total = meta + data
    return SizeEstimate(NAME, {"type": ftype}, total, parts, tensors, ram_bytes=total + RAM_OVERHEAD_BYTES)


def runtimes(types: set[str] | list[str] | dict[str, str]) -> list[Runtime]:
    used = set(types.values()) if isinstance(types, dict) else set(types)
    known = {t.name for t in GGMLQuantizationType}
    odd = sorted(used - known)
    tf_missing = sorted(used - _TRANSFORMERS_TYPES)
    return [
        Runtime("llama.cpp", not odd, "GGUF v2/v3 with known ggml types" if not odd else f"unknown types {odd}"),
        Runtime("transformers", not tf_missing,
                "gguf_file= dequantizes to full precision on load (needs the gguf package)" if not tf_missing
                else f"its GGUF loader does not dequantize {tf_missing}"),
        Runtime("vllm", not tf_missing, "experimental GGUF support, single file" if not tf_missing else "unsupported types"),
    ]


# -- validate -------------------------------------------------------------------------------
def detect(variant: Variant) -> bool:
    return bool(variant.files_of("gguf"))


def shape_from_kv(g: GgufFile) -> ModelShape | None:
    """A llama-family ModelShape from the ``{arch}.*`` hparams, or None for other architectures."""
    arch = g.kv.get("general.architecture")
    if arch not in ("llama", "mistral", "qwen2"):
        return None
    kv = g.kv
    tokens = kv.get("tokenizer.ggml.tokens")
    cfg = {
        "model_type": "llama" if arch == "mistral" else arch,
        "hidden_size": kv.get(f"{arch}.embedding_length"),
        "intermediate_size": kv.get(f"{arch}.feed_forward_length"),
        "num_hidden_layers": kv.get(f"{arch}.block_count"),
        "num_attention_heads": kv.get(f"{arch}.attention.head_count"),
        "num_key_value_heads": kv.get(f"{arch}.attention.head_count_kv"),
        "head_dim": kv.get(f"{arch}.attention.key_length"),
        "vocab_size": kv.get(f"{arch}.vocab_size") or (
            tokens[1] if isinstance(tokens, tuple) else len(tokens) if isinstance(tokens, list) else None),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in g.tensors),
        "attention_bias": arch == "qwen2",
    }
    try:  # the same bounds as config.json: positive integers, a plausible layer count
        return ModelShape.from_config(cfg, g.path)
    except UnusableInput:
        return None


def check(variant: Variant, report: Report) -> None:
    report.format = NAME
    files = variant.files_of("gguf")
    if len(files) == 1:
        _check_file(variant, files[0], report)
        return
    report.params = {"files": len(files)}
    _common.file_parts(variant, report, files, _check_file)


def _check_file(variant: Variant, rel: str, report: Report) -> None:
    g = read(variant.abspath(rel))
    ftype = g.file_type
    report.params = {"version": g.version, "architecture": g.kv.get("general.architecture"),
                     "file_type": ftype or g.kv.get("general.file_type"), "tensors": len(g.tensors) + len(g.bad_types)}
    report.config_source = rel
    for entry in report.files:
        if entry.path == rel:
            entry.expected_size = None
    for name, tid in g.bad_types:
        report.error("bad-type", rel, name, f"unknown ggml type id {tid}")
    _check_layout(g, rel, report)
    for t in g.tensors:
        elems = kq.block(t.type)[0]
        if t.cols % elems:
            report.error("bad-shape", rel, t.name, f"row length {t.cols} is not a multiple of {t.type}'s block of {elems}")
    shape = shape_from_kv(g)
    if shape is None:
        report.info("unknown-architecture", rel, "general.architecture",
                    f"architecture {g.kv.get('general.architecture')!r}: tensor set and mix not checked")
    else:
        _check_tensor_set(g, shape, rel, report)
        if ftype is not None:
            _check_mix(g, shape, ftype, rel, report)
            _check_predicted(g, shape, ftype, rel, report)
        else:
            report.info("mix-mismatch", rel, "general.file_type",
                        f"general.file_type {g.kv.get('general.file_type')!r} not modelled: mix not checked")
    report.runtimes = runtimes({t.type for t in g.tensors})


def _check_layout(g: GgufFile, rel: str, report: Report) -> None:
    end = g.data_start
    prev: GgufTensor | None = None
    for t in sorted(g.tensors, key=lambda t: t.offset):
        if (t.offset - g.data_start) % g.alignment:
            report.error("bad-offsets", rel, t.name, f"offset {t.offset - g.data_start} is not aligned to {g.alignment}")
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            report.error("bad-offsets", rel, t.name, f"data overlaps {prev.name}")
        if t.offset + t.nbytes > g.file_size:
            report.error("bad-offsets", rel, t.name, f"data ends at {t.offset + t.nbytes}, past the end of the file ({g.file_size})")
        end = max(end, t.offset + t.nbytes)
        prev = t
    padded = g.data_start + _pad(end - g.data_start, g.alignment)
    for entry in report.files:
        if entry.path == rel:
            entry.expected_size = padded
    if g.file_size < end:
        report.error("file-size", rel, "", f"file is {g.file_size} bytes but its header implies {padded}: truncated")
    elif g.file_size > padded:
        report.warning("file-size", rel, "", f"file is {g.file_size} bytes, {g.file_size - padded} more than its header implies")


def _check_tensor_set(g: GgufFile, shape: ModelShape, rel: str, report: Report) -> None:
    expected = expected_tensors(shape)
    have = {t.name: t for t in g.tensors}
    for name, (dims, _role, _layer) in expected.items():
        t = have.get(name)
        if t is None:
            report.error("missing-tensor", rel, name, f"expected from the hparams, dims {list(dims)}")
        elif tuple(t.shape) != dims:
            report.error("wrong-shape", rel, name, f"dims {list(t.shape)}, the hparams imply {list(dims)}")
    for name in have:
        if name not in expected and name != "rope_freqs.weight":
            report.error("unexpected-tensor", rel, name, "not a tensor llama.cpp expects for these hparams")


def _check_mix(g: GgufFile, shape: ModelShape, ftype: str, rel: str, report: Report) -> None:
    have = {t.name: t.type for t in g.tensors}
    current = expected_types(shape, ftype)
    diffs = {n: (have[n], e) for n, e in current.items() if n in have and have[n] != e}
    if not diffs:
        report.info("mix", rel, "", f"tensor types match llama.cpp's current {ftype} mix")
        return
    old = expected_types(shape, ftype, rules="2023")
    old_q6 = dict(old, **{n: current[n] for n in ("output.weight",) if n in current})
    for label, rules in (("2023 (first k-quant)", old), ("2023 GGUF (output Q6_K)", old_q6)):
        if all(have.get(n, e) == e for n, e in rules.items()):
            report.warning("mix-mismatch", rel, "",
                           f"{len(diffs)} tensor types follow llama.cpp's older {label} {ftype} rules, not the current ones")
            return
    if set(diffs) <= {"output.weight", "token_embd.weight"}:
        report.warning("mix-mismatch", rel, ", ".join(sorted(diffs)),
                       "types differ from the mix only where llama-quantize allows overrides "
                       + "; ".join(f"{n}: {a} (mix {e})" for n, (a, e) in sorted(diffs.items())))
        return
    for name, (actual, exp) in sorted(diffs.items())[:20]:
        report.error("mix-mismatch", rel, name, f"type {actual}, llama.cpp's {ftype} mix gives {exp}")
    if len(diffs) > 20:
        report.error("mix-mismatch", rel, "", f"... and {len(diffs) - 20} more tensors differ from the {ftype} mix")


def _check_predicted(g: GgufFile, shape: ModelShape, ftype: str, rel: str, report: Report) -> None:
    types = {t.name: t.type for t in g.tensors}
    data = sum(_pad(kq.tensor_bytes(types.get(n, e), d), g.alignment)
               for (n, (d, _r, _l)), e in zip(expected_tensors(shape).items(), expected_types(shape, ftype).values()))
    mix_data = sum(_pad(nb, GGUF_DEFAULT_ALIGNMENT) for _n, _t, nb in predict_size(shape, ftype).tensors)
    predicted = g.data_start + mix_data
    report.predicted_bytes = predicted
    actual = g.file_size
    if actual == predicted:
        report.info("size", rel, "", f"size {actual} bytes equals the prediction for {ftype} exactly")
    else:
        delta = actual - predicted
        sev = report.warning if abs(delta) > 0.01 * predicted else report.info
        sev("size", rel, "", f"size {actual} bytes vs predicted {predicted} for {ftype} ({delta:+d}); "
            f"with the file's own tensor types: {g.data_start + data}")


# -- builder --------------------------------------------------------------------------------
def write_variant(
    path_or_folder: str | Path, config: dict[str, Any], ftype: str = "Q4_K_M", seed: int = 0, name: str | None = None,
    types: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Write a real GGUF (llama arch) for ``config`` in the ``ftype`` mix.

    Returns the dequantized tensors written, float32 ``[rows, cols]`` as
    :func:`dequantize_tensor` gives them (1-D norms as ``[1, n]``).

    ``path_or_folder``: a ``.gguf`` path, or a folder (the file is ``model-<ftype>.gguf``).
    ``types`` overrides per-tensor types (for tests that break the mix).
    """
    ftype = kq.canonical_ftype(ftype)
    path = Path(path_or_folder)
    if path.suffix != ".gguf":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"model-{ftype}.gguf"
    shape = ModelShape.from_config(config)
    chosen = dict(expected_types(shape, ftype), **(types or {}))
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "llama")
    w.add_name(name or f"mcard-tiny-{ftype}")
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(shape.hidden_size)
    w.add_feed_forward_length(shape.intermediate_size)
    w.add_block_count(shape.num_layers)
    w.add_head_count(shape.num_heads)
    w.add_head_count_kv(shape.num_kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_file_type(kq.FTYPES[ftype][0])
    w.add_quantization_version(2)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(shape.vocab_size)])
    w.add_token_scores([0.0] * shape.vocab_size)
    w.add_token_types([1] * shape.vocab_size)
    out: dict[str, np.ndarray] = {}
    for tname, (dims, role, _layer) in expected_tensors(shape).items():
        rows_cols = tuple(reversed(dims))
        x = np.ones(rows_cols, np.float32) if role in kq.NORM_ROLES else (rng.standard_normal(rows_cols) * 0.02).astype(np.float32)
        t = chosen[tname]
        if t == "F32":
            w.add_tensor(tname, x)
            out[tname] = x.reshape(-1, dims[0])
            continue
        raw = quantize_rows(x.reshape(-1, dims[0]), t)
        w.add_tensor(tname, raw, raw_dtype=GGMLQuantizationType[t])
        out[tname] = np.asarray(quants.dequantize(raw, GGMLQuantizationType[t]), np.float32).reshape(-1, dims[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out

__all__ = [
    "NAME", "GgufFile", "GgufTensor", "read", "detect", "check", "tensor_types", "load_tensor", "dequantize_tensor",
    "dequantize", "quantize_rows", "write_variant", "expected_tensors", "expected_types", "predict_size", "runtimes",
    "shape_from_kv",
]
