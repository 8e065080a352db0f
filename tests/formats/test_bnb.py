"""bitsandbytes 4-bit: quantize/dequantize numerics, serialization layout, validate findings, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mcard import api
from mcard.core.arch import ModelShape
from mcard.core.variant import Variant
from mcard.formats import bnb

Q = "model.layers.0.self_attn.q_proj"


def _rewrite(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _set_config(folder: Path, **qc) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"].update(qc)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def variant(tmp_path, tiny_cfg):
    weights = bnb.write_variant(tmp_path, tiny_cfg)
    return tmp_path, weights


def test_code_books_are_bitsandbytes_values():
    assert bnb.NF4_CODE[0] == -1.0 and bnb.NF4_CODE[7] == 0.0 and bnb.NF4_CODE[15] == 1.0
    assert bnb.NF4_CODE[8] == float(np.float32(0.07958029955625534))
    assert bnb.FP4_CODE[3] == 1.0 and bnb.FP4_CODE[2] == float(np.float32(8.0) / np.float32(12.0))
    assert bnb.FP4_CODE[1] == float(np.float32(0.0625) / np.float32(12.0)) and bnb.FP4_CODE[8] == 0.0
    assert len(bnb.DYNAMIC_MAP) == 256 and bnb.DYNAMIC_MAP[-1] == 1.0 and bnb.DYNAMIC_MAP[127] == 0.0
    assert np.all(np.diff(bnb.DYNAMIC_MAP) > 0)


def test_dynamic_map_matches_bitsandbytes_recipe():
    torch = pytest.importorskip("torch")
    data: list[float] = []
    for i in range(7):  # create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)
        b = torch.linspace(0.1, 1, 2**i + 1)
        means = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist() + (-(10 ** (-6 + i)) * means).tolist()
    data = sorted(data + [0, 1.0])
    assert np.array_equal(torch.Tensor(data).numpy(), bnb.DYNAMIC_MAP)


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("dq", [True, False])
def test_quantize_layout_and_roundtrip(qt, dq):
    w = (np.random.default_rng(1).standard_normal((96, 320)) * 0.02).astype(np.float32)
    lin = bnb.quantize(w, qt, double_quant=dq)
    n = w.size
    assert lin.weight.dtype == np.uint8 and lin.weight.shape == (n // 2, 1)
    assert lin.absmax.shape == (n // 64,) and lin.absmax.dtype == (np.uint8 if dq else np.float32)
    if dq:
        assert lin.nested_absmax.shape == (-(-(n // 64) // 256),) and lin.nested_quant_map.shape == (256,)
        assert abs(lin.nested_offset - float(np.abs(w.reshape(-1, 64)).max(1).mean())) < 1e-6
    # first element in the high nibble
    codes = bnb.unpack_codes(lin)
    assert codes[0] == lin.weight[0, 0] >> 4 and codes[1] == lin.weight[0, 0] & 15
    # per-block absmax survives double quant closely; dequant error bounded by half the widest code gap
    true_absmax = np.abs(w.reshape(-1, 64)).max(1)
    assert np.allclose(bnb.absmax_float(lin), true_absmax, rtol=0.02, atol=1e-4)
    d = bnb.dequantize_linear(lin)
    assert d.shape == w.shape and d.dtype == np.float32
    gap = 0.34 if qt == "fp4" else 0.31  # widest gaps: fp4 2/3..1, nf4 -1..-0.696
    assert np.all(np.abs(d - w) <= gap / 2 * np.repeat(true_absmax, 64).reshape(w.shape) * 1.03 + 1e-6)


def test_nearest_code_and_exact_values():
    # a block whose values are exactly code * absmax quantizes to those codes
    vals = np.array(bnb.NF4_CODE * 4, np.float32).reshape(1, 64) * np.float32(0.5)
    lin = bnb.quantize(vals, "nf4", double_quant=False)
    assert list(bnb.unpack_codes(lin)[:16]) == list(range(16))
    assert np.array_equal(bnb.dequantize_linear(lin), vals)


def test_quant_state_json_exact(variant):
    folder, _ = variant
    t = load_file(str(folder / "model.safetensors"))
    doc = json.loads(bytes(t[f"{Q}.weight.quant_state.bitsandbytes__nf4"]))
    assert list(doc) == ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]
    assert doc["shape"] == [256, 256] and doc["blocksize"] == 64 and doc["nested_blocksize"] == 256
    assert t[f"{Q}.weight"].shape == (256 * 256 // 2, 1)


def test_valid_variant_and_exact_size(variant, tiny_cfg):
    folder, weights = variant
    report = api.inspect(folder)
    assert report.format == "bnb" and report.ok, report.findings
    assert report.params["quant_type"] == "nf4" and report.params["double_quant"] is True
    assert "exactly" in next(f.message for f in report.findings if f.code == "size")
    est = bnb.predict_size(ModelShape.from_config(tiny_cfg))
    actual = (folder / "model.safetensors").stat().st_size
    assert abs(est.total_bytes - actual) <= 8 * len(ModelShape.from_config(tiny_cfg).linears())
    assert {r.name.split(" ")[0]: r.compatible for r in report.runtimes}["llama.cpp"] is False


def test_dequantize_api(variant):
    folder, weights = variant
    d = api.dequantize(folder, Q)
    assert d.shape == (256, 256) and np.abs(d - weights[f"{Q}.weight"]).max() < 0.02
    names = bnb.quantized_linears(Variant.open(folder))
    assert len(names) == 14 and Q in names
    lin = bnb.load_linear(Variant.open(folder), Q + ".weight")
    assert (lin.quant_type, lin.blocksize, lin.out_features, lin.in_features) == ("nf4", 64, 256, 256)


def test_fp4_no_double_quant_valid(tmp_path, tiny_cfg):
    bnb.write_variant(tmp_path, tiny_cfg, quant_type="fp4", double_quant=False)
    report = api.inspect(tmp_path)
    assert report.ok, report.findings
    assert report.params["quant_type"] == "fp4" and report.params["double_quant"] is False


def test_missing_tensor(variant):
    folder, _ = variant
    _rewrite(folder, lambda t: t.pop(f"{Q}.weight.absmax"))
    assert "missing-tensor" in api.inspect(folder).codes()


def test_wrong_shape(variant):
    folder, _ = variant
    _rewrite(folder, lambda t: t.update({f"{Q}.weight": t[f"{Q}.weight"][:-64]}))
    assert "wrong-shape" in api.inspect(folder).codes()


def test_wrong_dtype(variant):
    folder, _ = variant
    _rewrite(folder, lambda t: t.update({f"{Q}.weight.quant_map": t[f"{Q}.weight.quant_map"].astype(np.float16)}))
    assert "wrong-dtype" in api.inspect(folder).codes()


def test_bad_quant_state_shape(variant):
    folder, _ = variant
    key = f"{Q}.weight.quant_state.bitsandbytes__nf4"

    def edit(t):
        doc = json.loads(bytes(t[key]))
        doc["shape"] = [128, 512]
        t[key] = np.frombuffer(json.dumps(doc).encode(), np.uint8).copy()

    _rewrite(folder, edit)
    report = api.inspect(folder)
    assert "bad-quant-state" in report.codes() and not report.ok


def test_bad_quant_state_json(variant):
    folder, _ = variant
    key = f"{Q}.weight.quant_state.bitsandbytes__nf4"
    _rewrite(folder, lambda t: t.update({key: np.frombuffer(b'{"quant_type": "nf4", ', np.uint8).copy()}))
    assert "bad-quant-state" in api.inspect(folder).codes()


def test_quant_type_disagrees_with_config(variant):
    folder, _ = variant
    _set_config(folder, bnb_4bit_quant_type="fp4")
    assert "bad-quant-state" in api.inspect(folder).codes()


def test_bad_code_book(variant):
    folder, _ = variant
    _rewrite(folder, lambda t: t.update({f"{Q}.weight.quant_map": np.array(bnb.FP4_CODE, np.float32)}))
    assert "bad-code-book" in api.inspect(folder).codes()


def test_config_says_double_quant_but_no_nested(tmp_path, tiny_cfg):
    bnb.write_variant(tmp_path, tiny_cfg, double_quant=False)
    _set_config(tmp_path, bnb_4bit_use_double_quant=True)
    report = api.inspect(tmp_path)
    assert "config-mismatch" in report.codes() and not report.ok


def test_no_config_checks_consistency(variant):
    folder, _ = variant
    (folder / "config.json").unlink()
    report = api.inspect(folder)
    assert report.format == "bnb" and report.params["linears"] == 14 and report.ok, report.findings


def test_size_cli_format_nf4(tiny_cfg):
    from mcard.core.size import predict_size

    shape = ModelShape.from_config(tiny_cfg)
    est = predict_size(shape, "nf4", double_quant=False)
    assert est.params["quant_type"] == "nf4" and est.total_bytes == sum(est.parts.values())
    n = sum(lin.in_features * lin.out_features for lin in shape.linears())
    assert est.parts["linears"] == n // 2 and est.parts["absmax"] == 4 * n // 64
