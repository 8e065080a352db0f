"""AWQ: nibble order, RTN quantization, GEMM/GEMV round trips, config and shape corruption classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import cli_process, edit_json, edit_tensors
from mcard import api
from mcard.core.size import predict_size
from mcard.formats import awq, packing as _packing

Q_PROJ = "model.layers.0.self_attn.q_proj"
DOWN = "model.layers.1.mlp.down_proj"


def rtn_reference(w: np.ndarray, g: int) -> np.ndarray:
    """Independent AutoAWQ-style zero-point RTN, one (row, group) at a time."""
    out = np.empty_like(w)
    for row in range(w.shape[0]):
        for j in range(0, w.shape[1], g):
            x = w[row, j:j + g]
            s = np.float32(np.float16(max(float(x.max() - x.min()), 1e-5) / 15))
            z = min(max(-round(float(x.min()) / float(s)), 0), 15)
            q = np.clip(np.round(x / s) + z, 0, 15)
            out[row, j:j + g] = (q - z) * s
    return out


def test_order_constant_and_nibbles():
    assert awq.AWQ_ORDER == _packing.AWQ_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)
    word = _packing.pack_awq(np.arange(8)[None, :]).view(np.uint32)[0, 0]
    assert [(int(word) >> (4 * i)) & 0xF for i in range(8)] == list(awq.AWQ_ORDER)


@pytest.mark.parametrize("rows,cols", [(1, 8), (5, 64), (32, 256)])
def test_pack_unpack_inverse(rows, cols):
    v = np.random.default_rng(rows).integers(0, 16, (rows, cols))
    packed = _packing.pack_awq(v)
    assert packed.shape == (rows, cols // 8) and packed.dtype == np.int32
    assert np.array_equal(awq.unpack_awq(packed), v)
    assert np.array_equal(_packing.pack_awq(awq.unpack_awq(packed)), packed)


@pytest.mark.parametrize("version", ["gemm", "gemv"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_quantize_matches_reference(version, group_size):
    rng = np.random.default_rng(group_size + 7)
    w = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    lin = awq.quantize(w, group_size=group_size, version=version)
    shapes = awq.tensor_shapes(256, 64, group_size, version)
    assert (lin.qweight.shape, lin.qzeros.shape, lin.scales.shape) == (shapes[".qweight"], shapes[".qzeros"], shapes[".scales"])
    deq = awq.dequantize_linear(lin)
    assert deq.shape == (64, 256) and deq.dtype == np.float32
    g = 256 if group_size == -1 else group_size
    np.testing.assert_allclose(deq, rtn_reference(w, g), rtol=0, atol=1e-7)
    step = (np.ptp(w.reshape(64, -1, g), axis=2) / 15).repeat(g, axis=1)
    assert np.all(np.abs(deq - w) <= step * 1.01 + 1e-6)


def test_gemv_zero_width_matches_autoawq():
    # calculate_zeros_width: ceil(K/g/8), rounded up to a multiple of 4 (g=32) or 2 (g=64)
    assert awq.gemv_zeros_width(4096, 128) == 4
    assert awq.gemv_zeros_width(4096, 32) == 16
    assert awq.gemv_zeros_width(256, 32) == 4
    assert awq.gemv_zeros_width(11008, 128) == 11


@pytest.mark.parametrize("kw", [
    dict(), dict(group_size=32, version="gemv"), dict(group_size=-1, config_style="quant_config.json"),
    dict(group_size=64, version="gemv", config_style="quant_config.json"),
], ids=["gemm-128", "gemv-32", "gemm-all-qc", "gemv-64-qc"])
def test_write_validate_dequantize(tmp_path, tiny_cfg, kw):
    ref = awq.write_variant(tmp_path, tiny_cfg, **kw)
    report = api.inspect(tmp_path)
    assert report.format == "awq" and report.ok, [f.to_dict() for f in report.findings]
    assert not [f for f in report.findings if f.severity.value != "info"]
    assert report.params["version"] == kw.get("version", "gemm")
    assert report.predicted_bytes == (tmp_path / awq.WEIGHTS_FILE).stat().st_size
    for module in (Q_PROJ, DOWN):
        assert np.array_equal(api.dequantize(tmp_path, module), ref[module])


def test_runtimes():
    by = {r.name: r for r in awq.runtimes(4, 128, "gemm")}
    assert by["vLLM AWQ"].compatible and by["Marlin"].compatible and not by["ExLlama"].compatible
    by = {r.name: r for r in awq.runtimes(4, 256, "gemv")}
    assert not by["vLLM AWQ"].compatible and not by["Marlin"].compatible and by["transformers"].compatible


def test_size_prediction_and_cli(tmp_path, tiny_cfg):
    (tmp_path / "config.json").write_text(json.dumps(tiny_cfg))
    est = predict_size(tmp_path, "awq", group_size=128)
    assert set(est.parts) == {"qweight", "qzeros", "scales", "bias", "embeddings", "lm_head", "norms", "header"}
    awq.write_variant(tmp_path / "v", tiny_cfg)
    assert est.total_bytes == (tmp_path / "v" / awq.WEIGHTS_FILE).stat().st_size


def _cli(folder: Path) -> tuple[int, dict]:
    proc = cli_process("validate", folder, "--json", timeout=60)
    return proc.returncode, json.loads(proc.stdout)


def test_corruptions_via_cli(tmp_path, tiny_cfg):
    """Tensor-set classes on separate linears, one CLI run: every code found, exit 1."""
    awq.write_variant(tmp_path, tiny_cfg)

    def corrupt(t):
        t.pop(f"{Q_PROJ}.qzeros")
        t[f"{DOWN}.scales"] = np.concatenate([t[f"{DOWN}.scales"]] * 2)
        t["model.layers.1.self_attn.k_proj.qweight"] = t["model.layers.1.self_attn.k_proj.qweight"].astype(np.int64)
        t[f"{Q_PROJ}.g_extra"] = np.zeros(2, np.float16)
    edit_tensors(tmp_path, corrupt)
    rc, doc = _cli(tmp_path)
    assert rc == 1 and doc["ok"] is False and doc["format"] == "awq"
    found = {(f["code"], f["where"]) for f in doc["findings"]}
    assert {("missing-tensor", f"{Q_PROJ}.qzeros"), ("wrong-shape", f"{DOWN}.scales"),
            ("wrong-dtype", "model.layers.1.self_attn.k_proj.qweight"), ("unexpected-tensor", f"{Q_PROJ}.g_extra")} <= found


def test_config_mismatch_group_size(tmp_path, tiny_cfg):
    awq.write_variant(tmp_path, tiny_cfg, group_size=32)
    edit_json(tmp_path / "config.json", lambda d: d["quantization_config"].update(group_size=128))
    rc, doc = _cli(tmp_path)
    assert rc == 1 and "config-mismatch" in {f["code"] for f in doc["findings"]}
    assert "wrong-shape" not in {f["code"] for f in doc["findings"]}


def test_config_mismatch_version(tmp_path, tiny_cfg):
    awq.write_variant(tmp_path, tiny_cfg, version="gemv", group_size=128)
    edit_json(tmp_path / "config.json", lambda d: d["quantization_config"].update(version="gemm"))
    report = api.inspect(tmp_path)
    assert "config-mismatch" in report.codes() and not report.ok and report.params["version"] == "gemv"


def test_config_conflict(tmp_path, tiny_cfg):
    awq.write_variant(tmp_path, tiny_cfg)
    conflicting = {"w_bit": 4, "q_group_size": 64, "zero_point": True, "version": "GEMM"}
    (tmp_path / "quant_config.json").write_text(json.dumps(conflicting))
    report = api.inspect(tmp_path)
    assert "config-conflict" in report.codes() and not report.ok


@pytest.mark.parametrize("field,value", [("bits", 3), ("group_size", 0), ("version", "exl")])
def test_bad_config(tmp_path, tiny_cfg, field, value):
    awq.write_variant(tmp_path, tiny_cfg)
    edit_json(tmp_path / "config.json", lambda d: d["quantization_config"].update({field: value}))
    report = api.inspect(tmp_path)
    assert "bad-config" in report.codes() and not report.ok


def test_detection_does_not_confuse_gptq(tmp_path, tiny_cfg):
    from mcard.core.variant import Variant
    from mcard.formats import detect, gptq

    awq.write_variant(tmp_path / "a", tiny_cfg, config_style="quant_config.json")
    gptq.write_variant(tmp_path / "g", tiny_cfg, config_file="config.json")
    assert detect(Variant.open(tmp_path / "a")).name == "awq"
    assert detect(Variant.open(tmp_path / "g")).name == "gptq"
