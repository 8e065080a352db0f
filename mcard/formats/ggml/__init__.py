"""Legacy GGML ``.bin`` files (llama.cpp before GGUF, i.e. before August 2023): header only.

Layout (llama.cpp's ``llama_file_loader``, mid-2023), all little-endian:

* magic uint32: ``ggml`` (unversioned, vocab without scores), ``ggmf`` (+ uint32 version 1),
  ``ggjt`` (+ uint32 version 1, 2 or 3; tensor data aligned to 32 bytes in the file);
* hparams int32 x7: n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype;
* vocab: n_vocab x (uint32 length, bytes, float32 score unless ``ggml``);
* tensors until the end of the file: int32 n_dims, int32 name length, int32 ggml type,
  int32 dims (ne0 first), name, padding to 32 (``ggjt``), data.

The legacy quant blocks changed twice: ggjt v2 (May 2023) re-laid Q4_0..Q8_0, v3
stored their scales as fp16. v3 blocks equal GGUF's; earlier versions use :data:`_OLD_BLOCKS`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ...core.arch import MAX_LAYERS, ModelShape
from ...core.errors import UnusableInput
from ...core.report import Report, Runtime
from ...core.size import RAM_OVERHEAD_BYTES, SizeEstimate
from ...core.variant import Variant
from .. import common as _common, ggml_types as gt, params as _params
from ..gguf import mix as gguf_mix

NAME = "ggml"
MAGICS = {0x67676D6C: "ggml", 0x67676D66: "ggmf", 0x67676A74: "ggjt"}
ALIGN = 32  # ggjt tensor data alignment
# Block bytes of the legacy types before ggjt v3 (f32 scales): type -> bytes per 32 values.
_OLD_BLOCKS = {"Q4_0": 20, "Q4_1": 24, "Q5_0": 24, "Q5_1": 28, "Q8_0": 36}
_MAX_NAME = 512
MAX_VOCAB = 1 << 22  # 4M tokens: 16 times the largest vocabulary in use
# predict_size's estimate of the vocabulary text: bytes of token text per token (LLaMA's
# SentencePiece vocab with ▁ written as a space averages about 5.5); lengths and scores are exact.
_VOCAB_TEXT_BYTES_PER_TOKEN = 5.5
_ROLE_OF = {v: k for k, v in gguf_mix.LAYER_ROLES.items()}
# What `mcard size --format ggml` and a registry variant may set: the llama.cpp type of the mix.
# GGML files hold only the file types of their era (gt.GGML_FTYPES); newer ones exist only as GGUF.
PARAMS = {"type": _params.Param("str", "one of " + ", ".join(gt.GGML_FTYPES), lambda t: t in gt.GGML_FTYPES,
                                normalize=gt.canonical_ftype, required=True)}


@dataclass
class GgmlTensor:
    name: str
    type: str
    shape: tuple[int, ...]  # ne0 first
    offset: int
    nbytes: int


@dataclass
class GgmlFile:
    path: Path
    magic: str
    version: int
    hparams: dict[str, int]
    file_size: int
    vocab_end: int
    tensors: list[GgmlTensor] = field(default_factory=list)
    truncated: str | None = None  # where the tensor section stopped early, if it did

    @property
    def ftype(self) -> str | None:
        return gt.FTYPE_BY_ID.get(self.hparams["ftype"])


def _tensor_bytes(type_name: str, n: int, magic: str, version: int) -> int:
    if type_name in _OLD_BLOCKS and not (magic == "ggjt" and version >= 3):
        return n // 32 * _OLD_BLOCKS[type_name]
    return gt.tensor_bytes(type_name, (n,))


class BadGgml(UnusableInput):
    """What :func:`walk` finds wrong with a GGML file (a reader's own refusal is another UnusableInput)."""


def read(path: str | Path) -> GgmlFile:
    """Read a GGML header and tensor table without loading tensor data."""
    path = Path(path)
    with path.open("rb") as fh:
        return walk(fh, path.stat().st_size, path)


def walk(fh: BinaryIO, size: int, path: str | Path) -> GgmlFile:
    """Walk a GGML file's header, vocabulary and tensor headers, hopping over tensor data.

    ``fh``: any seekable binary file (a local file, or remote validate's lazily fetched one: what
    this reads is exactly the byte ranges validate needs); ``size``: the whole file's size.
    Problems raise :class:`BadGgml` (an :class:`UnusableInput`) naming ``path``.
    """
    def take(n: int, what: str) -> bytes:
        b = fh.read(n)
        if len(b) < n:
            raise BadGgml(f"GGML file truncated in the {what}", path)
        return b

    magic = MAGICS.get(struct.unpack("<I", take(4, "magic"))[0])
    if magic is None:
        raise BadGgml("not a GGML file: bad magic", path)
    version = 0 if magic == "ggml" else struct.unpack("<I", take(4, "version"))[0]
    if (magic == "ggmf" and version != 1) or (magic == "ggjt" and version not in (1, 2, 3)):
        raise BadGgml(f"{magic} version {version} is unknown", path)
    keys = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
    hp = dict(zip(keys, struct.unpack("<7i", take(28, "hparams")), strict=True))
    if (not 0 < hp["n_vocab"] * 4 <= size or hp["n_vocab"] > MAX_VOCAB or hp["n_embd"] <= 0
            or not 0 < hp["n_layer"] <= MAX_LAYERS or hp["n_head"] <= 0 or hp["n_mult"] <= 0):
        raise BadGgml(f"implausible GGML hparams {hp}", path)
    for i in range(hp["n_vocab"]):
        n = struct.unpack("<I", take(4, f"vocab (token {i})"))[0]
        if n > 1024:
            raise BadGgml(f"GGML vocab token {i} claims {n} bytes", path)
        take(n + (0 if magic == "ggml" else 4), f"vocab (token {i})")
    g = GgmlFile(Path(path), magic, version, hp, size, fh.tell())
    pos = fh.tell()
    while pos < size:
        head = fh.read(12)
        if len(head) < 12:
            g.truncated = f"tensor header at {pos}"
            break
        n_dims, name_len, ttype = struct.unpack("<3i", head)
        if not 1 <= n_dims <= 4 or not 0 < name_len <= _MAX_NAME:
            raise BadGgml(f"corrupt GGML tensor header at offset {pos}", path)
        rest = fh.read(4 * n_dims + name_len)
        if len(rest) < 4 * n_dims + name_len:
            g.truncated = f"tensor header at {pos}"
            break
        dims = struct.unpack(f"<{n_dims}i", rest[: 4 * n_dims])
        name = rest[4 * n_dims:].decode("utf-8", errors="replace")
        if any(d <= 0 for d in dims):
            raise BadGgml(f"GGML tensor {name!r} at offset {pos} has dims {list(dims)}", path)
        try:
            tname = GGMLQuantizationType(ttype).name
        except ValueError:
            raise BadGgml(f"GGML tensor {name!r} has unknown type {ttype}", path) from None
        data = fh.tell()
        if magic == "ggjt":
            data = -(-data // ALIGN) * ALIGN
        nbytes = _tensor_bytes(tname, math.prod(dims), magic, version)
        g.tensors.append(GgmlTensor(name, tname, tuple(dims), data, nbytes))
        pos = data + nbytes
        if pos > size:
            g.truncated = f"data of {name}"
            break
        fh.seek(pos)
    return g


def n_ff(n_embd: int, n_mult: int) -> int:
    """llama.cpp's feed-forward width from n_mult."""
    return ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult


def shape_from_hparams(hp: dict[str, int]) -> ModelShape:
    return ModelShape("llama", hp["n_embd"], n_ff(hp["n_embd"], hp["n_mult"]), hp["n_layer"], hp["n_head"],
                      hp["n_head"], hp["n_embd"] // hp["n_head"], hp["n_vocab"], False, False)


def expected_tensors(shape: ModelShape) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """ggjt tensor names in file order -> (dims ne0 first, role, layer)."""
    h, m, v = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    out = {"tok_embeddings.weight": ((h, v), "token_embd", -1), "norm.weight": ((h,), "output_norm", -1),
           "output.weight": ((h, v), "output", -1)}
    dims = {"attn_q": (h, h), "attn_k": (h, h), "attn_v": (h, h), "attn_output": (h, h), "attn_norm": (h,),
            "ffn_gate": (h, m), "ffn_down": (m, h), "ffn_up": (h, m), "ffn_norm": (h,)}
    for i in range(shape.num_layers):
        for role in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "ffn_gate", "ffn_down", "ffn_up", "ffn_norm"):
            out[f"layers.{i}.{gguf_mix.LAYER_ROLES[role]}.weight"] = (dims[role], role, i)
    return out


def expected_types(shape: ModelShape, ftype: str) -> dict[str, str]:
    """The mid-2023 llama.cpp mix (:func:`..gguf.mix.role_type` with ``rules="2023"``)."""
    return {n: gguf_mix.role_type(role, layer, shape.num_layers, ftype, ne0=dims[0], rules="2023")
            for n, (dims, role, layer) in expected_tensors(shape).items()}


def _layout(shape: ModelShape, types: dict[str, str], start: int) -> tuple[int, dict[str, int]]:
    """End offset of a ggjt v3 tensor section starting at ``start``, and bytes per role."""
    pos, parts = start, dict[str, int]()
    for name, (dims, role, _l) in expected_tensors(shape).items():
        pos += 12 + 4 * len(dims) + len(name)
        pad = -pos % ALIGN
        nb = gt.tensor_bytes(types[name], dims)
        kind = "norms" if role in gguf_mix.NORM_ROLES else role
        parts[kind] = parts.get(kind, 0) + nb
        parts["tensor_headers"] = parts.get("tensor_headers", 0) + 12 + 4 * len(dims) + len(name) + pad
        pos += pad + nb
    return pos, parts


def predict_size(shape: ModelShape, type: str = "q4_0", **_: Any) -> SizeEstimate:
    """Size of a llama ggjt v3 file: header, vocab with scores, per-tensor headers, 32-byte padding, data.

    Exact except the vocabulary's token text (``_VOCAB_TEXT_BYTES_PER_TOKEN`` per token).
    Types follow the June 2023 mix (output.weight keeps the base type).
    """
    ftype = gt.canonical_ftype(type)
    types = expected_types(shape, ftype)
    vocab = shape.vocab_size * 8 + int(shape.vocab_size * _VOCAB_TEXT_BYTES_PER_TOKEN)
    end, parts = _layout(shape, types, 36 + vocab)
    parts["header_vocab"] = 36 + vocab
    tensors = [(n, types[n], gt.tensor_bytes(types[n], d)) for n, (d, _r, _l) in expected_tensors(shape).items()]
    return SizeEstimate(NAME, {"type": ftype[:2].lower() + ftype[2:]}, end, parts, tensors, ram_bytes=end + RAM_OVERHEAD_BYTES)


def detect(variant: Variant) -> bool:
    return bool(variant.files_of("ggml"))


def runtimes() -> list[Runtime]:
    return [
        Runtime("llama.cpp", False, "GGML .bin files are not loaded since GGUF (August 2023): convert to GGUF"),
        Runtime("koboldcpp", True, "keeps the legacy GGML loaders"),
        Runtime("transformers", False, "loads GGUF, not legacy GGML"),
    ]


def check(variant: Variant, report: Report) -> None:
    report.format = NAME
    files = variant.files_of("ggml")
    if len(files) == 1:
        _check_file(variant, files[0], report)
    else:
        report.params = {"files": len(files)}
        _common.file_parts(variant, report, {rel: [rel] for rel in files}, _check_file)
    report.runtimes = runtimes()


def _check_file(variant: Variant, rel: str, report: Report) -> None:
    g = read(variant.abspath(rel))
    report.runtimes = runtimes()
    ver = f"{g.magic} v{g.version}" if g.magic != "ggml" else "ggml (unversioned)"
    report.params = {"container": ver, "file_type": g.ftype or g.hparams["ftype"], **g.hparams,
                     "types": sorted({t.type for t in g.tensors})}
    report.warning("legacy-ggml", rel, "", f"{ver} file: current llama.cpp cannot load it; convert it to GGUF")
    end = max((t.offset + t.nbytes for t in g.tensors), default=g.vocab_end)
    for entry in report.files:
        if entry.path == rel:
            entry.expected_size = end
    if g.truncated:
        report.error("file-size", rel, "", f"file is {g.file_size} bytes and ends inside the {g.truncated}: truncated")
    shape = shape_from_hparams(g.hparams)
    expected = expected_tensors(shape)
    have = {t.name: t for t in g.tensors}
    for name, (dims, _role, _l) in expected.items():
        if name not in have:
            report.error("missing-tensor", rel, name, f"expected from the hparams, dims {list(dims)}")
        elif have[name].shape != dims:
            report.error("wrong-shape", rel, name, f"dims {list(have[name].shape)}, the hparams imply {list(dims)}")
    for name in have:
        if name not in expected:
            report.error("unexpected-tensor", rel, name, "not a tensor of a llama GGML file with these hparams")
    if g.ftype is None:
        return
    mix = expected_types(shape, g.ftype)
    diffs = sorted(n for n, t in have.items() if n in mix and mix[n] != t.type)
    if diffs:
        report.warning("mix-mismatch", rel, ", ".join(diffs[:5]),
                       f"{len(diffs)} tensors differ from the June 2023 {g.ftype} mix "
                       f"(e.g. {have[diffs[0]].type} vs {mix[diffs[0]]})")
    if g.magic == "ggjt" and g.version == 3:
        predicted, _parts = _layout(shape, mix, g.vocab_end)
        report.predicted_bytes = predicted
        sev = report.info if predicted == g.file_size else report.warning
        sev("size", rel, "", f"size {g.file_size} bytes vs predicted {predicted} for {g.ftype}")


def write_variant(path: str | Path, config: dict[str, Any], ftype: str = "q4_0", seed: int = 0) -> dict[str, np.ndarray]:
    """Write a small real ggjt v3 llama file; returns the dequantized tensors ([rows, cols])."""
    from gguf import quants

    from ..gguf import quantize_rows

    path = Path(path)
    if path.suffix != ".bin":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"ggml-model-{ftype}.bin"
    shape = ModelShape.from_config(config)
    n_mult = next((m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if n_ff(shape.hidden_size, m) == shape.intermediate_size), None)
    if n_mult is None or shape.num_kv_heads != shape.num_heads:
        raise ValueError("GGML v3 llama needs intermediate_size from n_mult and no GQA")
    key = gt.canonical_ftype(ftype)
    types = expected_types(shape, key)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    with path.open("wb") as fh:
        fh.write(struct.pack("<II7i", 0x67676A74, 3, shape.vocab_size, shape.hidden_size, n_mult, shape.num_heads,
                             shape.num_layers, shape.head_dim, gt.FTYPES[key][0]))
        for i in range(shape.vocab_size):
            text = f"<t{i}>".encode()
            fh.write(struct.pack("<I", len(text)) + text + struct.pack("<f", 0.0))
        for name, (dims, role, _l) in expected_tensors(shape).items():
            x = np.ones((1, dims[0]), np.float32) if role in gguf_mix.NORM_ROLES else (
                rng.standard_normal((int(np.prod(dims)) // dims[0], dims[0])) * 0.02).astype(np.float32)
            t = types[name]
            raw = x if t == "F32" else quantize_rows(x, t)
            fh.write(struct.pack(f"<3i{len(dims)}i", len(dims), len(name), int(GGMLQuantizationType[t]), *dims) + name.encode())
            fh.write(b"\0" * (-fh.tell() % ALIGN))
            fh.write(np.ascontiguousarray(raw).tobytes())
            out[name] = (x if t == "F32"
                         else np.asarray(quants.dequantize(raw, GGMLQuantizationType[t]), np.float32).reshape(x.shape))
    return out


def dequantize(variant: Variant, name: str) -> np.ndarray:
    """float32 [rows, cols] of one tensor of a ggjt v3 file (v1/v2 block layouts are not decoded)."""
    from gguf import quants

    files = variant.files_of("ggml")
    if len(files) != 1:
        raise UnusableInput(f"expected one GGML file, found {len(files)}", variant.path)
    g = read(variant.abspath(files[0]))
    t = next((t for t in g.tensors if t.name == name), None)
    if t is None:
        raise UnusableInput(f"no tensor {name!r} in this GGML file", variant.path)
    if g.magic != "ggjt" or g.version != 3 or t.offset + t.nbytes > g.file_size:
        raise UnusableInput(f"cannot dequantize {name}: only complete ggjt v3 files are decoded", variant.path)
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[t.type]]
    if t.shape[0] % block:
        raise UnusableInput(f"cannot dequantize {name}: rows of {t.shape[0]} are not whole {t.type} blocks of {block}",
                            variant.path)
    with open(g.path, "rb") as fh:
        fh.seek(t.offset)
        raw = np.frombuffer(fh.read(t.nbytes), np.uint8).reshape(-1, t.shape[0] // block * block_bytes)
    return np.asarray(quants.dequantize(raw, GGMLQuantizationType[t.type]), np.float32).reshape(-1, t.shape[0])


__all__ = ["NAME", "read", "detect", "check", "predict_size", "expected_types", "write_variant", "dequantize", "runtimes"]
