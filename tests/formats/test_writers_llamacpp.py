"""mcard against files llama.cpp itself wrote (tests/fixtures/llamacpp, made by make_fixtures.py).

llama-quantize at the commit in tests/fixtures/llamacpp/README.md wrote every .gguf there;
llamacpp.json holds what llama.cpp's own ggml dequantized from each tensor (sha256 of the
float32 values), the file types it refused, and gguf-split's shard sizes; dry_run.json.gz the
tensor types llama-quantize --dry-run chose for larger configs and every file type.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURES, run_cli
from mcard import api
from mcard.core.arch import ModelShape
from mcard.core.errors import UnusableInput
from mcard.formats import gguf
from mcard.formats.gguf import header as _gguf_header, split as _gguf_split
from mcard.formats.gguf.mix import NoFallback

HERE = FIXTURES / "llamacpp"
FACTS = json.loads((HERE / "llamacpp.json").read_text())
DRY_RUN = json.loads(gzip.open(HERE / "dry_run.json.gz", "rt").read())
FILES = sorted(FACTS["files"])
SINGLE = [f for f in FILES if "-of-" not in f]
SHARDS = sorted(p.relative_to(HERE).as_posix() for p in HERE.glob("*/*-of-*.gguf"))


def _ftype(rel: str) -> str:
    return Path(rel).stem.split("-", 1)[1]


@pytest.mark.parametrize("rel", SINGLE)
def test_llamacpp_file_validates_sizes_and_dequantizes(rel):
    path = HERE / rel
    report = api.inspect(path)
    findings = [(f.severity.value, f.code, f.message) for f in report.all_findings()]
    assert report.ok and not [f for f in findings if f[0] != "info"], findings
    assert report.params["file_type"] == _ftype(rel)
    assert any(c == "mix" and "current" in m for _s, c, m in findings), findings
    assert report.predicted_bytes == path.stat().st_size
    for name, digest in FACTS["files"][rel]["tensors"].items():
        got = gguf.dequantize_tensor(path, name)
        assert hashlib.sha256(np.ascontiguousarray(got, "<f4").tobytes()).hexdigest() == digest, name


def test_llamacpp_tensor_data_size_predicted_from_config():
    """size --format gguf: the tensor data of every file, to the byte (the kv section is separate)."""
    for rel in SINGLE:
        path = HERE / rel
        g = _gguf_header.read(path)
        est = gguf.predict_size(ModelShape.from_file(path.parent / "config.json"), _ftype(rel),
                                imatrix=FACTS["files"][rel]["imatrix"])
        data = sum(-(-nb // 32) * 32 for _n, _t, nb in est.tensors)
        assert data == g.file_size - g.data_start, rel
        assert {n: t for n, t, _b in est.tensors} == {t.name: t.type for t in g.tensors}, rel


def test_llamacpp_refused_file_types_are_refused_by_mcard_too():
    assert set(FACTS["refused"]) == {"smol576-Q1_0"}
    shape = ModelShape.from_file(HERE / "smol576" / "config.json")
    with pytest.raises(NoFallback, match="no fallback for Q1_0"):
        gguf.predict_size(shape, "Q1_0")
    assert isinstance(NoFallback("x"), UnusableInput)  # exit 2 on the command line


def _config_shape(cfg: dict) -> ModelShape:
    return ModelShape.from_config(dict(cfg, model_type="llama", vocab_size=96))


@pytest.mark.parametrize("config", sorted(DRY_RUN))
def test_mix_rules_agree_with_llama_quantize_dry_run(config):
    """Every file type, with and without an importance matrix, 1 to 80 layers, GQA 1-8, 576 and 256 rows."""
    entry = DRY_RUN[config]
    shape = _config_shape(entry["config"])
    checked = 0
    for key, types in entry["types"].items():
        ftype, _, imatrix = key.partition("+")
        if "refused" in types:
            with pytest.raises(NoFallback):
                gguf.expected_types(shape, ftype, has_imatrix=bool(imatrix))
            continue
        ours = gguf.expected_types(shape, ftype, has_imatrix=bool(imatrix))
        diff = {n: (t, ours.get(n)) for n, t in types.items() if ours.get(n) != t}
        assert not diff, (key, sorted(diff.items())[:5])
        checked += 1
    assert checked >= 68


def test_shard_set_validates_as_one_model(tmp_path):
    shards = [HERE / rel for rel in SHARDS]
    assert len(shards) == 3
    for p in shards:
        shutil.copy(p, tmp_path / p.name)
    report = api.inspect(tmp_path)
    findings = [(f.severity.value, f.code, f.message) for f in report.all_findings()]
    assert report.ok and not [f for f in findings if f[0] != "info"], findings
    assert report.params["split"] == "shards" and report.params["files"] == 3
    assert report.predicted_bytes == sum(p.stat().st_size for p in shards)
    whole = HERE / "smol576" / "smol576-Q2_0.gguf"
    for name, digest in FACTS["files"]["smol576/smol576-Q2_0.gguf"]["tensors"].items():
        got = api.dequantize(tmp_path, name)
        assert hashlib.sha256(np.ascontiguousarray(got, "<f4").tobytes()).hexdigest() == digest, name
    # naming one shard validates the whole set
    one = api.inspect(tmp_path / shards[1].name)
    assert one.ok and one.params["files"] == 3
    # the shard sizes for --split-max-tensors 4 equal gguf-split's
    g = _gguf_header.read(whole)
    sizes = _gguf_split.shard_sizes(g.kv_bytes, [(t.name, len(t.shape), t.nbytes) for t in g.tensors], max_tensors=4)
    assert sizes == [p.stat().st_size for p in shards]


def test_split_max_size_predicts_gguf_split_shards():
    """gguf-split --split-max-size 1M of the llama256 model quantized to F32: shard sizes to the byte."""
    facts = FACTS["split_max_size"]
    assert facts["model"] == "llama256" and facts["max_size"] == "1M" and len(facts["shards"]) == 2
    shape = ModelShape.from_file(HERE / "llama256" / "config.json")
    kv_bytes = _gguf_header.read(HERE / "llama256" / "llama256-Q2_K.gguf").kv_bytes  # same keys and widths as F32
    est = gguf.predict_size(shape, "F32", split_max_size="1M", kv_bytes=kv_bytes)
    assert est.params["shards"] == facts["shards"]
    assert est.total_bytes == sum(facts["shards"])
    # and from the command line, the kv section computed from the tokenizer files beside config.json
    out = run_cli(*["size", str(HERE / "llama256" / "config.json"), "--format", "gguf", "--type", "F32",
                                   "--split-max-size", "1M", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["params"]["shards"] == facts["shards"]


def _patch_type(path: Path, name: str, type_id: int) -> None:
    blob = bytearray(path.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = blob.find(key) + len(key)
    n_dims = struct.unpack_from("<I", blob, pos)[0]
    struct.pack_into("<I", blob, pos + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(blob))


def test_unknown_type_id_is_one_finding_and_the_rest_is_checked(tmp_path):
    path = tmp_path / "m.gguf"
    shutil.copy(HERE / "llama256" / "llama256-Q4_K_M.gguf", path)
    _patch_type(path, "blk.0.ffn_up.weight", 99)
    report = api.inspect(path)
    errors = [(f.code, f.where) for f in report.all_findings() if f.severity.value == "error"]
    assert errors == [("bad-type", "blk.0.ffn_up.weight")], errors
    bad = next(f for f in report.all_findings() if f.code == "bad-type")
    assert "99" in bad.message and "bytes" in bad.message
    assert report.predicted_bytes == path.stat().st_size  # sized from the mix, the file is whole
    assert "size" in report.codes() and "mix" in report.codes()
    with pytest.raises(UnusableInput, match="type id 99"):
        api.dequantize(path, "blk.0.ffn_up.weight")
    np.testing.assert_array_equal(api.dequantize(path, "blk.0.ffn_down.weight"),
                                  gguf.dequantize_tensor(HERE / "llama256" / "llama256-Q4_K_M.gguf", "blk.0.ffn_down.weight"))


def test_type_newer_than_the_gguf_package_is_known(tmp_path):
    """Q2_0 (type 42) is newer than gguf 0.19: mcard sizes, checks and decodes it itself."""
    g = _gguf_header.read(HERE / "llama256" / "llama256-Q2_0.gguf")
    assert {t.type for t in g.tensors} >= {"Q2_0"} and all(t.known for t in g.tensors)


def test_corrupted_llamacpp_files_are_still_caught(tmp_path):
    src = HERE / "smol576" / "smol576-Q4_K_M.gguf"
    cut = tmp_path / "cut" / src.name
    cut.parent.mkdir()
    cut.write_bytes(src.read_bytes()[:-1000])
    assert "file-size" in {f.code for f in api.inspect(cut).all_findings() if f.severity.value == "error"}
    wrong = tmp_path / "wrong" / src.name
    wrong.parent.mkdir()
    shutil.copy(src, wrong)
    _patch_type(wrong, "blk.0.attn_q.weight", 8)  # Q8_0 where the mix says otherwise: sizes shift too
    codes = {f.code for f in api.inspect(wrong).all_findings() if f.severity.value == "error"}
    assert "mix-mismatch" in codes or "bad-offsets" in codes


def test_shard_set_problems(tmp_path):
    for p in SHARDS[:1] + SHARDS[2:]:
        shutil.copy(HERE / p, tmp_path / Path(p).name)
    report = api.inspect(tmp_path)
    assert not report.ok
    assert any(f.code == "missing-shard" and "00002-of-00003" in f.file for f in report.all_findings())
    assert report.predicted_bytes is None and any("size not predicted" in f.message for f in report.all_findings())
    # a shard renamed out of place: split.no disagrees with its name
    shutil.copy(HERE / SHARDS[1], tmp_path / Path(SHARDS[1]).name)
    (tmp_path / Path(SHARDS[2]).name).rename(tmp_path / "x")
    (tmp_path / Path(SHARDS[1]).name).rename(tmp_path / Path(SHARDS[2]).name)
    (tmp_path / "x").rename(tmp_path / Path(SHARDS[1]).name)
    codes = {(f.code, f.where) for f in api.inspect(tmp_path).all_findings() if f.severity.value == "error"}
    assert ("bad-split", "split.no") in codes


def test_raw_split_parts_validate_as_one_file(tmp_path):
    src = HERE / "smol576" / "smol576-Q4_K_M.gguf"
    blob = src.read_bytes()
    third = len(blob) // 3 + 1
    for i, letter in enumerate("abc"):
        (tmp_path / f"{src.name}-split-{letter}").write_bytes(blob[i * third:(i + 1) * third])
    report = api.inspect(tmp_path)
    findings = [(f.severity.value, f.code, f.message) for f in report.all_findings()]
    assert report.ok and not [f for f in findings if f[0] != "info"], findings
    assert report.params["split"] == "parts" and report.predicted_bytes == len(blob)
    for name in ("blk.0.ffn_down.weight", "token_embd.weight"):
        np.testing.assert_array_equal(api.dequantize(tmp_path, name), gguf.dequantize_tensor(src, name))
    (tmp_path / f"{src.name}-split-b").unlink()
    report = api.inspect(tmp_path)
    assert any(f.code == "missing-part" for f in report.all_findings())


def test_2024_fallback_rules_are_an_older_rule_version(tmp_path):
    """Q2_K files from 2024-2025 llama.cpp: 576-wide rows fell back to IQ4_NL (now Q4_0; both 18-byte blocks)."""
    shape = ModelShape.from_file(HERE / "smol576" / "config.json")
    old = gguf.expected_types(shape, "Q2_K", rules="2024")
    new = gguf.expected_types(shape, "Q2_K")
    assert old["blk.0.attn_q.weight"] == "IQ4_NL" and new["blk.0.attn_q.weight"] == "Q4_0"
    path = tmp_path / "old.gguf"
    shutil.copy(HERE / "smol576" / "smol576-Q2_K.gguf", path)
    for name, t in old.items():
        if t == "IQ4_NL" and new[name] == "Q4_0":
            _patch_type(path, name, 20)  # what the 2024 quantizer wrote there
    report = api.inspect(path)
    warn = [f for f in report.all_findings() if f.code == "mix-mismatch"]
    assert report.ok and len(warn) == 1 and "2024-2025" in warn[0].message, warn


def test_naming_one_raw_part_validates_the_joined_file(tmp_path):
    src = HERE / "smol576" / "smol576-Q4_0.gguf"
    blob = src.read_bytes()
    half = len(blob) // 2
    (tmp_path / f"{src.name}-split-a").write_bytes(blob[:half])
    (tmp_path / f"{src.name}-split-b").write_bytes(blob[half:])
    report = api.inspect(tmp_path / f"{src.name}-split-b")
    assert report.ok and report.predicted_bytes == len(blob) and len(report.files) == 2


def test_bpe_tokenizer_kv_range_holds_the_real_kv_section(tmp_path):
    """A tokenizer.json (BPE) folder: tokens and merges counted exactly; a kv section written with
    gguf's own writer, as convert_hf_to_gguf's gpt2 path fills it, lies within the stated range."""
    import json

    from gguf import GGUFWriter

    from mcard.core.arch import ModelShape
    from mcard.formats import gguf

    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "tie_word_embeddings": True}
    vocab = {f"\u0120tok{i}": i for i in range(290)}
    merges = [f"\u0120t ok{i}" for i in range(200)]
    added = [{"id": 290, "content": "<|endoftext|>"}]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges},
                                                          "added_tokens": added}))
    shape = ModelShape.from_config(cfg)
    est = gguf.predict_size(shape, "Q8_0", model_dir=tmp_path, config_doc=cfg)
    kv = est.params["kv"]
    w = GGUFWriter(str(tmp_path / "real.gguf"), "llama")
    w.add_type("model")
    w.add_name("Tiny BPE")
    w.add_size_label("25K")
    for add, value in ((w.add_block_count, 2), (w.add_context_length, 2048), (w.add_embedding_length, 64),
                       (w.add_feed_forward_length, 128), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                       (w.add_vocab_size, 300), (w.add_rope_dimension_count, 16)):
        add(value)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])] + ["<|endoftext|>"]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), 300)]
    w.add_token_list(tokens)
    w.add_token_types([1] * 300)
    w.add_token_merges(merges)
    w.add_bos_token_id(290)
    w.add_eos_token_id(290)
    w.add_quantization_version(2)
    w.add_file_type(7)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    from mcard.formats.gguf import header as _gguf_header

    real = _gguf_header.read(tmp_path / "real.gguf").kv_bytes
    assert kv["exact"] is False and kv["low"] <= real <= kv["high"] and kv["high"] - kv["low"] < 1000
