"""Mutation fuzzing of ``mcard.core.validate.inspect`` and ``mcard.api.dequantize``.

Seeds are real variants written by the format builders for ``tiny_config()``;
each mutation changes one file of a copy (bytes of the header region,
truncation, the safetensors JSON header, a config value, a GGUF kv/tensor-info
field, a GGML hparam or tensor header). Any exception other than
:class:`mcard.core.errors.McardError` is a crash.

Used by ``tests/core/test_fuzz_validate.py`` (a few hundred examples) and runnable as
a longer campaign::

    python tests/tools/fuzzkit.py --count 20000 --seed 1

The structure-aware campaigns through the CLI (:mod:`fuzzcli`: registry entries,
cards, variants, hostile Hub listings), where a printed ``internal error`` or a
traceback is a failure, run with ``--kind``::

    python tests/tools/fuzzkit.py --kind listing --count 2000 --seed 1
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcard import api
from mcard.core.arch import tiny_config
from mcard.core.errors import McardError

# -- seeds --------------------------------------------------------------------------
# name -> (builder(folder), a name api.dequantize accepts, or None)
Q_PROJ = "model.layers.0.self_attn.q_proj"


def _gptq(folder: Path, **kw: Any) -> None:
    from mcard.formats import gptq

    gptq.write_variant(folder, tiny_config(), **kw)


def _awq(folder: Path, **kw: Any) -> None:
    from mcard.formats import awq

    awq.write_variant(folder, tiny_config(), **kw)


def _bnb(folder: Path) -> None:
    from mcard.formats import bnb

    bnb.write_variant(folder, tiny_config())


def _lora(folder: Path) -> None:
    from mcard.formats import lora

    lora.write_variant(folder, tiny_config(), r=8, base_config=True)


def _hf(folder: Path) -> None:
    from mcard.formats import hf

    hf.write_variant(folder, tiny_config())


def _gguf(folder: Path, ftype: str) -> None:
    from mcard.formats import gguf

    gguf.write_variant(folder / f"model-{ftype}.gguf", tiny_config(), ftype=ftype)


def _ggml(folder: Path, ftype: str) -> None:
    from mcard.formats import ggml

    cfg = tiny_config(num_key_value_heads=4, intermediate_size=768)
    ggml.write_variant(folder / f"ggml-model-{ftype}.bin", cfg, ftype=ftype)


def _torch_zip(folder: Path) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4, dtype=torch.float16),
                "model.norm.weight": torch.ones(4)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(tiny_config()))


def _hf_and_pickle(folder: Path) -> None:
    _hf(folder)
    import torch

    torch.save({"w": torch.zeros(2)}, folder / "training_args.bin")


SEEDS: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "gptq": (lambda f: _gptq(f), Q_PROJ),
    "gptq-cfgjson-actorder": (lambda f: _gptq(f, desc_act=True, group_size=64, config_file="config.json"), Q_PROJ),
    "gptq-3bit-v2": (lambda f: _gptq(f, bits=3, group_size=32, checkpoint_format="gptq_v2"), Q_PROJ),
    "awq": (lambda f: _awq(f), Q_PROJ),
    "awq-gemv-quantcfg": (lambda f: _awq(f, version="gemv", config_style="quant_config.json", group_size=64), Q_PROJ),
    "bnb": (_bnb, Q_PROJ),
    "lora": (_lora, Q_PROJ),
    "hf": (_hf, None),
    "gguf-q4km": (lambda f: _gguf(f, "Q4_K_M"), "blk.0.attn_q.weight"),
    "gguf-q8_0": (lambda f: _gguf(f, "Q8_0"), "blk.0.attn_q.weight"),
    "ggml-q4_0": (lambda f: _ggml(f, "q4_0"), "layers.0.attention.wq.weight"),
    "ggml-q4km": (lambda f: _ggml(f, "q4_K_M"), "layers.0.attention.wq.weight"),
    "torch-zip": (_torch_zip, None),
    "hf+pickle": (_hf_and_pickle, None),
}


def build_seeds(root: Path) -> dict[str, Path]:
    out = {}
    for name, (builder, _dq) in SEEDS.items():
        folder = root / name
        if not folder.exists():
            folder.mkdir(parents=True)
            builder(folder)
        out[name] = folder
    return out


# -- interesting values ----------------------------------------------------------------
INTS = [0, 1, -1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 127, 128, 255, 256, 257, 1023, 1024, 4096, 65535, 65536,
        2**31 - 1, 2**31, -2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
JSON_VALUES: list[Any] = [None, True, False, 0, -1, 1, 3, 5, 16, 2**40, 10**30, -10**30, 1.5, -0.0, 1e308,
                          float("nan"), float("inf"), float("-inf"), "", "4", "abc", "-1", "nan",
                          [], [4], [1, 2], {}, {"a": 1}, "\u00ff"]
DTYPES = ["F16", "BF16", "F32", "F64", "I32", "I64", "U8", "I8", "BOOL", "U32", "F8_E4M3", "Q4", "", "f16",
          None, 3, ["F16"], {"x": 1}]


def interesting_json(rnd: random.Random, depth: int = 0) -> Any:
    r = rnd.random()
    if r < 0.55 or depth > 2:
        return copy.deepcopy(rnd.choice(JSON_VALUES))  # never share (and then mutate) the list constants
    if r < 0.75:
        return rnd.choice(INTS) * rnd.choice([1, -1])
    if r < 0.9:
        return [interesting_json(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {rnd.choice(["bits", "group_size", "x", "", "dtype"]): interesting_json(rnd, depth + 1)}


def deep_json(rnd: random.Random) -> str:
    n = rnd.choice([100, 1000, 5000, 50000, 200000])
    if rnd.random() < 0.5:
        return "[" * n + "]" * n
    return '{"a":' * n + "1" + "}" * n


# -- generic byte mutations ----------------------------------------------------------------
def mutate_bytes(data: bytes, rnd: random.Random, region: int = 4096) -> bytes:
    buf = bytearray(data)
    if not buf:
        return bytes([rnd.randrange(256)])
    op = rnd.randrange(7)
    lim = min(len(buf), region)
    if op == 0:  # flip bits
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(lim)
            buf[i] ^= 1 << rnd.randrange(8)
    elif op == 1:  # overwrite random bytes
        for _ in range(rnd.randint(1, 8)):
            buf[rnd.randrange(lim)] = rnd.choice([0, 0xFF, 0x7F, 0x80, 0x01, rnd.randrange(256)])
    elif op == 2:  # overwrite an aligned integer with an interesting value
        width = rnd.choice([1, 2, 4, 8])
        i = rnd.randrange(0, max(1, lim - width + 1))
        i -= i % width
        v = rnd.choice(INTS) % (1 << (8 * width))
        buf[i:i + width] = v.to_bytes(width, "little")
    elif op == 3:  # truncate anywhere
        return bytes(buf[: rnd.randrange(len(buf))])
    elif op == 4:  # truncate in the header region
        return bytes(buf[: rnd.randrange(lim + 1)])
    elif op == 5:  # delete a few bytes
        i = rnd.randrange(lim)
        del buf[i:i + rnd.randint(1, 16)]
    else:  # insert a few bytes
        i = rnd.randrange(lim)
        buf[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
    return bytes(buf)


# -- safetensors header mutations ------------------------------------------------------------
def _split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_safetensors(doc: Any, body: bytes, rnd: random.Random, text: str | None = None) -> bytes:
    raw = (text if text is not None else json.dumps(doc, separators=(",", ":"))).encode("utf-8", "surrogatepass")
    if rnd.random() < 0.7:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_safetensors(data: bytes, rnd: random.Random) -> bytes:
    try:
        doc, body = _split_safetensors(data)
    except Exception:  # noqa: BLE001 - already mutated beyond JSON: fall back to bytes
        return mutate_bytes(data, rnd)
    names = [k for k in doc if k != "__metadata__"]
    op = rnd.randrange(12)
    name = rnd.choice(names) if names else None
    if op == 0 and name:  # dtype
        doc[name]["dtype"] = rnd.choice(DTYPES)
    elif op == 1 and name:  # one dimension
        shape = doc[name]["shape"]
        if shape and rnd.random() < 0.8:
            shape[rnd.randrange(len(shape))] = rnd.choice(INTS + [-5, 1.5, "8", None, True, [2]])
        else:
            doc[name]["shape"] = rnd.choice([[], [0], [2**62, 2**62], [-1], [2**40] * 8, "abc", None, 5, [[1]]])
    elif op == 2 and name:  # offsets
        off = doc[name]["data_offsets"]
        choice = rnd.randrange(5)
        if choice == 0:
            off[rnd.randrange(2)] = rnd.choice(INTS + [-8])
        elif choice == 1:
            doc[name]["data_offsets"] = off[::-1]
        elif choice == 2:
            doc[name]["data_offsets"] = rnd.choice([[], [0], [0, 1, 2], None, "0,1", [1.5, 2], [None, 1]])
        else:
            doc[name]["data_offsets"] = [off[0] + rnd.randint(-64, 64), off[1] + rnd.randint(-64, 64)]
    elif op == 3 and name:  # drop a key of an entry, or the entry
        if rnd.random() < 0.5:
            doc[name].pop(rnd.choice(["dtype", "shape", "data_offsets"]), None)
        else:
            del doc[name]
    elif op == 4 and name:  # rename a tensor (other suffix, other layer, garbage)
        new = rnd.choice([
            name.rsplit(".", 1)[0] + "." + rnd.choice(["qweight", "qzeros", "scales", "g_idx", "bias", "weight",
                                                       "absmax", "quant_map", "quant_state.bitsandbytes__nf4",
                                                       "nested_absmax", "lora_A.weight", "lora_B.weight"]),
            name.replace("layers.0", rnd.choice(["layers.99", "layers.-1", "layers.x", "layers.999999999999999999"])),
            "", "\u00ff" * 3, name + ".x",
        ])
        doc[new] = doc.pop(name)
    elif op == 5 and name:  # entry replaced by a non-object
        doc[name] = interesting_json(rnd)
    elif op == 6:  # metadata
        doc["__metadata__"] = rnd.choice([None, {}, [], "x", 3, {"format": interesting_json(rnd)},
                                          {"format": "pt", "x": {"y": 1}}, {"format": "np"}])
    elif op == 7:  # the whole header is something else
        return _join_safetensors(None, body, rnd, text=rnd.choice(
            ["[]", "null", "1", '"x"', "{", "", "{}", deep_json(rnd), '{"a": 1e999999}', '{"a": NaN}',
             '{"a":{"dtype":"F16","shape":[1e400],"data_offsets":[0,2]}}',
             '{"a":{"dtype":"F16","shape":[' + "9" * 5000 + '],"data_offsets":[0,2]}}',
             '{"a":1,"a":2}']))
    elif op == 8:  # non-UTF-8 inside the header text
        text = json.dumps(doc, separators=(",", ":")).encode()
        i = rnd.randrange(len(text))
        raw = text[:i] + rnd.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + text[i + 1:]
        return struct.pack("<Q", len(raw)) + raw + body
    elif op == 9:  # header length field
        text = json.dumps(doc, separators=(",", ":")).encode()
        n = rnd.choice([0, 1, 7, len(text) - 1, len(text) + 1, len(text) + len(body), 2**63, 100_000_001, 2**64 - 1])
        return struct.pack("<Q", n % 2**64) + text + body
    elif op == 10 and name:  # a duplicate key in the text
        text = json.dumps(doc, separators=(",", ":"))
        extra = json.dumps({name: doc[name]})[1:-1]
        return _join_safetensors(None, body, rnd, text="{" + extra + "," + text[1:])
    elif op == 11 and name:  # extra dims / numbers as strings / floats
        doc[name]["shape"] = [d if rnd.random() < 0.7 else rnd.choice([float(d) if isinstance(d, int) else 1.0, str(d)])
                              for d in doc[name]["shape"]] + ([1] if rnd.random() < 0.3 else [])
    else:
        return mutate_bytes(data, rnd)
    if rnd.random() < 0.3:  # also cut the data buffer
        body = body[: rnd.randrange(len(body) + 1)]
    return _join_safetensors(doc, body, rnd)


# -- JSON config mutations -------------------------------------------------------------------
CONFIG_KEYS = ["bits", "group_size", "desc_act", "sym", "checkpoint_format", "damp_percent", "w_bit",
               "q_group_size", "zero_point", "version", "quant_method", "is_marlin_format", "hidden_size",
               "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "vocab_size", "model_type", "torch_dtype", "tie_word_embeddings", "attention_bias",
               "quantization_config", "r", "lora_alpha", "target_modules", "base_model_name_or_path",
               "peft_type", "task_type", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
               "load_in_4bit", "load_in_8bit", "bnb_4bit_compute_dtype", "modules_to_not_convert",
               "layers_to_transform", "rank_pattern", "alpha_pattern", "use_dora", "fan_in_fan_out", "bias",
               "lora_dropout", "modules_to_save", "weight_map", "metadata", "total_size", "dtype"]


def _mutate_obj(obj: dict[str, Any], rnd: random.Random, depth: int = 0) -> None:
    keys = list(obj)
    nested = [k for k in keys if isinstance(obj[k], dict)]
    if nested and depth < 3 and rnd.random() < 0.4:
        _mutate_obj(obj[rnd.choice(nested)], rnd, depth + 1)
        return
    op = rnd.randrange(4)
    if op == 0 and keys:
        del obj[rnd.choice(keys)]
    elif op == 1 and keys:
        k = rnd.choice(keys)
        v = obj[k]
        if isinstance(v, list) and v and rnd.random() < 0.5:
            v[rnd.randrange(len(v))] = interesting_json(rnd)
        else:
            obj[k] = interesting_json(rnd)
    else:
        obj[rnd.choice(CONFIG_KEYS)] = interesting_json(rnd)


def mutate_json(data: bytes, rnd: random.Random) -> bytes:
    try:
        doc = json.loads(data)
    except Exception:  # noqa: BLE001 - mutated bytes may fail to decode in any way: mutate them as bytes
        doc = None
    r = rnd.random()
    if r < 0.08 or not isinstance(doc, dict):
        return rnd.choice([b"", b"[]", b"null", b"{", b"\xff\xfe{}", b'{"bits": 4, "bits": 8}', b"1e999",
                           deep_json(rnd).encode(), b'{"a": "\xc3"}'])
    if r < 0.14:
        return mutate_bytes(data, rnd)
    for _ in range(rnd.randint(1, 3)):
        _mutate_obj(doc, rnd)
    return json.dumps(doc, indent=1).encode()  # allow_nan: writes NaN / Infinity


# -- GGUF structured mutations ------------------------------------------------------------------
def gguf_fields(data: bytes) -> list[tuple[int, int, str]]:
    """(offset, width, role) of every count, length, type id and dim in a well-formed GGUF header."""
    out: list[tuple[int, int, str]] = [(4, 4, "version"), (8, 8, "n_tensors"), (16, 8, "n_kv")]
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    widths = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(vt: int) -> None:
        nonlocal pos
        if vt == 8:
            out.append((pos, 8, "strlen"))
            (n,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + n
        elif vt == 9:
            out.append((pos, 4, "array type"))
            out.append((pos + 4, 8, "array count"))
            sub, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if sub in widths:
                if count:
                    out.append((pos, widths[sub], "array item"))
                pos += count * widths[sub]
            else:
                for _ in range(count):
                    value(sub)
        else:
            out.append((pos, widths[vt], "scalar"))
            pos += widths[vt]

    for _ in range(n_kv):
        out.append((pos, 8, "key len"))
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        out.append((pos, 4, "kv type"))
        (vt,) = struct.unpack_from("<I", data, pos)
        pos += 4
        value(vt)
    for _ in range(n_tensors):
        out.append((pos, 8, "name len"))
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        out.append((pos, 4, "n_dims"))
        (nd,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(nd):
            out.append((pos, 8, "dim"))
            pos += 8
        out.append((pos, 4, "type id"))
        out.append((pos + 4, 8, "offset"))
        pos += 12
    return out


def mutate_gguf(data: bytes, rnd: random.Random, fields: list[tuple[int, int, str]] | None = None) -> bytes:
    if rnd.random() < 0.3:
        return mutate_bytes(data, rnd, region=len(data) if rnd.random() < 0.2 else 8192)
    try:
        fields = fields or gguf_fields(data)
    except Exception:  # noqa: BLE001 - a header mutated beyond parsing: mutate bytes instead
        return mutate_bytes(data, rnd)
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 2)):
        off, width, role = rnd.choice(fields)
        if role in ("kv type", "array type"):
            v = rnd.choice(list(range(14)) + [255, 2**31, 2**32 - 1])
        elif role == "type id":
            v = rnd.choice(list(range(42)) + [99, 2**31, 2**32 - 1])
        elif role == "n_dims":
            v = rnd.choice([0, 1, 2, 3, 4, 5, 2**32 - 1])
        elif role == "version":
            v = rnd.choice([0, 1, 2, 3, 4])
        else:
            v = rnd.choice(INTS)
        buf[off:off + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
    if rnd.random() < 0.15:
        return bytes(buf[: rnd.randrange(len(buf) + 1)])
    return bytes(buf)


# -- GGML structured mutations --------------------------------------------------------------------
def ggml_fields(data: bytes) -> list[tuple[int, int, str]]:
    out = [(4, 4, "version")] + [(8 + 4 * i, 4, "hparam") for i in range(7)]
    n_vocab = struct.unpack_from("<i", data, 8)[0]
    pos = 36
    for i in range(n_vocab):
        (n,) = struct.unpack_from("<I", data, pos)
        if i < 4:
            out.append((pos, 4, "token len"))
        pos += 4 + n + 4
    while pos + 12 <= len(data):
        n_dims, name_len, _t = struct.unpack_from("<3i", data, pos)
        out += [(pos, 4, "n_dims"), (pos + 4, 4, "name len"), (pos + 8, 4, "type id")]
        out += [(pos + 12 + 4 * i, 4, "dim") for i in range(n_dims)]
        dims = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        pos += 12 + 4 * n_dims + name_len
        pos += -pos % 32
        from gguf.constants import GGMLQuantizationType

        from mcard.formats.ggml import _tensor_bytes

        n = 1
        for d in dims:
            n *= d
        pos += _tensor_bytes(GGMLQuantizationType(_t).name, n, "ggjt", 3)
    return out


def mutate_ggml(data: bytes, rnd: random.Random, fields: list[tuple[int, int, str]] | None = None) -> bytes:
    if rnd.random() < 0.3:
        return mutate_bytes(data, rnd, region=len(data) if rnd.random() < 0.2 else 8192)
    try:
        fields = fields or ggml_fields(data)
    except Exception:  # noqa: BLE001 - a header mutated beyond parsing: mutate bytes instead
        return mutate_bytes(data, rnd)
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 2)):
        off, width, role = rnd.choice(fields)
        if role == "type id":
            v = rnd.choice(list(range(42)) + [99, -1, 2**31 - 1])
        elif role == "version":
            v = rnd.choice([0, 1, 2, 3, 4])
        elif role == "hparam":
            v = rnd.choice(INTS + [-5, 3, 5, 10, 100, 768, 255])
        else:
            v = rnd.choice(INTS + [-5])
        buf[off:off + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
    if rnd.random() < 0.15:
        return bytes(buf[: rnd.randrange(len(buf) + 1)])
    return bytes(buf)


# -- one example --------------------------------------------------------------------------------
def mutate_file(rel: str, data: bytes, rnd: random.Random) -> bytes:
    if rel.endswith(".safetensors"):
        return mutate_safetensors(data, rnd) if rnd.random() < 0.75 else mutate_bytes(data, rnd)
    if rel.endswith(".json"):
        return mutate_json(data, rnd)
    if data[:4] == b"GGUF":
        return mutate_gguf(data, rnd)
    if data[:4] in (b"tjgg", b"fmgg", b"lmgg"):
        return mutate_ggml(data, rnd)
    return mutate_bytes(data, rnd, region=len(data) if rnd.random() < 0.3 else 4096)


def make_case(seed_dir: Path, dest: Path, rnd: random.Random) -> list[str]:
    """Copy ``seed_dir`` to ``dest`` (hard links) and mutate 1-2 of its files; returns what changed."""
    files = sorted(p.relative_to(seed_dir).as_posix() for p in seed_dir.rglob("*") if p.is_file())
    n = 1 if rnd.random() < 0.8 else 2
    targets = rnd.sample(files, min(n, len(files)))
    for rel in files:
        if rel not in targets:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(seed_dir / rel, dest / rel)
    for rel in targets:
        data = (seed_dir / rel).read_bytes()
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(mutate_file(rel, data, rnd))
    if rnd.random() < 0.1 and len(files) > 1:  # and maybe delete a file
        victim = rnd.choice(files)
        (dest / victim).unlink()
        targets.append(f"-{victim}")
    return targets


def run_target(path: Path, dq_name: str | None) -> None:
    """validate, and dequantize when a name is given; McardError is the expected failure."""
    try:
        api.inspect(path)
    except McardError:
        pass
    if dq_name is not None:
        try:
            api.dequantize(path, dq_name)
        except McardError:
            pass


def _single_file(seed: str, dest: Path) -> Path:
    """GGUF/GGML seeds are also checked as single files, as `mcard validate FILE` does."""
    files = [p for p in dest.iterdir() if p.is_file()]
    return files[0] if len(files) == 1 and seed.startswith(("gguf", "ggml")) else dest


def campaign(count: int, seed: int, root: Path, only: str | None = None) -> list[tuple[str, int, str]]:
    seeds = build_seeds(root / "seeds")
    names = [n for n in seeds if only is None or n.startswith(only)]
    crashes: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    for i in range(count):
        rnd = random.Random(seed * 1_000_003 + i)
        name = rnd.choice(names)
        case = Path(tempfile.mkdtemp(dir=root))
        try:
            make_case(seeds[name], case, rnd)
            target = _single_file(name, case)
            t0 = time.perf_counter()
            try:
                run_target(target, SEEDS[name][1])
                took = time.perf_counter() - t0
                if took > 2.0:
                    print(f"SLOW #{i} [{name}] {took:.1f}s", flush=True)
                    shutil.copytree(case, root / f"slow-{i}")
            except Exception as exc:  # noqa: BLE001 - that is what we are looking for
                tb = traceback.extract_tb(exc.__traceback__)
                where = f"{type(exc).__name__} at {Path(tb[-1].filename).name}:{tb[-1].lineno} ({tb[-1].name})"
                if where not in seen:
                    seen.add(where)
                    print(f"CRASH #{i} [{name}] {where}: {str(exc)[:200]}", flush=True)
                    keep = root / f"crash-{i}"
                    shutil.copytree(case, keep)
                crashes.append((name, i, where))
        finally:
            shutil.rmtree(case, ignore_errors=True)
        if (i + 1) % 1000 == 0:
            print(f"{i + 1} done, {len(crashes)} crashes, {len(seen)} distinct", flush=True)
    return crashes


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--root", default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--kind", default="api", choices=["api", "registry", "card", "validate", "listing"],
                    help="api: inspect/dequantize in-process; the others: CLI campaigns (fuzzcli.py)")
    args = ap.parse_args()
    if args.kind != "api":
        import fuzzcli

        failed = fuzzcli.campaign(args.kind, args.count, args.seed, args.root)
        print(f"{args.count} {args.kind} cases, {len(failed)} failures")
        sys.exit(1 if failed else 0)
    root = Path(args.root or tempfile.mkdtemp(prefix="mcard-fuzz-"))
    root.mkdir(parents=True, exist_ok=True)
    found = campaign(args.count, args.seed, root, args.only)
    print(f"{args.count} cases, {len(found)} crashes, {len({w for _n, _i, w in found})} distinct; kept under {root}")
    sys.exit(1 if found else 0)
