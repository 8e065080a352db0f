"""The tokenizer kv pairs convert_hf_to_gguf writes for a BPE ``tokenizer.json``, counted in bytes.

For a llama folder without ``tokenizer.model`` whose ``tokenizer.json`` is not the llama_hf kind
(BPE with byte fallback and a ``Sequence`` decoder), convert (llama.cpp commit
:data:`.bpe_pre.LLAMA_CPP_COMMIT`) takes its gpt2 path:

* it loads the tokenizer with transformers' ``AutoTokenizer``; the tokens are its vocabulary by id,
  ``[PAD<i>]`` up to ``vocab_size``; an added token that is not normalized is encoded and decoded
  back, a user-defined one (not special, not looking special) gets ``▁`` replaced by a space;
* it names ``tokenizer.ggml.pre`` by sha256(str(``tokenizer.encode(CHKTXT)``)) in its table
  (:mod:`.bpe_pre`) and refuses a hash it does not know;
* gguf-py's ``SpecialVocab(load_merges=True)`` adds the merges (a pair with a space in it written with
  U+0120 for the space), special token ids (``tokenizer_config.json``'s tokens found among
  ``added_tokens``, then ``config.json``'s ``*_token_id``), ``add_bos``/``add_eos``/``add_sep`` from
  the post-processor and ``tokenizer_config.json``, the chat template, and the normalizer's
  lowercase/strip-accents flags.

The ``gguf`` package on PyPI (0.19.0) predates that ``SpecialVocab`` (it writes no add flags for a
ByteLevel post-processor and no normalizer flags), so those rules are written out here.
:func:`tokenizer_kv` returns the bytes, or None and the reason where the folder leaves that path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ...core.errors import UnusableInput
from ...core.jsonio import load_json_object
from .bpe_pre import CHKTXT, LLAMA_CPP_COMMIT, PRE_BY_CHKHSH
from .kv import ADD_TYPES, ID_KEYS, SPECIAL_TYPES, _key, _string


def chkhsh(token_ids: list[int]) -> str:
    """convert's fingerprint of a pre-tokenizer: sha256 of the printed token ids of CHKTXT."""
    return hashlib.sha256(str(token_ids).encode()).hexdigest()


def _looks_special(text: str) -> bool:
    """convert's ``does_token_look_special``."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>")) or (text.startswith("<unused") and text.endswith(">")))


def _normalizer_flags(norm: Any, flags: dict[str, bool | None]) -> None:
    if not isinstance(norm, dict):
        return
    kind = norm.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        for name in ("lowercase", "strip_accents"):
            if name in norm:
                flags[name] = norm[name]
    elif kind == "Sequence":
        for sub in norm.get("normalizers") or []:
            _normalizer_flags(sub, flags)


def _special_id(token: Any) -> Any:
    return token.get("SpecialToken", {}).get("id") if isinstance(token, dict) else None


class _Unmodelled(Exception):
    pass


def _special_vocab(model_dir: Path, doc: dict[str, Any], tok_cfg: dict[str, Any] | None, cfg: dict[str, Any]):
    """(special ids, add flags, chat template) as the pinned ``SpecialVocab`` finds them."""
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}
    tc = dict(tok_cfg) if tok_cfg is not None else None

    def token(typ: str) -> Any:
        v = (tc or {}).get(f"{typ}_token")
        return v.get("content") if isinstance(v, dict) else v

    bos, cls, eos, sep = token("bos"), token("cls"), token("eos"), token("sep")
    if tc and not bos and cls:
        tc["bos_token"] = bos = cls
    if tc and not eos and sep:
        tc["eos_token"] = eos = sep
    post = doc.get("post_processor")
    for proc in (post.get("processors", [post]) if isinstance(post, dict) else []):
        kind = proc.get("type") if isinstance(proc, dict) else None
        if kind == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            add.update(bos=True, eos=True, sep=True)
            if tc and not cls:
                tc["cls_token"] = cls = (proc.get("cls") or [bos])[0]
            if tc and not sep:
                tc["sep_token"] = sep = (proc.get("sep") or [eos])[0]
        elif kind == "TemplateProcessing":
            single, pair = proc.get("single") or [], proc.get("pair") or []
            first = last = None
            if len(single) > 1:
                if first := _special_id(single[0]):
                    if not tc:
                        bos = first
                    elif first not in (bos, cls):
                        raise _Unmodelled(f"the post-processor's leading token {first!r} is not bos or cls")
                    add["bos"] = first in (bos, cls)
                if last := _special_id(single[-1]):
                    if not tc:
                        eos = last
                    elif last != eos:
                        raise _Unmodelled(f"the post-processor's trailing token {last!r} is not eos")
                    add["eos"] = last == eos
            if pair:
                start = 1 if first and _special_id(pair[0]) == first else 0
                stop = -1 if last and _special_id(pair[-1]) == last else None
                pair = pair[start:stop]
                a = pair[0].get("Sequence", {}).get("id") if pair and isinstance(pair[0], dict) else None
                b = pair[-1].get("Sequence", {}).get("id") if pair and isinstance(pair[-1], dict) else None
                if a == "A" and b == "B" and (mid := pair[1:-1]):
                    entry = _special_id(mid[0])
                    add_sep = bool(entry) and entry in (sep, eos) and not last
                    if len(mid) == 2 and _special_id(mid[1]) in (sep, eos):
                        add_sep = True
                    add["sep"] = add_sep
                    if add_sep and not sep and tc:
                        tc["sep_token"] = sep = eos
    template = None
    if tc:
        if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
            raise _Unmodelled("a chat_template.jinja/.json file is not modelled")
        template = tc.get("chat_template")
        if not (template is None or isinstance(template, str)):
            raise _Unmodelled("a list of named chat templates is not modelled")
        added = [a for a in doc.get("added_tokens") or [] if isinstance(a, dict)]
        for typ in SPECIAL_TYPES:
            if isinstance(tc.get(f"add_{typ}_token"), bool):
                add.setdefault(typ, tc[f"add_{typ}_token"])
            content = token(typ)
            if isinstance(content, str):
                tid = next((a.get("id") for a in added if a.get("content") == content), None)
                if isinstance(tid, int) and tid >= 0:
                    ids.setdefault(typ, tid)
    for typ in SPECIAL_TYPES:
        tid = cfg.get(f"{typ}_token_id")
        if isinstance(tid, int) and tid >= 0:
            ids.setdefault(typ, tid)
    return ids, add, template


def tokenizer_kv(model_dir: Path, cfg: dict[str, Any], vocab_size: int) -> tuple[int | None, str]:
    """Bytes of the ``tokenizer.*`` kv pairs of convert's gpt2 path and the pre-tokenizer name; or (None, why not)."""
    model_dir = Path(model_dir)
    try:
        doc = load_json_object(model_dir / "tokenizer.json")
        tc_path = model_dir / "tokenizer_config.json"
        tok_cfg = load_json_object(tc_path) if tc_path.is_file() else None
    except UnusableInput as exc:
        return None, str(exc)
    model, decoder = doc.get("model"), doc.get("decoder")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return None, "tokenizer.json's model is not BPE"
    if model.get("byte_fallback") and isinstance(decoder, dict) and decoder.get("type") == "Sequence":
        return None, "a BPE tokenizer.json with byte fallback takes convert's llama_hf path, not modelled"
    if isinstance(tok_cfg, dict) and "auto_map" in tok_cfg:  # code shipped with the folder: never run it
        return None, "tokenizer_config.json names its own tokenizer code (auto_map), which mcard does not run"
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "transformers is not installed (convert_hf_to_gguf reads the tokenizer with it)"
    try:
        # a fast tokenizer only: built by the Rust `tokenizers` from the tokenizer.json read above (under the
        # config cap), no remote code, nothing fetched, no slow tokenizer's own vocabulary files
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False,
                                            use_fast=True)
        if not tok.is_fast:
            return None, "transformers would load a slow tokenizer for this folder; not modelled"
        found = chkhsh(tok.encode(CHKTXT))
    except Exception as exc:  # noqa: BLE001 - whatever stops transformers stops convert too: one line, keep the estimate
        return None, f"transformers cannot load the tokenizer ({type(exc).__name__}: {str(exc)[:120]})"
    pre = PRE_BY_CHKHSH.get(found)
    if pre is None:
        return None, (f"convert_hf_to_gguf (llama.cpp {LLAMA_CPP_COMMIT}) does not know this pre-tokenizer "
                      f"(chkhsh {found}) and refuses to convert it; a newer llama.cpp may know it")
    vocab = tok.vocab
    if vocab and max(vocab.values()) >= vocab_size:
        return None, f"tokenizer ids reach {max(vocab.values())}, beyond vocab_size {vocab_size}: convert refuses it"
    reverse = {i: t for t, i in vocab.items()}
    added, decoders = tok.get_added_vocab(), tok.added_tokens_decoder
    token_bytes = 0
    for i in range(vocab_size):
        text = reverse.get(i)
        if text is None:
            text = f"[PAD{i}]"
        elif text in added:
            if not decoders[i].normalized:
                text = str(tok.decode(tok.encode(text, add_special_tokens=False)))
            if not (decoders[i].special or _looks_special(text)):
                text = text.replace("\u2581", " ")
        token_bytes += _string(text)
    try:
        ids, add, template = _special_vocab(model_dir, doc, tok_cfg, cfg)
    except _Unmodelled as exc:
        return None, str(exc)
    merges = model.get("merges") or []
    if not merges and (model_dir / "merges.txt").is_file():
        return None, "merges.txt beside a tokenizer.json without merges is not modelled"
    if merges and isinstance(merges[0], list):
        merges = [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]
    flags: dict[str, bool | None] = {}
    _normalizer_flags(doc.get("normalizer"), flags)
    total = (_key("tokenizer.ggml.model") + _string("gpt2") + _key("tokenizer.ggml.pre") + _string(pre)
             + _key("tokenizer.ggml.tokens") + 12 + token_bytes + _key("tokenizer.ggml.token_type") + 12 + 4 * vocab_size)
    if merges:
        total += _key("tokenizer.ggml.merges") + 12 + sum(_string(m) for m in merges if isinstance(m, str))
    total += sum(_key(ID_KEYS[t]) + 4 for t in ids if t in ID_KEYS)
    total += sum(_key(f"tokenizer.ggml.add_{t}_token") + 1 for t in add if t in ADD_TYPES)
    total += _key("tokenizer.chat_template") + _string(template) if isinstance(template, str) else 0
    total += sum(_key(f"tokenizer.ggml.normalizer.{name}") + 1 for name, on in flags.items() if on is not None)
    return total, pre


__all__ = ["chkhsh", "tokenizer_kv"]
