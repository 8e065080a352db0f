"""GGUF files (llama.cpp): header reading, validation, exact sizes, dequantization, builders.

The header (magic, version, kv pairs, tensor infos) is parsed by :mod:`._gguf_header`
(re-exported here as :func:`read`, :class:`GgufFile`, :class:`GgufTensor`) with every
length checked against the file size, so a truncated data section still yields findings.
Type and file-type facts come from :mod:`..ggml_types` (the ``gguf`` package plus the
types newer than it), the type mixes from :mod:`.mix`, the split layouts (gguf-split
shards, raw ``-split-a`` parts) from :mod:`.split`: a model split over several files
is validated (:mod:`._gguf_check`) and dequantized as one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter, quants
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

from ...core.arch import ModelShape
from ...core.errors import UnusableInput
from ...core.report import Report, Runtime
from ...core.size import RAM_OVERHEAD_BYTES, SizeEstimate
from ...core.units import format_size
from ...core.variant import Variant
from .. import ggml_types as gt, kquant as kq, params as _params
from . import mix as gguf_mix, split
from .header import GgufFile, GgufTensor, read

NAME = "gguf"
# predict_size's estimate of the metadata: kv pairs besides the vocabulary, and per vocab
# token: string length (8) + ~6 bytes of text + score (4) + token type (4).
_KV_BASE_BYTES = 1200
_VOCAB_BYTES_PER_TOKEN = 22
# What `mcard size --format gguf` and a registry variant may set: the llama.cpp type (ftype) of the mix,
# the shard size gguf-split is given, whether an importance matrix was used (a few types differ).
PARAMS = {
    "type": _params.Param("str", "one of " + ", ".join(gt.FTYPES), normalize=gt.canonical_ftype, required=True),
    "split_max_size": _params.Param("str", split.MAX_SIZE_EXPECTED, split.valid_max_size),
    "imatrix": _params.Param("bool"),
}
# transformers' GGUF loader (docs "GGUF and interaction with Transformers"): types it dequantizes.
_TRANSFORMERS_TYPES = {
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "IQ4_NL",
}


# -- tensors --------------------------------------------------------------------------------
def tensor_types(path: str | Path) -> dict[str, str]:
    return {t.name: t.type for t in read(path).tensors}


def _read_span(paths: list[Path], offset: int, n: int) -> bytes:
    """``n`` bytes at ``offset`` of the concatenation of ``paths`` (raw ``-split-a`` parts)."""
    out = b""
    for p in paths:
        size = p.stat().st_size
        if offset < size and len(out) < n:
            with p.open("rb") as fh:
                fh.seek(offset)
                out += fh.read(n - len(out))
        offset = max(0, offset - size)
    return out


def load_tensor(path: str | Path, name: str, parts: list[Path] | None = None) -> tuple[str, np.ndarray, tuple[int, int]]:
    """(type, raw block bytes uint8 [rows, bytes_per_row], (rows, cols)) of one tensor.

    ``parts``: the raw byte parts of a file split with ``split -b`` (``path`` is the first).
    """
    paths = parts or [Path(path)]
    g = read(paths[0], file_size=sum(p.stat().st_size for p in paths) if parts else None)
    t = g.tensor(name)
    if not t.known:
        raise UnusableInput(f"tensor {name!r} has ggml type id {t.type_id}, which this mcard cannot decode "
                            f"(known: {', '.join(gt.TYPES)})", path)
    if t.offset + t.nbytes > g.file_size:
        raise UnusableInput(f"tensor {name!r} runs past the end of the file (truncated?)", path)
    block = gt.block(t.type)[0]
    if t.rows <= 0 or t.cols <= 0 or t.cols % block:
        raise UnusableInput(f"tensor {name!r} of type {t.type} with dims {list(t.shape)} cannot be decoded", path)
    raw = np.frombuffer(_read_span(paths, t.offset, t.nbytes), np.uint8)
    return t.type, raw.reshape(t.rows, -1), (t.rows, t.cols)


def _decode(raw: np.ndarray, tname: str, name: str, path: str | Path) -> np.ndarray:
    if tname in gt.DEQUANTIZERS:
        elems, nbytes = gt.block(tname)
        return gt.DEQUANTIZERS[tname](raw.reshape(-1, nbytes))
    try:
        return quants.dequantize(raw, GGMLQuantizationType[tname])
    except (NotImplementedError, KeyError):
        raise UnusableInput(f"tensor {name!r}: dequantizing {tname} is not supported (gguf cannot decode it)",
                            path) from None


def dequantize_tensor(path: str | Path, name: str, parts: list[Path] | None = None) -> np.ndarray:
    """float32 [rows, cols] via gguf.quants.dequantize (and mcard's own decoders for newer types)."""
    tname, raw, (rows, cols) = load_tensor(path, name, parts)
    out = _decode(raw, tname, name, path)
    return np.asarray(out, np.float32).reshape(rows, cols)


def dequantize(variant: Variant, name: str) -> np.ndarray:
    """One tensor of the variant's GGUF model (a single file, a shard set or raw parts)."""
    models = _models(variant)
    if len(models) != 1:
        names = ", ".join(m.name for m in models)
        raise UnusableInput(f"expected one GGUF model, found {len(models)} ({names}): name the file", variant.path)
    m = models[0]
    paths = [variant.abspath(rel) for rel in m.files]
    if m.kind == "parts":
        if m.missing:
            raise UnusableInput(f"raw parts missing: {', '.join(m.missing)}", variant.path)
        return dequantize_tensor(paths[0], name, paths)
    for p in paths:
        if any(t.name == name for t in read(p).tensors):
            return dequantize_tensor(p, name)
    raise UnusableInput(f"no tensor {name!r} in {m.name}", variant.path)


def quantize_rows(x: np.ndarray, type_name: str) -> np.ndarray:
    """Quantize float32 [rows, cols] into ggml blocks: uint8 [rows, bytes_per_row].

    Legacy types, F16, BF16 use gguf.quants.quantize; Q2_K..Q6_K use mcard's
    round-to-nearest packers (:data:`..kquant.PACKERS`), format-exact.
    """
    x = np.ascontiguousarray(x, np.float32)
    rows, cols = x.shape
    elems, _nb = gt.block(type_name)
    if cols % elems:
        raise ValueError(f"{type_name} needs rows that are multiples of {elems}, got {cols}")
    if type_name in kq.PACKERS:
        return kq.PACKERS[type_name](x.reshape(-1, elems)).reshape(rows, -1)
    out = quants.quantize(x, GGMLQuantizationType[type_name])
    return np.ascontiguousarray(out).view(np.uint8).reshape(rows, -1)


# -- expectations ---------------------------------------------------------------------------
def expected_tensors(shape: ModelShape) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """llama.cpp's tensor names -> (ne dims ne0 first, role, layer) for a llama-family model."""
    h, m = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    out: dict[str, tuple[tuple[int, ...], str, int]] = {"token_embd.weight": ((h, shape.vocab_size), "token_embd", -1)}
    dims = {"attn_norm": (h,), "attn_q": (h, q), "attn_k": (h, kv), "attn_v": (h, kv), "attn_output": (q, h),
            "ffn_norm": (h,), "ffn_gate": (h, m), "ffn_up": (h, m), "ffn_down": (m, h)}
    for i in range(shape.num_layers):
        for role in gguf_mix.LAYER_ROLES:
            out[f"blk.{i}.{role}.weight"] = (dims[role], role, i)
    out["output_norm.weight"] = ((h,), "output_norm", -1)
    if not shape.tie_word_embeddings:
        out["output.weight"] = ((h, shape.vocab_size), "output", -1)
    return out


def expected_types(shape: ModelShape, ftype: str, rules: str = "current", has_imatrix: bool = False) -> dict[str, str]:
    """Tensor name -> ggml type per llama.cpp's rules (:func:`.mix.role_type`).

    Raises :class:`.mix.NoFallback` where llama-quantize refuses ``ftype`` for these rows.
    """
    gqa = max(1, shape.num_heads // max(1, shape.num_kv_heads))
    # llama.cpp's LLM_TYPE_70B: 80 layers with grouped-query attention (80 layers without it are 65B)
    is_70b = shape.model_type == "llama" and shape.num_layers == 80 and shape.num_heads != shape.num_kv_heads
    has_output = not shape.tie_word_embeddings
    return {
        name: gguf_mix.role_type(role, layer, shape.num_layers, ftype, ne0=dims[0], n_gqa=gqa, is_70b=is_70b,
                           has_output=has_output, rules=rules, has_imatrix=has_imatrix)
        for name, (dims, role, layer) in expected_tensors(shape).items()
    }


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def quantize_order(names: list[str]) -> list[str]:
    """Tensor names in the order llama-quantize writes them: per layer (non-layer ones first), then by name."""
    def key(name: str) -> tuple[int, str]:
        layer = name.split(".")[1] if name.startswith("blk.") else ""
        return (int(layer) if layer.isdigit() else -1, name)
    return sorted(names, key=key)


def kv_estimate(shape: ModelShape) -> tuple[int, int, int]:
    """(estimate, low, high) of a llama-family file's kv section without its tokenizer files.

    The vocabulary dominates: per token 8 bytes of string length, its text, a score and a
    type (SentencePiece) or BPE merges. The bounds: at least 13 bytes a token (one-byte
    text, no score), at most 64 (long tokens plus two merges each) and 64 kB of chat
    template and names.
    """
    est = _KV_BASE_BYTES + _VOCAB_BYTES_PER_TOKEN * shape.vocab_size
    return est, 13 * shape.vocab_size, 64 * shape.vocab_size + 65536


def predict_size(shape: ModelShape, type: str = "Q4_K_M", split_max_size: str | int | None = None,
                 kv_bytes: int | None = None, model_dir: str | Path | None = None,
                 config_doc: dict[str, Any] | None = None, imatrix: bool = False, **_: Any) -> SizeEstimate:
    """Predicted GGUF file size for ``shape`` quantized as ``type`` (an ftype: Q4_K_M, Q8_0...).

    Exact: tensor data bytes with 32-byte alignment padding, and the tensor-info table.
    The kv section is exact when ``kv_bytes`` gives it (see :func:`.kv.kv_prediction`, from
    the tokenizer files); otherwise estimated (:func:`kv_estimate`), and ``params`` says so
    with the bounds. ``imatrix``: quantized with an importance matrix (a few choices
    differ; the kv section then names its files, so it stays an estimate).
    ``model_dir``/``config_doc``: the model's folder and config.json, whose tokenizer files make
    the kv section exact where :mod:`.kv` models them. ``split_max_size`` (``50G``, ``1M`` or
    bytes): the shard sizes ``gguf-split --split-max-size`` writes, in ``params["shards"]``.
    """
    ftype = gt.canonical_ftype(type)
    types = expected_types(shape, ftype, has_imatrix=imatrix)
    layout = expected_tensors(shape)
    parts: dict[str, int] = {}
    tensors = []
    info = 0
    data = 0
    for name in quantize_order(list(layout)):
        dims, role, _layer = layout[name]
        nb = gt.tensor_bytes(types[name], dims)
        kind = "norms" if role in gguf_mix.NORM_ROLES else role
        parts[kind] = parts.get(kind, 0) + _pad(nb, GGUF_DEFAULT_ALIGNMENT)
        tensors.append((name, types[name], nb))
        info += split.tensor_info_bytes(name, len(dims))
        data += _pad(nb, GGUF_DEFAULT_ALIGNMENT)
    params: dict[str, Any] = {"type": ftype}
    if imatrix:
        params["imatrix"] = True
    notes = []
    why_estimate = None
    if kv_bytes is None and model_dir is not None and config_doc is not None:
        from .kv import kv_prediction

        kv_bytes, why_estimate = kv_prediction(Path(model_dir), config_doc, shape, imatrix)
    if kv_bytes is None:
        from .kv import bpe_kv_range

        ranged = bpe_kv_range(Path(model_dir), shape) if model_dir is not None else None
        kv, low, high = ranged or kv_estimate(shape)
        params["kv"] = {"exact": False, "bytes": kv, "low": low, "high": high}
        if why_estimate:
            params["kv"]["why"] = why_estimate
        notes.append(f"metadata: the kv section ({kv:,} bytes) is an estimate: a real one is {low:,} to {high:,} "
                     "bytes (the total moves with it); "
                     + (f"not exact: {why_estimate}; " if why_estimate else "")
                     + ("tokens and merges counted from tokenizer.json; the pre-tokenizer name, special ids and "
                        "general.* fields are not" if ranged else
                        "put the tokenizer files (tokenizer.model or tokenizer.json, tokenizer_config.json) beside "
                        "config.json for an exact figure"))
    else:
        kv = kv_bytes
        params["kv"] = {"exact": True, "bytes": kv}
    meta = _pad(24 + kv + info, GGUF_DEFAULT_ALIGNMENT)
    parts["metadata"] = meta
    total = meta + data
    if split_max_size is not None:
        max_bytes = split_max_size if isinstance(split_max_size, int) else split.parse_max_size(split_max_size)
        dims_of = {n: layout[n][0] for n in layout}
        shards = split.shard_sizes(kv, [(n, len(dims_of[n]), nb) for n, _t, nb in tensors], max_bytes=max_bytes)
        params["split_max_size"] = max_bytes
        params["shards"] = shards
        total = sum(shards)
        notes.append(f"gguf-split --split-max-size {split_max_size}: {len(shards)} shard(s) (-00001-of-"
                     f"{len(shards):05d}.gguf ...) of " + ", ".join(f"{format_size(n)} ({n:,} bytes)" for n in shards))
    return SizeEstimate(NAME, params, total, parts, tensors, ram_bytes=total + RAM_OVERHEAD_BYTES, notes=notes)


def runtimes(types: set[str] | list[str] | dict[str, str]) -> list[Runtime]:
    used = set(types.values()) if isinstance(types, dict) else set(types)
    odd = sorted(used - set(gt.TYPES))
    tf_missing = sorted(used - _TRANSFORMERS_TYPES)
    return [
        Runtime("llama.cpp", not odd, "GGUF v2/v3 with known ggml types" if not odd
                else f"ggml types {odd} unknown to mcard: needs a llama.cpp that knows them"),
        Runtime("transformers", not tf_missing,
                "gguf_file= dequantizes to full precision on load (needs the gguf package)" if not tf_missing
                else f"its GGUF loader does not dequantize {tf_missing}"),
        Runtime("vllm", not tf_missing, "experimental GGUF support, single file" if not tf_missing else "unsupported types"),
    ]


# -- validate -------------------------------------------------------------------------------
def detect(variant: Variant) -> bool:
    return bool(variant.files_of("gguf")) or any(split.parse_raw_part(rel) is not None for rel in variant.files)


def _models(variant: Variant) -> list[split.GgufModel]:
    """The GGUF models of a variant: single files, gguf-split shard sets, raw byte parts.

    Naming one shard or part of a set names the whole set: its siblings in the folder join it.
    """
    files = variant.files_of("gguf")
    raw = [rel for rel in variant.files if split.parse_raw_part(rel) is not None and rel not in files]
    if variant.single_file and split.is_split_name(variant.single_file):
        own = split.group([variant.single_file])[0]
        siblings = [p.name for p in variant.root.iterdir() if p.is_file() and split.is_split_name(p.name)]
        return [m for m in split.group(sorted(siblings)) if m.name == own.name]
    return split.group(files + raw)


def shape_from_kv(g: GgufFile | dict[str, Any], tensor_names: set[str] | None = None) -> ModelShape | None:
    """A llama-family ModelShape from the ``{arch}.*`` hparams, or None for other architectures.

    ``g``: a parsed file, or the kv pairs of a split model's first shard with ``tensor_names``
    the union of its shards' tensors.
    """
    kv = g.kv if isinstance(g, GgufFile) else g
    names = {t.name for t in g.tensors} if isinstance(g, GgufFile) else (tensor_names or set())
    arch = kv.get("general.architecture")
    if arch not in ("llama", "mistral", "qwen2"):
        return None
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
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": arch == "qwen2",
    }
    try:  # the same bounds as config.json: positive integers, a plausible layer count
        return ModelShape.from_config(cfg, getattr(g, "path", "config"))
    except UnusableInput:
        return None


def check(variant: Variant, report: Report) -> None:
    """Header, layout, tensor set, mix, size and runtimes of every GGUF model in the variant."""
    from . import checks as _gguf_check

    _gguf_check.check(variant, report)


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
    ftype = gt.canonical_ftype(ftype)
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
    w.add_file_type(gt.FTYPES[ftype][0])
    w.add_quantization_version(2)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(shape.vocab_size)])
    w.add_token_scores([0.0] * shape.vocab_size)
    w.add_token_types([1] * shape.vocab_size)
    out: dict[str, np.ndarray] = {}
    for tname, (dims, role, _layer) in expected_tensors(shape).items():
        rows_cols = tuple(reversed(dims))
        x = (np.ones(rows_cols, np.float32) if role in gguf_mix.NORM_ROLES
             else (rng.standard_normal(rows_cols) * 0.02).astype(np.float32))
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
