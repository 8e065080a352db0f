"""Plain HF safetensors checkpoints and pickle checkpoints (detected, scanned, never unpickled)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from mcard import api
from mcard.core.arch import ModelShape
from mcard.formats import hf, pickled as pickle_fmt


def _rewrite(folder, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_hf_fixture_valid_and_size_exact(tmp_path, tiny_cfg):
    weights = hf.write_variant(tmp_path, tiny_cfg)
    report = api.inspect(tmp_path)
    assert report.format == "hf" and report.ok, report.findings
    assert "exactly" in next(f.message for f in report.findings if f.code == "size")
    est = hf.predict_size(ModelShape.from_config(tiny_cfg), dtype="F16")
    assert est.total_bytes == (tmp_path / "model.safetensors").stat().st_size
    name = "model.layers.0.mlp.down_proj"
    assert np.array_equal(api.dequantize(tmp_path, name), weights[f"{name}.weight"])


def test_hf_missing_layer(tmp_path, tiny_cfg):
    hf.write_variant(tmp_path, tiny_cfg)
    _rewrite(tmp_path, lambda t: [t.pop(k) for k in list(t) if k.startswith("model.layers.1.")])
    report = api.inspect(tmp_path)
    assert "missing-tensor" in report.codes() and not report.ok


def test_hf_wrong_dtype(tmp_path, tiny_cfg):
    hf.write_variant(tmp_path, tiny_cfg)
    key = "model.layers.0.self_attn.q_proj.weight"
    _rewrite(tmp_path, lambda t: t.update({key: t[key].astype(np.float32)}))
    assert "wrong-dtype" in api.inspect(tmp_path).codes()


def test_hf_fp32_size(tiny_cfg):
    shape = ModelShape.from_config(tiny_cfg)
    f16, f32 = hf.predict_size(shape, dtype="F16"), hf.predict_size(shape, dtype="F32")
    assert f32.parts["linears"] == 2 * f16.parts["linears"] == 4 * sum(
        lin.in_features * lin.out_features for lin in shape.linears())


def test_torch_zip_checkpoint_is_pickle_only(tmp_path):
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4, dtype=torch.float16)}, tmp_path / "pytorch_model.bin")
    proc = subprocess.run([sys.executable, "-m", "mcard.cli", "validate", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "pickle"
    codes = {f["code"] for f in doc["findings"]}
    assert "pickle-only" in codes and "pickle-unsafe-import" not in codes
    container, imports, storages = pickle_fmt.scan(tmp_path / "pytorch_model.bin")
    assert container == "torch zip" and storages == 1 and "torch._utils _rebuild_tensor_v2" in imports


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_global_flagged_without_loading(tmp_path):
    blob = pickle.dumps({"x": _Evil()}, protocol=2)  # GLOBAL 'posix system' (or 'nt system')
    assert b"system" in blob
    (tmp_path / "pytorch_model.bin").write_bytes(blob)
    report = api.inspect(tmp_path)
    assert report.format == "pickle" and {"pickle-only", "pickle-unsafe-import"} <= report.codes()
    msg = next(f.message for f in report.findings if f.code == "pickle-unsafe-import")
    assert "system" in msg


def test_stack_global_protocol4_flagged(tmp_path):
    (tmp_path / "model.pt").write_bytes(pickle.dumps(_Evil(), protocol=4))
    assert "pickle-unsafe-import" in api.inspect(tmp_path).codes()


def test_pt_next_to_safetensors_warns(tmp_path, tiny_cfg):
    hf.write_variant(tmp_path, tiny_cfg)
    torch.save({"w": torch.zeros(2)}, tmp_path / "training_args.pt")
    report = api.inspect(tmp_path)
    assert report.format == "hf" and "pickle-file" in report.codes()
    assert report.ok  # a warning, not an error
