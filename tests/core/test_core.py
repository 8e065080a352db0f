"""Core hardening through the real CLI: one clear line, exit 2, no traceback, bounded memory."""

from __future__ import annotations

import json
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import cli_process, run_cli
from mcard.core.safetensors_io import write
from mcard.formats import hf


def run_validate(path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m mcard.cli validate PATH`` in a fresh process (exit codes, stderr, no traceback)."""
    return cli_process("validate", path, *extra, timeout=60)


def cli_json(path: Path) -> tuple[int, dict]:
    """``validate --json`` through the same typer app, in-process (keeps the suite fast on busy CI)."""
    result = run_cli("validate", path, "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout)


def assert_unusable(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, stderr exactly one line naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def codes_of(doc: dict) -> set[str]:
    return {f["code"] for f in doc["findings"]}


def _raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_malformed_json_config(tmp_path, tiny_cfg):
    hf.write_variant(tmp_path, tiny_cfg)
    (tmp_path / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 256,,\n}')
    line = assert_unusable(run_validate(tmp_path), "config.json", "line 3")
    assert "column" in line


def test_header_length_past_eof(tmp_path):
    f = _raw_safetensors(tmp_path / "model.safetensors", b'{"a": 1}', length=5000)
    assert_unusable(run_validate(f), "model.safetensors", "past the end")


def test_header_over_limit_does_not_allocate(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 2**40))  # 8 bytes claiming a 1 TiB header
    t = time.monotonic()
    assert_unusable(run_validate(f), "model.safetensors", "exceeds")
    assert time.monotonic() - t < 10


def test_truncated_data_offsets_out_of_range(tmp_path, tiny_cfg):
    hf.write_variant(tmp_path, tiny_cfg)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    rc, doc = cli_json(tmp_path)
    assert rc == 1 and {"bad-offsets", "file-size"} <= codes_of(doc)


def test_overlapping_offsets(tmp_path):
    header = {"a.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b.weight": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    f = _raw_safetensors(tmp_path / "model.safetensors", header, bytes(24))
    rc, doc = cli_json(f)
    assert rc == 1
    found = doc["findings"]
    assert any(x["code"] == "bad-offsets" and "overlap" in x["message"] for x in found)


def test_folder_without_model(tmp_path):
    (tmp_path / "README.md").write_text("hello")
    (tmp_path / "notes.txt").write_text("x")
    assert_unusable(run_validate(tmp_path), "no model")


def test_empty_folder(tmp_path):
    assert_unusable(run_validate(tmp_path), "empty")


def test_nonexistent_path(tmp_path):
    assert_unusable(run_validate(tmp_path / "nope"), "nope", "no such file")


def _sharded(tmp_path: Path, tiny_cfg: dict) -> Path:
    from safetensors.numpy import load_file

    hf.write_variant(tmp_path, tiny_cfg)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        write(tmp_path / shard, {k: tensors[k] for k in keys}, {"format": "pt"})
        weight_map.update({k: shard for k in keys})
    total = sum(v.nbytes for v in tensors.values())
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return tmp_path


def test_sharded_ok(tmp_path, tiny_cfg):
    rc, doc = cli_json(_sharded(tmp_path, tiny_cfg))
    assert rc == 0 and doc["format"] == "hf", doc["findings"]


def test_missing_shard(tmp_path, tiny_cfg):
    folder = _sharded(tmp_path, tiny_cfg)
    (folder / "model-00002-of-00002.safetensors").unlink()
    rc, doc = cli_json(folder)
    assert rc == 1 and "missing-shard" in codes_of(doc)


def test_duplicate_tensors_across_shards(tmp_path, tiny_cfg):
    folder = _sharded(tmp_path, tiny_cfg)
    write(folder / "model-00003-of-00002.safetensors", {"model.norm.weight": np.ones(256, np.float16)}, {"format": "pt"})
    rc, doc = cli_json(folder)
    assert rc == 1 and "duplicate-tensor" in codes_of(doc)


def test_huge_fake_70b_header(tmp_path):
    """~7000 tensor entries of llama-70B shapes pointing past EOF: fast report, no allocation."""
    h, m, kv, vocab, layers = 8192, 28672, 1024, 32000, 80
    shapes = {"model.embed_tokens.weight": [vocab, h], "lm_head.weight": [vocab, h], "model.norm.weight": [h]}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": [h, h], p + "self_attn.k_proj.weight": [kv, h],
                       p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, h],
                       p + "mlp.gate_proj.weight": [m, h], p + "mlp.up_proj.weight": [m, h],
                       p + "mlp.down_proj.weight": [h, m], p + "input_layernorm.weight": [h],
                       p + "post_attention_layernorm.weight": [h]})
    for i in range(7000 - len(shapes)):  # pad with extra entries up to ~7000
        shapes[f"extra.{i}.weight"] = [h, 64]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    assert offset > 100e9
    _raw_safetensors(tmp_path / "model.safetensors", header, bytes(1024))
    cfg = {"model_type": "llama", "hidden_size": h, "intermediate_size": m, "num_hidden_layers": layers,
           "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": vocab, "torch_dtype": "float16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    t = time.monotonic()
    proc = run_validate(tmp_path, "--json")
    assert time.monotonic() - t < 15
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert {"bad-offsets", "file-size", "unexpected-tensor"} <= codes_of(json.loads(proc.stdout))


@pytest.mark.parametrize("blob", [b"\x00" * 3, b"\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_tiny_or_garbage_safetensors(tmp_path, blob):
    f = tmp_path / "model.safetensors"
    f.write_bytes(blob)
    assert_unusable(run_validate(f), "model.safetensors")


def test_header_not_json(tmp_path):
    f = _raw_safetensors(tmp_path / "model.safetensors", b"{not json at all}   ")
    assert_unusable(run_validate(f), "model.safetensors", "JSON")
