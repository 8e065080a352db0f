"""The kv section llama.cpp's converter and quantizer write for a llama-family model, from its folder.

``convert_hf_to_gguf.py`` (llama.cpp commit in ``tests/fixtures/llamacpp/README.md``)
writes, for a ``LlamaForCausalLM`` folder:

* ``general.architecture``, ``general.type``, ``general.name`` (the folder name,
  title-cased), ``general.size_label`` (the parameter count, e.g. ``186K``, ``7.2B``);
* the hyperparameters ``llama.*`` present in ``config.json``;
* ``tokenizer.ggml.add_space_prefix`` when ``tokenizer_config.json`` sets ``add_prefix_space``;
* with a SentencePiece ``tokenizer.model``: ``tokenizer.ggml.model`` = ``llama``,
  ``tokenizer.ggml.pre`` = ``default``, the tokens (the model's pieces, ``[PAD<i>]`` up to
  ``vocab_size``), their scores and types, special token ids from ``config.json``,
  ``add_bos``/``add_eos`` and the chat template from ``tokenizer_config.json``;
* with a BPE ``tokenizer.json`` instead: its gpt2 path, counted by :mod:`.bpe`;

and llama-quantize adds ``general.quantization_version`` and ``general.file_type``
(and ``quantize.imatrix.*`` with an importance matrix, whose file names are the
user's). :func:`kv_prediction` computes those bytes; where the folder holds what it does
not model (a model card whose fields the converter copies, a folder name it would split
into base name, size and fine-tune, a pre-tokenizer convert does not know...) it says why
and the caller keeps its estimate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...core.arch import ModelShape
from ...core.jsonio import MAX_CONFIG_BYTES, load_json_object
from ...core.untrusted import read_capped

# gguf-py's SpecialVocab token types, and the keys gguf's writer stores their ids under (cls has none: skipped)
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
           "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
           "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id"}
ADD_TYPES = ("bos", "eos", "sep")  # tokenizer.ggml.add_<type>_token


def _string(s: str) -> int:
    return 8 + len(s.encode("utf-8"))


def _key(k: str) -> int:
    return _string(k) + 4  # key, value type


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def sentencepiece_pieces(path: Path) -> list[bytes]:
    """The pieces of a SentencePiece model (protobuf ``ModelProto.pieces[].piece``), without sentencepiece.

    Read as every file beside a config is: a regular file, at most ``MAX_CONFIG_BYTES`` (a real one is a few MB).
    """
    buf = read_capped(path, MAX_CONFIG_BYTES)
    pieces: list[bytes] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            n, pos = _varint(buf, pos)
            if field == 1:  # a SentencePiece message: its field 1 is the piece
                sub, end = pos, pos + n
                while sub < end:
                    t2, sub = _varint(buf, sub)
                    if t2 & 7 == 2:
                        m, sub = _varint(buf, sub)
                        if t2 >> 3 == 1:
                            pieces.append(buf[sub:sub + m])
                        sub += m
                    elif t2 & 7 == 5:
                        sub += 4
                    elif t2 & 7 == 0:
                        _v, sub = _varint(buf, sub)
                    else:
                        raise ValueError(f"{path}: unexpected protobuf wire type {t2 & 7}")
            pos += n
        elif wire == 0:
            _v, pos = _varint(buf, pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"{path}: unexpected protobuf wire type {wire}")
    return pieces


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a config that says nothing)."""
    return value if isinstance(value, dict) else {}


def size_label(n_params: int) -> str:
    """gguf-py's ``model_weight_count_rounded_notation`` (two significant digits at least)."""
    for limit, scale, suffix in (  # noqa: B007 - the matching suffix is used after the loop
        (1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M"), (0, 1e-3, "K")):
        if n_params > limit:
            scaled = n_params * scale
            break
    fix = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{fix}f}{suffix}"


def _title(name: str) -> str:
    """gguf-py ``Metadata.id_to_title`` for a name of one component."""
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w
                    for w in name.strip().replace("-", " ").split())


def _first_architecture(cfg: dict[str, Any]) -> Any:
    """``architectures[0]`` of a config (LlamaForCausalLM when not given; None when it is not a list)."""
    archs = cfg.get("architectures", ["LlamaForCausalLM"])
    return archs[0] if isinstance(archs, list) and archs else None


def kv_size(model_dir: Path, cfg: dict[str, Any], shape: ModelShape, imatrix: bool = False) -> int | None:
    """Exact bytes of the kv pairs of a converted-and-quantized GGUF, or None when not modelled."""
    return kv_prediction(model_dir, cfg, shape, imatrix)[0]


def kv_prediction(model_dir: Path, cfg: dict[str, Any], shape: ModelShape,
                  imatrix: bool = False) -> tuple[int | None, str | None]:
    """(exact kv bytes, None), or (None, why the folder is not modelled; None when it holds no tokenizer)."""
    model_dir = Path(model_dir)
    spm = model_dir / "tokenizer.model"
    bpe = model_dir / "tokenizer.json"
    name = model_dir.resolve().name
    if not spm.is_file() and not bpe.is_file():
        return None, None
    for reason, unmodelled in (
            ("an importance matrix (its file names go into the kv section)", imatrix),
            ("a model card (README.md), whose fields convert copies", (model_dir / "README.md").is_file()),
            ("added_tokens.json", (model_dir / "added_tokens.json").is_file()),
            (f"the folder name {name!r}, which convert may split into name, size and fine-tune",
             not re.fullmatch(r"[A-Za-z]+[0-9]*", name)),
            ("an architecture other than LlamaForCausalLM", _first_architecture(cfg) != "LlamaForCausalLM"),
            ("rope_scaling or _name_or_path in config.json", bool(cfg.get("rope_scaling") or cfg.get("_name_or_path"))),
            ("a vocab_size convert treats specially (CodeLlama 32016, Granite 49152)", shape.vocab_size in (32016, 49152))):
        if unmodelled:
            return None, reason
    tc_path = model_dir / "tokenizer_config.json"
    tok_cfg = load_json_object(tc_path) if tc_path.is_file() else {}
    vocab = shape.vocab_size
    if spm.is_file():
        if bpe.is_file() or tok_cfg.get("added_tokens_decoder"):
            return None, "a tokenizer.model with tokenizer.json or added tokens beside it"
        try:
            pieces = sentencepiece_pieces(spm)
        except (ValueError, IndexError):
            return None, "tokenizer.model is not a SentencePiece model mcard can read"
        tokens = [p for p in pieces[:vocab]] + [f"[PAD{i}]".encode() for i in range(len(pieces), vocab)]
        strings = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default"}
        if isinstance(tok_cfg.get("chat_template"), str):
            strings["tokenizer.chat_template"] = tok_cfg["chat_template"]
        specials = [ID_KEYS[t] for t in ID_KEYS if isinstance(cfg.get(f"{t}_token_id"), int)]
        bools = [f"tokenizer.ggml.add_{t}_token" for t in ADD_TYPES if isinstance(tok_cfg.get(f"add_{t}_token"), bool)]
        tokenizer = (sum(_key(k) + _string(v) for k, v in strings.items()) + sum(_key(k) + 4 for k in specials)
                     + sum(_key(k) + 1 for k in bools)
                     + _key("tokenizer.ggml.tokens") + 12 + sum(8 + len(t) for t in tokens)
                     + _key("tokenizer.ggml.scores") + 12 + 4 * vocab
                     + _key("tokenizer.ggml.token_type") + 12 + 4 * vocab)
    else:
        from .bpe import tokenizer_kv

        bpe_bytes, detail = tokenizer_kv(model_dir, cfg, vocab)
        if bpe_bytes is None:
            return None, detail
        tokenizer = bpe_bytes
    if isinstance(tok_cfg.get("add_prefix_space"), bool):  # convert's llama set_vocab, whatever the tokenizer
        tokenizer += _key("tokenizer.ggml.add_space_prefix") + 1
    strings = {"general.architecture": "llama", "general.type": "model", "general.name": _title(name),
               "general.size_label": size_label(shape.parameter_count())}
    u32 = ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
           "llama.vocab_size", "llama.rope.dimension_count", "general.quantization_version", "general.file_type"]
    if cfg.get("max_position_embeddings") is not None:
        u32.append("llama.context_length")
    if cfg.get("num_key_value_heads") is not None:
        u32.append("llama.attention.head_count_kv")
    if cfg.get("head_dim") is not None:
        u32 += ["llama.attention.key_length", "llama.attention.value_length"]
    f32 = [k for k, present in (("llama.rope.freq_base", "rope_theta" in cfg),
                                ("llama.attention.layer_norm_rms_epsilon", "rms_norm_eps" in cfg)) if present]
    return (tokenizer + sum(_key(k) + _string(v) for k, v in strings.items())
            + sum(_key(k) + 4 for k in u32 + f32)), None


def bpe_kv_range(model_dir: Path, shape: ModelShape) -> tuple[int, int, int] | None:
    """(estimate, low, high) of the kv section for a BPE ``tokenizer.json`` folder (convert's gpt2 path).

    The tokens (vocabulary and added tokens, ``[PAD<i>]`` up to ``vocab_size``), their
    types and the merges are counted exactly; what stays open is the pre-tokenizer's name
    (convert recognises it by hashing the tokenizer's output), the special token ids it
    finds, the chat template and the ``general.*`` fields from the folder name and model card.
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    doc = load_json_object(path)
    model = _dict(doc.get("model"))
    vocab = model.get("vocab") if isinstance(model.get("vocab"), dict) else None
    if model.get("type") != "BPE" or vocab is None:
        return None
    texts: dict[int, str] = {i: t for t, i in vocab.items() if isinstance(i, int)}
    for added in doc.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int) and isinstance(added.get("content"), str):
            texts[added["id"]] = added["content"]
    n = shape.vocab_size
    tokens = sum(8 + len(texts[i].encode()) if i in texts else 8 + len(f"[PAD{i}]") for i in range(n))
    merges = model.get("merges")
    merges = merges if isinstance(merges, list) else []
    merge_bytes = sum(8 + len((m if isinstance(m, str) else " ".join(map(str, m))).encode())
                      for m in merges if isinstance(m, (str, list)))
    tok_cfg_path = Path(model_dir) / "tokenizer_config.json"
    tok_cfg = load_json_object(tok_cfg_path) if tok_cfg_path.is_file() else {}
    template = tok_cfg.get("chat_template") if isinstance(tok_cfg.get("chat_template"), str) else ""
    exact = (_key("tokenizer.ggml.tokens") + 12 + tokens + _key("tokenizer.ggml.token_type") + 12 + 4 * n
             + (_key("tokenizer.ggml.merges") + 12 + merge_bytes if merges else 0)
             + _key("tokenizer.ggml.model") + _string("gpt2")
             + (_key("tokenizer.chat_template") + _string(template) if template else 0)
             + sum(_key(k) + 4 for k in ("general.quantization_version", "general.file_type", "llama.block_count",
                                          "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                                          "llama.attention.head_count", "llama.attention.head_count_kv",
                                          "llama.vocab_size", "llama.rope.dimension_count", "llama.rope.freq_base",
                                          "llama.attention.layer_norm_rms_epsilon"))
             + _key("general.architecture") + _string("llama") + _key("general.type") + _string("model"))
    # open: tokenizer.ggml.pre (up to ~24 characters), up to 6 special ids and 3 add_* flags,
    # general.name/basename/size_label/finetune (~200 bytes), model card fields (its front matter)
    card = Path(model_dir) / "README.md"
    card_bytes = min(card.stat().st_size, 1 << 16) if card.is_file() else 0
    low = exact + _key("tokenizer.ggml.pre") + _string("")
    high = exact + _key("tokenizer.ggml.pre") + _string("x" * 24) + 6 * (_key("tokenizer.ggml.padding_token_id") + 4) \
        + 3 * (_key("tokenizer.ggml.add_bos_token") + 1) + 400 + 2 * card_bytes
    return (low + high) // 2, low, high


__all__ = ["kv_size", "kv_prediction", "sentencepiece_pieces", "size_label", "bpe_kv_range"]
