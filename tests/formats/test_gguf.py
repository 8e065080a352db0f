"""GGUF: builder round trips, validate findings on corrupted files, sizes, k-quant packers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from helpers import cli_process
from mcard import api
from mcard.core.arch import ModelShape
from mcard.core.errors import UnusableInput
from mcard.formats import gguf
from mcard.formats.gguf import mix as gguf_mix

LLAMA7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "vocab_size": 32000}


def _cli(path: Path) -> tuple[int, dict | None, str]:
    proc = cli_process("validate", path, "--json", timeout=60)
    try:
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    return proc.returncode, doc, proc.stderr


def _write(tmp_path: Path, cfg: dict, ftype: str = "Q4_K_M", **kw) -> Path:
    path = tmp_path / f"m-{ftype}.gguf"
    gguf.write_variant(path, cfg, ftype, **kw)
    return path


def _patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _info_pos(path: Path, name: str) -> int:
    """File offset just after a tensor-info's name (n_dims follows)."""
    blob = path.read_bytes()[:200_000]
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = blob.rfind(key)
    assert pos > 0
    return pos + len(key)


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q3_K_M", "Q5_K_S", "Q6_K", "Q2_K", "Q4_0", "Q8_0", "F16"])
def test_round_trip(tmp_path, tiny_cfg, ftype):
    written = gguf.write_variant(tmp_path, tiny_cfg, ftype, seed=1)
    report = api.inspect(tmp_path)
    assert report.ok, [f.to_dict() for f in report.all_findings()]
    assert report.format == "gguf" and "mix" in report.codes() and "size" in report.codes()
    assert report.params["file_type"] == ftype
    path = next(tmp_path.glob("*.gguf"))
    assert report.predicted_bytes == path.stat().st_size
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "token_embd.weight", "output_norm.weight"):
        got = api.dequantize(tmp_path, name)
        np.testing.assert_array_equal(got, written[name])
    # and the values are close to the float weights they came from (seeded normal * 0.02)
    assert np.abs(written["blk.0.attn_q.weight"]).max() < 0.2
    # gguf's own reader agrees on tensor names and types
    reader = GGUFReader(path)
    assert {t.name: t.tensor_type.name for t in reader.tensors} == gguf.tensor_types(path)
    assert gguf.tensor_types(path) == gguf.expected_types(ModelShape.from_config(tiny_cfg), ftype)


def test_load_tensor_raw_blocks(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg, "Q4_K_M")
    tname, raw, (rows, cols) = gguf.load_tensor(path, "blk.0.attn_q.weight")
    assert tname == "Q4_K" and raw.dtype == np.uint8 and raw.shape == (rows, cols // 256 * 144)
    assert (rows, cols) == (256, 256)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16"])
def test_quantize_rows_round_trip(qtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 512)) * 0.05).astype(np.float32)
    raw = gguf.quantize_rows(x, qtype)
    elems, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    assert raw.dtype == np.uint8 and raw.shape == (16, 512 // elems * nbytes)
    y = np.asarray(quants.dequantize(raw, GGMLQuantizationType[qtype]), np.float32).reshape(x.shape)
    rel = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
    assert rel < {"Q2_K": 0.4, "Q3_K": 0.25}.get(qtype, 0.1), rel


def test_truncated_file_size(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg)
    data = path.read_bytes()
    path.write_bytes(data[:-5000])
    report = api.inspect(path)
    assert not report.ok and "file-size" in report.codes()
    code, doc, _err = _cli(path)
    assert code == 1 and any(f["code"] == "file-size" for f in doc["findings"])
    with pytest.raises(UnusableInput, match="past the end"):
        gguf.load_tensor(path, "output.weight")


def test_bad_magic_exit_2(tmp_path, tiny_cfg, capsys):
    from mcard.cli import app
    from mcard.cli.errors import run_app

    path = _write(tmp_path, tiny_cfg)
    _patch(path, 0, b"GGUX")
    says = "not a GGUF file: bad magic, it starts with b'GGUX' (47 47 55 58), a GGUF file starts with b'GGUF'"
    with pytest.raises(UnusableInput, match="bad magic"):
        gguf.read(path)
    code, _doc, err = _cli(path)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    for target in (path, path.parent):  # the file or its folder: what is wrong with the file, not "no model"
        assert run_app(app, ["validate", str(target)]) == 2
        assert capsys.readouterr().err.strip() == f"mcard: {path}: {says}"
    (tmp_path / "more").mkdir()
    good = _write(tmp_path / "more", tiny_cfg)  # next to a good GGUF file: an error finding, exit 1
    (good.parent / "broken.gguf").write_bytes(b"GGUX" + path.read_bytes()[4:])
    assert run_app(app, ["validate", str(good.parent), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(f["code"], f["file"], f["message"]) for f in doc["findings"] if f["severity"] == "error"] == [
        ("bad-magic", "broken.gguf", says)]


def test_bad_version_exit_2(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg)
    _patch(path, 4, struct.pack("<I", 1))
    code, _doc, err = _cli(path)
    assert code == 2 and "version 1" in err and "Traceback" not in err


def test_huge_tensor_count_exit_2(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg)
    _patch(path, 8, struct.pack("<Q", 2**60))
    code, _doc, err = _cli(path)
    assert code == 2 and "implausible" in err


def test_truncated_tensor_table_exit_2(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg)
    path.write_bytes(path.read_bytes()[: _info_pos(path, "blk.1.ffn_up.weight")])
    code, _doc, err = _cli(path)
    assert code == 2 and "truncated" in err and "Traceback" not in err


def test_overlapping_offsets(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg)
    q_pos = _info_pos(path, "blk.0.attn_q.weight")
    q_off = path.read_bytes()[q_pos + 4 + 16 + 4: q_pos + 4 + 16 + 12]
    _patch(path, _info_pos(path, "blk.0.attn_k.weight") + 4 + 16 + 4, q_off)
    report = api.inspect(path)
    assert "bad-offsets" in report.codes() and not report.ok


def test_bad_shape(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg)
    _patch(path, _info_pos(path, "blk.0.attn_q.weight") + 4, struct.pack("<QQ", 128, 512))
    report = api.inspect(path)
    assert "bad-shape" in report.codes() and not report.ok


def test_mix_mismatch_error(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg, types={"blk.0.attn_q.weight": "Q8_0"})
    report = api.inspect(path)
    errs = [f for f in report.all_findings() if f.code == "mix-mismatch"]
    assert errs and errs[0].severity.value == "error" and errs[0].where == "blk.0.attn_q.weight"


def test_mix_older_rules_warning(tmp_path, tiny_cfg):
    shape = ModelShape.from_config(tiny_cfg)
    old = gguf.expected_types(shape, "Q3_K_M", rules="2023")
    assert old != gguf.expected_types(shape, "Q3_K_M")
    path = _write(tmp_path, tiny_cfg, "Q3_K_M", types=old)
    report = api.inspect(path)
    found = [f for f in report.all_findings() if f.code == "mix-mismatch"]
    assert report.ok and found and found[0].severity.value == "warning" and "older" in found[0].message


def test_missing_and_unexpected_tensor(tmp_path, tiny_cfg):
    path = _write(tmp_path, tiny_cfg)
    pos = _info_pos(path, "blk.1.ffn_up.weight")
    _patch(path, pos - len("up.weight"), b"xx.weight")
    report = api.inspect(path)
    assert {"missing-tensor", "unexpected-tensor"} <= report.codes()


def test_folder_with_several_files_has_parts(tmp_path, tiny_cfg):
    gguf.write_variant(tmp_path, tiny_cfg, "Q4_K_M")
    gguf.write_variant(tmp_path, tiny_cfg, "Q8_0")
    report = api.inspect(tmp_path)
    assert report.format == "gguf" and len(report.parts) == 2 and report.ok
    assert {p.params["file_type"] for p in report.parts} == {"Q4_K_M", "Q8_0"}
    with pytest.raises(UnusableInput):
        api.dequantize(tmp_path, "blk.0.attn_q.weight")


def test_predict_size_matches_quant_sizes_arithmetic():
    est = api.predict_size(LLAMA7B, format="gguf", type="Q4_0")
    h, m, v, n = 4096, 11008, 32000, 32
    q40 = GGML_QUANT_SIZES[GGMLQuantizationType.Q4_0]
    q6k = GGML_QUANT_SIZES[GGMLQuantizationType.Q6_K]
    data = (n * (4 * h * h + 3 * h * m) + v * h) // q40[0] * q40[1]  # linears + token_embd in Q4_0
    data += v * h // q6k[0] * q6k[1]  # output.weight -> Q6_K
    data += (2 * n + 1) * h * 4  # norms in F32 (all multiples of 32 bytes: no padding)
    assert est.total_bytes - est.parts["metadata"] == data
    assert est.ram_bytes == est.total_bytes + 2_500_000_000
    assert 0.7e6 < est.parts["metadata"] < 1.0e6
    assert round(est.total_gb, 2) == 3.83  # TheBloke's llama-2-7b Q4_0 GGUF: 3.83 GB


def test_kquant_rules_7b():
    shape = ModelShape.from_config(LLAMA7B)
    t = gguf.expected_types(shape, "Q4_K_M")
    assert sum(t[f"blk.{i}.attn_v.weight"] == "Q6_K" for i in range(32)) == 16
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q4_K" and t["blk.0.attn_norm.weight"] == "F32"
    t = gguf.expected_types(shape, "Q3_K_M")
    assert [t[f"blk.{i}.attn_v.weight"] for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert t["blk.1.ffn_down.weight"] == "Q5_K" and t["blk.2.ffn_down.weight"] == "Q4_K"
    assert gguf.expected_types(shape, "Q8_0")["output.weight"] == "Q8_0"
    assert gguf_mix.role_type("ffn_down", 5, 32, "Q4_K_M", ne0=11008 + 32) == "Q5_0"  # fallback for odd rows
    assert gguf_mix.role_type("ffn_down", 0, 32, "Q4_K_M", ne0=11008 + 32) == "Q8_0"  # Q6_K -> Q8_0


def test_runtimes():
    rts = {r.name: r for r in gguf.runtimes({"Q4_K", "F32", "Q6_K"})}
    assert rts["llama.cpp"].compatible and rts["transformers"].compatible
    assert not {r.name: r for r in gguf.runtimes({"TQ1_0"})}["transformers"].compatible
