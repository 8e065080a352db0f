"""mcard against 4-bit checkpoints transformers + bitsandbytes wrote (``save_pretrained``, on the CPU).

A tiny float32 llama built from a config (no download), loaded with a BitsAndBytesConfig
and saved: validate finds nothing the writer contradicts, the size is exact, and
``dequantize`` equals bitsandbytes' own ``dequantize_4bit`` bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
bnb = pytest.importorskip("bitsandbytes")

from helpers import run_cli
from mcard import api
from mcard.core.arch import ModelShape
from mcard.formats import bnb as bnb_fmt

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, tie_word_embeddings=False)
CASES = {
    "nf4+double_quant": dict(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(bnb_4bit_quant_type="fp4"),
    "skip_modules": dict(bnb_4bit_quant_type="nf4", llm_int8_skip_modules=["down_proj", "lm_head"]),
    "storage_bf16": dict(bnb_4bit_quant_type="nf4", bnb_4bit_quant_storage="bfloat16"),
    "storage_f32+dq": dict(bnb_4bit_quant_type="nf4", bnb_4bit_quant_storage="float32", bnb_4bit_use_double_quant=True),
    "storage_f16": dict(bnb_4bit_quant_type="fp4", bnb_4bit_quant_storage="float16"),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**BASE)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_bnb_checkpoint_validates_sizes_and_dequantizes(tmp_path, base_dir, case):
    kw = dict(CASES[case])
    if "bnb_4bit_quant_storage" in kw:
        kw["bnb_4bit_quant_storage"] = getattr(torch, kw["bnb_4bit_quant_storage"])
    model = transformers.LlamaForCausalLM.from_pretrained(
        base_dir, quantization_config=transformers.BitsAndBytesConfig(load_in_4bit=True, **kw), device_map="cpu",
        dtype=torch.float32)
    model.save_pretrained(tmp_path)
    report = api.inspect(tmp_path)
    findings = [(f.severity.value, f.code, f.where, f.message) for f in report.all_findings()]
    assert report.format == "bnb" and report.ok and all(f[0] == "info" for f in findings), findings
    path = tmp_path / "model.safetensors"
    assert report.predicted_bytes == path.stat().st_size
    # size from the base model's config.json (float32): exact, but for the double-quant offsets' digits
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    est = bnb_fmt.predict_size(
        ModelShape.from_file(base_dir / "config.json"), quant_type=qc["bnb_4bit_quant_type"],
        double_quant=qc["bnb_4bit_use_double_quant"], compute_dtype="float32", skip_modules=qc["llm_int8_skip_modules"],
        quant_storage=qc["bnb_4bit_quant_storage"], config_doc=json.loads((base_dir / "config.json").read_text()))
    slack = 4 * 14 if qc["bnb_4bit_use_double_quant"] else 0
    assert abs(est.total_bytes - path.stat().st_size) <= slack
    # dequantize == bitsandbytes' dequantize_4bit of the loaded module, bit for bit
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"):
        module = model.get_submodule(name)
        want = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float().numpy()
        np.testing.assert_array_equal(api.dequantize(tmp_path, name), want)
    if case == "skip_modules":
        kept = model.get_submodule("model.layers.0.mlp.down_proj").weight.detach().numpy()
        np.testing.assert_array_equal(api.dequantize(tmp_path, "model.layers.0.mlp.down_proj"), kept)


def test_nf4_size_follows_the_config_dtype(base_dir):
    """mcard size --format nf4 on a float32 model: fp32 embeddings and norms (was F16 whatever the config said)."""
    out = run_cli(*["size", str(base_dir / "config.json"), "--format", "nf4", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["params"]["dtype"] == "F32"
    assert doc["parts"]["embeddings"] == 4 * 128 * 64


def test_corrupted_bnb_checkpoint_is_caught(tmp_path, base_dir):
    model = transformers.LlamaForCausalLM.from_pretrained(
        base_dir, quantization_config=transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=["down_proj"]),
        device_map="cpu", dtype=torch.float32)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["llm_int8_skip_modules"] = None  # the config no longer says down_proj was kept
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    report = api.inspect(tmp_path)
    assert not report.ok and {"wrong-dtype", "missing-tensor"} <= {f.code for f in report.all_findings()}
