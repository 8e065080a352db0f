"""mcard against checkpoints GPTQModel 7.3.6 wrote on the CPU (tests/fixtures/gptqmodel, by make_fixtures.py).

GPTQModel writes no bias a model lacks and orders the data its own way: validate's
prediction follows the file, ``size --writer gptqmodel`` predicts it, and ``dequantize``
equals GPTQModel's own ``dequantize_weight()`` bit for bit (float16).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from helpers import FIXTURES, run_cli
from mcard import api
from mcard.core.arch import ModelShape
from mcard.formats import gptq

HERE = FIXTURES / "gptqmodel"
FACTS = json.loads((HERE / "gptqmodel.json").read_text())


@pytest.mark.parametrize("case", sorted(FACTS["cases"]))
def test_gptqmodel_checkpoint_validates_sizes_and_dequantizes(case):
    folder = HERE / case
    report = api.inspect(folder)
    findings = [(f.severity.value, f.code, f.message) for f in report.all_findings()]
    assert report.format == "gptq" and report.ok and all(f[0] == "info" for f in findings), findings
    weights = folder / "model.safetensors"
    assert report.predicted_bytes == weights.stat().st_size
    qc = FACTS["cases"][case]["quantize_config"]
    cfg = json.loads((folder / "config.json").read_text())
    shape = ModelShape.from_config(cfg)
    est = gptq.predict_size(shape, qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"], writer="gptqmodel",
                            config_doc=cfg)
    assert est.total_bytes == weights.stat().st_size and est.parts["bias"] == 0
    assert gptq.predict_size(shape, qc["bits"], qc["group_size"], writer="autogptq", config_doc=cfg).parts["bias"] > 0
    for module, digest in FACTS["cases"][case]["weights"].items():
        got = api.dequantize(folder, module).astype(np.float16)
        assert hashlib.sha256(got.tobytes()).hexdigest() == digest, module


def test_size_writer_option():
    folder = HERE / "4bit-g32"
    args = ["size", str(folder / "config.json"), "--format", "gptq", "--bits", "4", "-g", "32", "--json"]
    auto = json.loads(run_cli(*args).output)
    model = json.loads(run_cli(*args, "--writer", "gptqmodel").output)
    assert model["total_bytes"] == (folder / "model.safetensors").stat().st_size
    assert auto["params"]["writer"] == "autogptq" and auto["total_bytes"] > model["total_bytes"]
    bad = run_cli(*args, "--writer", "exllama")
    assert bad.exit_code == 2 and "--writer: gptq writer must be autogptq or gptqmodel, not 'exllama'" in bad.output


def test_corrupted_gptqmodel_checkpoint_is_caught(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    shutil.copytree(HERE / "4bit-g32-actorder-asym", tmp_path / "v")
    path = tmp_path / "v" / "model.safetensors"
    tensors = load_file(str(path))
    gi = tensors["model.layers.0.self_attn.q_proj.g_idx"]
    tensors["model.layers.0.self_attn.q_proj.g_idx"] = torch.zeros_like(gi)  # every column in group 0
    del tensors["model.layers.1.mlp.up_proj.qzeros"]
    save_file(tensors, str(path), {"format": "pt"})
    codes = {f.code for f in api.inspect(tmp_path / "v").all_findings() if f.severity.value == "error"}
    assert {"g_idx-mismatch", "missing-tensor"} <= codes


def test_registry_made_with_gptqmodel_predicts_its_layout(tmp_path):
    from mcard.core.size import predict_size
    from mcard.registry.entry import load_entry

    cfg = json.loads((HERE / "4bit-g32" / "config.json").read_text())
    arch = "\n".join(f"{k} = {json.dumps(cfg[k])}" for k in ("model_type", "hidden_size", "intermediate_size",
                                                               "num_hidden_layers", "num_attention_heads",
                                                               "num_key_value_heads", "vocab_size", "tie_word_embeddings"))
    entry = tmp_path / "e.toml"
    entry.write_text(f"""[model]
repo = "org/tiny-GPTQ"
name = "Tiny GPTQ"
creator = "org"
base_model = "org/tiny"
license = "apache-2.0"
description = "Tiny."
prompt = "none"

[architecture]
{arch}
dtype = "bfloat16"

[[variants]]
branch = "main"
format = "gptq"
bits = 4
group_size = 32
desc_act = false
made_with = "GPTQModel 7.3.6"
""")
    [v] = load_entry(entry).variants
    assert v.size_params()["writer"] == "gptqmodel"
    est = predict_size(load_entry(entry).architecture, "gptq", **v.size_params())
    assert est.total_bytes == (HERE / "4bit-g32" / "model.safetensors").stat().st_size
