"""mcard against adapters PEFT itself saved (``save_pretrained``), one per LoraConfig option.

A tiny llama built from a config (no download), wrapped with ``get_peft_model`` and saved:
validate finds nothing PEFT contradicts, the predicted size equals the file, the tensors
read back equal PEFT's, and ``dequantize`` equals PEFT's own ``get_delta_weight``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from mcard import api
from mcard.core.arch import ModelShape
from mcard.core.variant import Variant
from mcard.formats import lora

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, tie_word_embeddings=False)
CASES = {
    "list": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "regex": dict(r=4, target_modules=r".*\.layers\.1\..*(k_proj|o_proj)"),
    "all-linear": dict(r=4, target_modules="all-linear"),
    "embeddings": dict(r=4, target_modules=["embed_tokens", "lm_head", "q_proj"]),
    "lora_bias": dict(r=4, target_modules=["q_proj", "down_proj"], lora_bias=True),
    "dora": dict(r=4, target_modules=["q_proj", "down_proj"], use_dora=True),
    "modules_to_save": dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head", "embed_tokens"]),
    "patterns+rslora": dict(r=4, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 8},
                            alpha_pattern={"q_proj": 32}, use_rslora=True),
    "layers_to_transform": dict(r=4, target_modules=["q_proj", "up_proj"], layers_to_transform=[1]),
    "exclude": dict(r=4, target_modules=["q_proj", "k_proj"], exclude_modules=["model.layers.0.self_attn.k_proj"]),
}


def _save(folder, kw: dict, dtype=None):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**BASE)
    model = transformers.LlamaForCausalLM(cfg)
    if dtype is not None:
        model = model.to(dtype)
    # PEFT records name_or_path as base_model_name_or_path and looks for its config.json when saving:
    # a local folder keeps it off the network. The base config beside the adapter: shapes are checked against it.
    model.config.save_pretrained(folder)
    model.name_or_path = str(folder)
    pm = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kw))
    pm.save_pretrained(folder)
    return pm


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_validates_and_sizes_exactly(tmp_path, case):
    pm = _save(tmp_path, CASES[case])
    report = api.inspect(tmp_path)
    findings = [(f.severity.value, f.code, f.where, f.message) for f in report.all_findings()]
    assert report.format == "lora" and report.ok and all(f[0] == "info" for f in findings), findings
    path = tmp_path / lora.WEIGHTS_NAME
    assert report.predicted_bytes == path.stat().st_size
    saved = json.loads((tmp_path / lora.CONFIG_NAME).read_text())
    shape = ModelShape.from_config(json.loads((tmp_path / "config.json").read_text()))
    assert lora.predict_size(shape, adapter_config=saved).total_bytes == path.stat().st_size
    # the tensors mcard reads are PEFT's, and dequantize is PEFT's own delta weight
    state = peft.get_peft_model_state_dict(pm)
    variant = Variant.open(tmp_path)
    assert set(variant.tensors) == set(state)
    for module in lora.adapted_modules(variant)[:3]:
        layer = pm.base_model.model.get_submodule(module)
        want = layer.get_delta_weight("default").detach().float().numpy()
        got = api.dequantize(tmp_path, module)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_modules_to_save_keep_the_model_dtype(tmp_path):
    """A bf16 model: LoRA weights are upcast to F32, modules_to_save stay BF16 (mcard used to predict F16)."""
    _save(tmp_path, CASES["modules_to_save"], dtype=torch.bfloat16)
    report = api.inspect(tmp_path)
    assert report.ok and report.predicted_bytes == (tmp_path / lora.WEIGHTS_NAME).stat().st_size
    variant = Variant.open(tmp_path)
    assert variant.tensors["base_model.model.lm_head.weight"][1].dtype == "BF16"
    saved = json.loads((tmp_path / lora.CONFIG_NAME).read_text())
    shape = ModelShape.from_config(json.loads((tmp_path / "config.json").read_text()))
    est = lora.predict_size(shape, adapter_config=saved, config_doc={"dtype": "bfloat16"})
    assert est.total_bytes == (tmp_path / lora.WEIGHTS_NAME).stat().st_size


def test_corrupted_peft_adapters_are_caught(tmp_path):
    from safetensors.numpy import load_file, save_file

    _save(tmp_path, CASES["dora"])
    path = tmp_path / lora.WEIGHTS_NAME
    tensors = load_file(str(path))
    dropped = next(k for k in tensors if k.endswith(lora.MAGNITUDE_SUFFIX))
    del tensors[dropped]
    save_file(tensors, str(path), {"format": "pt"})
    report = api.inspect(tmp_path)
    assert not report.ok and ("missing-tensor", dropped) in {(f.code, f.where) for f in report.all_findings()}
    cfg = json.loads((tmp_path / lora.CONFIG_NAME).read_text())
    (tmp_path / lora.CONFIG_NAME).write_text(json.dumps(dict(cfg, r=8)))
    assert "wrong-rank" in {f.code for f in api.inspect(tmp_path).all_findings()}
