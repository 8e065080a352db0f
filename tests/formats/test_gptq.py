"""GPTQ: packing, RTN quantization, write -> validate -> dequantize round trips, corruption classes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import edit_json, edit_tensors, weights_file
from mcard import api
from mcard.core.size import predict_size
from mcard.core.variant import Variant
from mcard.formats import gptq, packing as _packing

Q_PROJ = "model.layers.0.self_attn.q_proj"
DOWN = "model.layers.1.mlp.down_proj"


# -- helpers -------------------------------------------------------------------------
def codes(doc: dict, severity: str | None = None) -> set[str]:
    return {f["code"] for f in doc["findings"] if severity is None or f["severity"] == severity}


def rtn_reference(w: np.ndarray, bits: int, g_idx: np.ndarray, sym: bool) -> np.ndarray:
    """Independent RTN: per (group, output row) min/max including 0, fp16 scale, round, clamp."""
    n, k = w.shape
    maxq = 2**bits - 1
    out = np.empty_like(w)
    for grp in np.unique(g_idx):
        cols = np.flatnonzero(g_idx == grp)
        for row in range(n):
            x = w[row, cols]
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            if sym:
                hi = max(-lo, hi)
                lo = -hi if lo < 0 else lo
            if lo == 0 and hi == 0:
                lo, hi = -1.0, 1.0
            s = float(np.float16((hi - lo) / maxq))
            z = (maxq + 1) // 2 if sym else int(np.clip(np.round(-lo / s), 0, maxq))
            q = np.clip(np.round(x / np.float32(s)) + z, 0, maxq)
            out[row, cols] = np.float32(s) * (q - z)
    return out


# -- packing ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_inverse(bits):
    rng = np.random.default_rng(bits)
    for k, n in ((32, 1), (64, 7), (256, 96)):
        v = rng.integers(0, 2**bits, (k, n))
        packed = _packing.pack_rows(v, bits)
        assert packed.dtype == np.int32 and packed.shape == (k * bits // 32, n)
        assert np.array_equal(gptq.unpack_qweight(packed, bits), v)
        cols = _packing.pack_cols(v.T, bits)
        assert np.array_equal(gptq.unpack_qzeros(cols, bits, k), v.T)
        assert np.array_equal(_packing.pack_rows(gptq.unpack_qweight(packed, bits), bits), packed)


def test_3bit_straddling_layout():
    v = np.zeros((32, 1), np.int64)
    v[10, 0], v[11, 0], v[21, 0], v[22, 0] = 0b110, 0b111, 0b011, 0b101
    words = _packing.pack_rows(v, 3).view(np.uint32)[:, 0]
    # value 10: low 2 bits at 30-31 of word 0, high bit at bit 0 of word 1; value 11 at bits 1-3 of word 1;
    # value 21: low bit at bit 31 of word 1, two high bits at 0-1 of word 2; value 22 at bits 2-4 of word 2.
    assert [hex(int(x)) for x in words] == ["0x80000000", "0x8000000f", "0x15"]


def test_4bit_nibble_order_and_v1_sym_zeros():
    assert hex(int(_packing.pack_rows(np.arange(8)[:, None], 4).view(np.uint32)[0, 0])) == "0x76543210"
    lin = gptq.quantize(np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32), 4, 32)
    assert np.all(lin.qzeros.view(np.uint32) == 0x77777777)
    assert np.all(gptq.true_zeros(lin) == 8)


# -- quantize / dequantize against an independent reference ----------------------------------
@pytest.mark.parametrize("bits,group_size,desc_act,sym,fmt", list(itertools.product(
    [2, 3, 4, 8], [32, 64, 128, -1], [False, True], [True, False], ["gptq", "gptq_v2"])))
def test_quantize_matches_rtn_reference(bits, group_size, desc_act, sym, fmt):
    rng = np.random.default_rng(bits * 1000 + group_size)
    w = (rng.standard_normal((32, 256)) * 0.02).astype(np.float32)
    lin = gptq.quantize(w, bits, group_size, desc_act, sym, fmt, rng=np.random.default_rng(1))
    k, n = 256, 32
    assert lin.qweight.shape == (k * bits // 32, n) and lin.qweight.dtype == np.int32
    groups = 1 if group_size == -1 else k // group_size
    assert lin.qzeros.shape == (groups, n * bits // 32) and lin.scales.shape == (groups, n)
    assert lin.scales.dtype == np.float16 and lin.g_idx.dtype == np.int32
    g = k if group_size == -1 else group_size
    if desc_act and groups > 1:
        assert not np.array_equal(lin.g_idx, np.arange(k) // g)
    assert np.array_equal(np.bincount(lin.g_idx), np.full(groups, g))
    deq = gptq.dequantize_linear(lin)
    assert deq.shape == (n, k) and deq.dtype == np.float32
    np.testing.assert_allclose(deq, rtn_reference(w, bits, lin.g_idx, sym), rtol=0, atol=1e-7)
    step = lin.scales.astype(np.float32)[lin.g_idx].T
    # half a step inside the grid; a clamped extreme (z's rounding, sym's 2^(b-1) - 1 top) is off by up to one step
    assert np.all(np.abs(deq - w) <= step * 1.001 + 1e-7)
    assert np.mean(np.abs(deq - w) <= 0.5 * step * 1.001 + 1e-7) > 0.95


ROUND_TRIPS = [  # every bits, group size, act-order, sym, format and config file at least once
    dict(bits=4, group_size=128),
    dict(bits=4, group_size=32, desc_act=True, sym=False),
    dict(bits=3, group_size=64, desc_act=True, checkpoint_format="gptq_v2", config_file="config.json"),
    dict(bits=3, group_size=-1, sym=False, checkpoint_format="gptq_v2"),
    dict(bits=2, group_size=32, sym=False, config_file="quant_config.json"),
    dict(bits=2, group_size=-1, desc_act=True, bias=False),
    dict(bits=8, group_size=64, sym=False, desc_act=True, checkpoint_format="gptq_v2"),
    dict(bits=8, group_size=128, config_file="config.json"),
]


@pytest.mark.parametrize("kw", ROUND_TRIPS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_write_validate_dequantize(tmp_path, tiny_cfg, kw):
    ref = gptq.write_variant(tmp_path, tiny_cfg, **kw)
    name = gptq.WEIGHTS_FILE.format(bits=kw["bits"], group_size=kw["group_size"])
    assert (tmp_path / name).is_file()
    report = api.inspect(tmp_path)
    assert report.format == "gptq" and report.ok, [f.to_dict() for f in report.findings]
    assert not [f for f in report.findings if f.severity.value != "info"]
    assert report.params["bits"] == kw["bits"] and report.params["group_size"] == kw["group_size"]
    assert report.predicted_bytes == report.actual_bytes  # the weights file, configs not counted
    assert {r.name for r in report.runtimes} >= {"ExLlama", "ExLlamaV2", "Marlin", "Machete", "transformers"}
    variant_linears = gptq.quantized_linears(Variant.open(tmp_path))
    assert set(variant_linears) == set(ref)
    for module in (Q_PROJ, DOWN):
        assert np.array_equal(api.dequantize(tmp_path, module), ref[module])


def test_dequantize_close_to_original(tmp_path):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    for bits, tol in ((8, 0.002), (4, 0.02), (3, 0.04)):
        lin = gptq.quantize(w, bits, 128, desc_act=True, sym=False, rng=rng)
        assert np.sqrt(np.mean((gptq.dequantize_linear(lin) - w) ** 2)) / 0.02 < tol * 10


def test_runtimes_rules():
    by = {r.name: r for r in gptq.runtimes(4, 128, True, False)}
    assert all(by[n].compatible for n in ("ExLlama", "ExLlamaV2", "Marlin", "Machete", "transformers"))
    assert by["Machete"].reason == "needs an SM90 GPU" and not by["llama.cpp"].compatible
    by = {r.name: r for r in gptq.runtimes(3, 128, True, False)}
    assert not by["ExLlama"].compatible and not by["ExLlamaV2"].compatible and not by["Marlin"].compatible
    assert not {r.name: r for r in gptq.runtimes(4, 128, False, False)}["Marlin"].compatible
    assert not {r.name: r for r in gptq.runtimes(4, 256, True, False)}["Marlin"].compatible
    assert {r.name: r for r in gptq.runtimes(8, 32, True, True)}["Marlin"].compatible
    assert not {r.name: r for r in gptq.runtimes(4, 128, True, True)}["Machete"].compatible


# -- corruption classes (all through the CLI, run in parallel once: JSON finding code and exit status) --
def _swap_g_idx(t):
    g = t[f"{Q_PROJ}.g_idx"].copy()
    g[0], g[40] = g[40], g[0]
    t[f"{Q_PROJ}.g_idx"] = g


def _act_order_count(t):
    g = t[f"{DOWN}.g_idx"].copy()
    g[0] = (g[0] + 1) % 16
    t[f"{DOWN}.g_idx"] = g


def _wrap_zero(t):  # AutoGPTQ ORs a wrapped -1 into the word: this and every higher nibble become 0xF
    z = t[f"{Q_PROJ}.qzeros"].copy()
    z[0, 0] = np.int32(-1)
    t[f"{Q_PROJ}.qzeros"] = z


def _set(name, fn):
    return lambda t: t.__setitem__(name, fn(t[name]))


def _unparseable(folder: Path) -> None:
    (folder / "quantize_config.json").write_text('{"bits": 4,')


def _json(file, fn):
    return lambda folder: edit_json(folder / file, fn)


def _tensor_set_corruptions(t):
    t.pop(f"{Q_PROJ}.scales")  # missing-tensor
    t[f"{DOWN}.scales"] = np.concatenate([t[f"{DOWN}.scales"]] * 2)  # wrong-shape
    t["model.layers.1.self_attn.k_proj.g_idx"] = t["model.layers.1.self_attn.k_proj.g_idx"].astype(np.int64)  # wrong-dtype
    t[f"{Q_PROJ}.extra"] = np.zeros(4, np.float16)  # unexpected-tensor


# case -> (write_variant kwargs, tensor edit or None, folder edit or None)
CORRUPTIONS = {
    # the four tensor-set classes, each on its own linear, share one variant (one CLI run)
    "tensor-set": ({"group_size": 32}, _tensor_set_corruptions, None),
    "bad-config": ({}, None, _unparseable),
    "config-mismatch": ({"group_size": 32}, None, _json("quantize_config.json", lambda d: d.update(group_size=128))),
    "config-conflict": ({}, None, _json("config.json", lambda d: d.update(quantization_config={
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False}))),
    "g_idx-mismatch": ({"group_size": 32}, _swap_g_idx, None),
    "g_idx-mismatch-act-order": ({"group_size": 32, "desc_act": True}, _act_order_count, None),
    "act-order-trivial": ({"group_size": 32}, None, _json("quantize_config.json", lambda d: d.update(desc_act=True))),
    "sym-zeros": ({}, _set(f"{Q_PROJ}.qzeros", lambda a: np.full_like(a, np.uint32(0x88888888).view(np.int32))), None),
    "lossy-zero-wrap": ({"sym": False}, _wrap_zero, None),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, tuple[int, dict]]:
    from mcard.core.arch import tiny_config

    procs = {}
    for case, (kw, tensor_edit, folder_edit) in CORRUPTIONS.items():
        folder = tmp_path_factory.mktemp(case)
        gptq.write_variant(folder, tiny_config(), **kw)
        if tensor_edit:
            edit_tensors(folder, tensor_edit)
        if folder_edit:
            folder_edit(folder)
        procs[case] = subprocess.Popen([sys.executable, "-m", "mcard.cli", "validate", str(folder), "--json"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for case, proc in procs.items():
        stdout, _err = proc.communicate(timeout=120)
        out[case] = (proc.returncode, json.loads(stdout))
    return out


def _expect(result: tuple[int, dict], code: str, severity: str = "error") -> dict:
    rc, doc = result
    assert code in codes(doc, severity), doc["findings"]
    if severity == "error":
        assert rc == 1 and doc["ok"] is False
    else:
        assert rc == 0 and doc["ok"] is True
    return doc


def _message(doc: dict, code: str) -> str:
    return next(f["message"] for f in doc["findings"] if f["code"] == code)


def _at(doc: dict, code: str) -> set[str]:
    return {f["where"] for f in doc["findings"] if f["code"] == code}


def test_missing_tensor(cli_results):
    assert _at(_expect(cli_results["tensor-set"], "missing-tensor"), "missing-tensor") == {f"{Q_PROJ}.scales"}


def test_wrong_shape(cli_results):
    doc = _expect(cli_results["tensor-set"], "wrong-shape")
    assert _at(doc, "wrong-shape") == {f"{DOWN}.scales"} and "config-mismatch" not in codes(doc)


def test_wrong_dtype(cli_results):
    assert _at(_expect(cli_results["tensor-set"], "wrong-dtype"), "wrong-dtype") == {"model.layers.1.self_attn.k_proj.g_idx"}


def test_unexpected_tensor(cli_results):
    assert _at(_expect(cli_results["tensor-set"], "unexpected-tensor"), "unexpected-tensor") == {f"{Q_PROJ}.extra"}


def test_bad_config_unparseable(cli_results):
    assert _expect(cli_results["bad-config"], "bad-config")["format"] == "gptq"


@pytest.mark.parametrize("field,value", [("bits", 5), ("group_size", 0), ("damp_percent", 1.5), ("sym", "yes")])
def test_bad_config_values(tmp_path, tiny_cfg, field, value):
    gptq.write_variant(tmp_path, tiny_cfg)
    edit_json(tmp_path / "quantize_config.json", lambda d: d.__setitem__(field, value))
    report = api.inspect(tmp_path)
    assert "bad-config" in report.codes() and not report.ok


def test_config_mismatch(cli_results):
    doc = _expect(cli_results["config-mismatch"], "config-mismatch")
    assert "group_size 32" in _message(doc, "config-mismatch") and "group_size 128" in _message(doc, "config-mismatch")
    assert "wrong-shape" not in codes(doc)  # the tensors are checked against what they imply


def test_config_conflict(cli_results):
    doc = _expect(cli_results["config-conflict"], "config-conflict")
    assert doc["config_source"] == "quantize_config.json"


def test_g_idx_mismatch_without_act_order(cli_results):
    _expect(cli_results["g_idx-mismatch"], "g_idx-mismatch")


def test_g_idx_mismatch_with_act_order(cli_results):
    _expect(cli_results["g_idx-mismatch-act-order"], "g_idx-mismatch")


def test_g_idx_out_of_range(tmp_path, tiny_cfg):
    gptq.write_variant(tmp_path, tiny_cfg, group_size=32, desc_act=True)
    edit_tensors(tmp_path, _set(f"{DOWN}.g_idx", lambda a: np.where(np.arange(a.size) == 0, 16, a).astype(np.int32)))
    report = api.inspect(tmp_path)
    assert "g_idx-mismatch" in report.codes() and not report.ok


def test_act_order_that_lies_warns(cli_results):
    _expect(cli_results["act-order-trivial"], "act-order-trivial", "warning")


def test_sym_zeros(cli_results):
    doc = _expect(cli_results["sym-zeros"], "sym-zeros")
    assert "v2 zero points" in _message(doc, "sym-zeros")


def test_lossy_zero_wrap_warns(cli_results):
    _expect(cli_results["lossy-zero-wrap"], "lossy-zero-wrap", "warning")


def test_size_mismatch_is_reported(tmp_path, tiny_cfg):
    gptq.write_variant(tmp_path, tiny_cfg)
    edit_tensors(tmp_path, _set("lm_head.weight", lambda a: a.astype(np.float32)))
    report = api.inspect(tmp_path)
    size = [f for f in report.findings if f.code == "size"]
    assert size and size[0].severity.value == "warning"


def test_detect_and_size_cli(tmp_path, tiny_cfg):
    (tmp_path / "config.json").write_text(json.dumps(tiny_cfg))
    est = predict_size(tmp_path, "gptq", bits=4, group_size=128)
    assert set(est.parts) == {"qweight", "qzeros", "scales", "g_idx", "bias", "embeddings", "lm_head", "norms", "header"}
    proc = subprocess.run([sys.executable, "-m", "mcard.cli", "size", str(tmp_path), "--format", "gptq", "--bits", "4",
                           "-g", "128", "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["total_bytes"] == est.total_bytes
    gptq.write_variant(tmp_path / "v", tiny_cfg)
    assert est.total_bytes == weights_file(tmp_path / "v").stat().st_size
