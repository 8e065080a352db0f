"""PEFT LoRA adapters: layout, validate findings, delta weights, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from mcard import api
from mcard.core.arch import ModelShape
from mcard.core.variant import Variant
from mcard.formats import lora

Q = "model.layers.0.self_attn.q_proj"
QA = f"base_model.model.{Q}.lora_A.weight"
QB = f"base_model.model.{Q}.lora_B.weight"


def _rewrite(folder: Path, edit) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_config(folder: Path, **fields) -> None:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(fields)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.fixture(params=[False, True], ids=["no-base", "base"])
def adapter(request, tmp_path, tiny_cfg):
    tensors = lora.write_variant(tmp_path, tiny_cfg, base_config=request.param)
    return tmp_path, tensors


def test_peft_key_names_and_shapes(tmp_path, tiny_cfg):
    tensors = lora.write_variant(tmp_path, tiny_cfg, r=8)
    assert tensors[QA].shape == (8, 256) and tensors[QB].shape == (256, 8)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (8, 512)
    assert len(tensors) == 2 * 7 * 2
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert cfg["base_model_name_or_path"] == "huggyllama/llama-7b"


def test_valid_adapter(adapter):
    folder, _ = adapter
    report = api.inspect(folder)
    assert report.format == "lora" and report.ok, report.findings
    assert report.params["r"] == 64
    assert "exactly" in next(f.message for f in report.findings if f.code == "size")
    assert lora.adapted_modules(Variant.open(folder))[0] == "model.layers.0.mlp.down_proj"


def test_delta_weight(adapter):
    folder, t = adapter
    delta = api.dequantize(folder, Q)
    assert delta.shape == (256, 256) and delta.dtype == np.float32
    ref = (16 / 64) * (torch.from_numpy(t[QB]) @ torch.from_numpy(t[QA])).numpy()
    assert np.allclose(delta, ref, atol=1e-6)


def test_rslora_and_rank_pattern_scaling(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=16)
    _edit_config(tmp_path, use_rslora=True, alpha_pattern={"q_proj": 32})
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert lora.scaling_of(cfg, Q) == 32 / 4 and lora.scaling_of(cfg, "model.layers.0.self_attn.k_proj") == 16 / 4


def test_rank_pattern_respected(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8, base_config=True)
    _rewrite(tmp_path, lambda t: t.update({QA: np.zeros((4, 256), np.float32), QB: np.zeros((256, 4), np.float32)}))
    assert "wrong-rank" in api.inspect(tmp_path).codes()
    _edit_config(tmp_path, rank_pattern={"model.layers.0.self_attn.q_proj": 4})
    report = api.inspect(tmp_path)
    assert report.ok, report.findings


def test_wrong_rank_without_base(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8)
    _edit_config(tmp_path, r=16)
    assert "wrong-rank" in api.inspect(tmp_path).codes()


def test_shape_vs_base(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8, base_config=True)
    _rewrite(tmp_path, lambda t: t.update({QA: np.zeros((8, 128), np.float32)}))
    assert "wrong-shape" in api.inspect(tmp_path).codes()


def test_a_b_disagree_without_base(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8)
    _rewrite(tmp_path, lambda t: t.update({QB: np.zeros((256, 4), np.float32)}))
    assert "wrong-shape" in api.inspect(tmp_path).codes()


def test_missing_target_module(adapter):
    folder, _ = adapter
    _rewrite(folder, lambda t: [t.pop(QA), t.pop(QB)])
    assert "missing-tensor" in api.inspect(folder).codes()


def test_missing_half_of_pair(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8)
    _rewrite(tmp_path, lambda t: t.pop(QB))
    assert "missing-tensor" in api.inspect(tmp_path).codes()


@pytest.mark.parametrize("field,value", [("peft_type", "PREFIX_TUNING"), ("r", 0), ("target_modules", 5), ("lora_alpha", "x")])
def test_bad_config(tmp_path, tiny_cfg, field, value):
    lora.write_variant(tmp_path, tiny_cfg, r=8)
    _edit_config(tmp_path, **{field: value})
    assert "bad-adapter-config" in api.inspect(tmp_path).codes()


def test_regex_target_modules(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8, target_modules=["q_proj", "v_proj"], base_config=True)
    _edit_config(tmp_path, target_modules=r".*\.(q_proj|v_proj)")
    assert api.inspect(tmp_path).ok
    _edit_config(tmp_path, target_modules=r".*\.(q_proj|v_proj|o_proj)")
    assert "missing-tensor" in api.inspect(tmp_path).codes()


def test_modules_to_save(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8, base_config=True)
    _edit_config(tmp_path, modules_to_save=["lm_head"])
    assert "missing-tensor" in api.inspect(tmp_path).codes()
    _rewrite(tmp_path, lambda t: t.update({"base_model.model.lm_head.weight": np.zeros((256, 256), np.float16)}))
    report = api.inspect(tmp_path)
    assert report.ok, report.findings


def test_bin_only_adapter_warns(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8)
    t = load_file(str(tmp_path / "adapter_model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in t.items()}, tmp_path / "adapter_model.bin")
    (tmp_path / "adapter_model.safetensors").unlink()
    report = api.inspect(tmp_path)
    assert report.format == "lora" and "adapter-pickle" in report.codes() and report.ok


def test_bin_next_to_safetensors_warns(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=8)
    torch.save({"x": torch.zeros(2)}, tmp_path / "adapter_model.bin")
    report = api.inspect(tmp_path)
    assert "pickle-file" in report.codes() and report.ok


def test_predict_size_guanaco_65b():
    # llama-65b, r=64 on all linears: ~800M params; Guanaco's adapter_model.bin is ~3.2 GB in float32
    shape = ModelShape.from_config({"model_type": "llama", "hidden_size": 8192, "intermediate_size": 22016,
                                    "num_hidden_layers": 80, "num_attention_heads": 64, "vocab_size": 32000})
    est = lora.predict_size(shape, r=64)
    assert est.parts["lora_A"] + est.parts["lora_B"] == 4 * 80 * 64 * (4 * 2 * 8192 + 3 * (8192 + 22016))
    assert 3.1e9 < est.total_bytes < 3.3e9
    assert lora.predict_size(shape, r=64, dtype="F16").total_bytes < est.total_bytes / 1.9


def test_predict_size_exact(tmp_path, tiny_cfg):
    lora.write_variant(tmp_path, tiny_cfg, r=16, target_modules=["q_proj", "v_proj"], dtype="F16")
    est = lora.predict_size(ModelShape.from_config(tiny_cfg), r=16, target_modules=["q_proj", "v_proj"], dtype="F16")
    assert est.total_bytes == (tmp_path / "adapter_model.safetensors").stat().st_size
