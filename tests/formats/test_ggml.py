"""Legacy GGML (ggjt v3) files: header reading, validate findings, builder round trip."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from helpers import cli_process
from mcard import api
from mcard.core.arch import ModelShape
from mcard.core.errors import UnusableInput
from mcard.formats import ggml


@pytest.fixture
def ggml_cfg(tiny_cfg):
    # ggjt llama: no GQA, and the FFN width comes from n_mult (256 -> 768 for hidden 256).
    return dict(tiny_cfg, num_key_value_heads=tiny_cfg["num_attention_heads"], intermediate_size=768)


def _cli(path: Path) -> tuple[int, str]:
    proc = cli_process("validate", path, "--json", timeout=60)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("ftype", ["q4_0", "q8_0", "q4_K_M", "q3_K_L", "q6_K"])
def test_round_trip(tmp_path, ggml_cfg, ftype):
    written = ggml.write_variant(tmp_path, ggml_cfg, ftype)
    report = api.inspect(tmp_path)
    assert report.format == "ggml" and report.ok
    assert "legacy-ggml" in report.codes()
    assert not {r.name: r for r in report.runtimes}["llama.cpp"].compatible
    path = next(tmp_path.glob("*.bin"))
    assert report.predicted_bytes == path.stat().st_size
    assert report.params["container"] == "ggjt v3"
    for name in ("layers.0.attention.wq.weight", "layers.1.feed_forward.w2.weight", "output.weight"):
        np.testing.assert_array_equal(api.dequantize(tmp_path, name), written[name])


def test_types_follow_june_2023_mix(tmp_path, ggml_cfg):
    path = tmp_path / "m.bin"
    ggml.write_variant(path, ggml_cfg, "q3_K_M")
    g = ggml.read(path)
    types = {t.name: t.type for t in g.tensors}
    assert types["layers.0.attention.wv.weight"] == "Q4_K" and types["layers.0.attention.wq.weight"] == "Q3_K"
    assert types["output.weight"] == "Q3_K" and types["norm.weight"] == "F32"
    assert g.ftype == "Q3_K_M"


def test_truncated(tmp_path, ggml_cfg):
    path = tmp_path / "m.bin"
    ggml.write_variant(path, ggml_cfg, "q4_0")
    path.write_bytes(path.read_bytes()[:-3000])
    report = api.inspect(path)
    assert not report.ok and "file-size" in report.codes()


def test_missing_tensor(tmp_path, ggml_cfg):
    path = tmp_path / "m.bin"
    ggml.write_variant(path, ggml_cfg, "q4_0")
    g = ggml.read(path)
    last = g.tensors[-1]
    # cut exactly before the last tensor's header: a clean but incomplete tensor list
    data = path.read_bytes()
    header_start = data.rfind(last.name.encode()) - 12 - 4 * len(last.shape)
    path.write_bytes(path.read_bytes()[:header_start])
    report = api.inspect(path)
    assert "missing-tensor" in report.codes()


def test_bad_version_and_truncated_vocab_exit_2(tmp_path, ggml_cfg):
    path = tmp_path / "m.bin"
    ggml.write_variant(path, ggml_cfg, "q4_0")
    data = path.read_bytes()
    path.write_bytes(data[:4] + struct.pack("<I", 9) + data[8:])
    code, err = _cli(path)
    assert code == 2 and "version 9" in err and "Traceback" not in err
    path.write_bytes(data[:200])
    code, err = _cli(path)
    assert code == 2 and "vocab" in err
    with pytest.raises(UnusableInput):
        ggml.read(path)


def test_predict_size_layout_exact(tmp_path, ggml_cfg):
    """predict_size equals a real file except for the vocab text estimate."""
    path = tmp_path / "m.bin"
    ggml.write_variant(path, ggml_cfg, "q4_K_S")
    shape = ModelShape.from_config(ggml_cfg)
    est = ggml.predict_size(shape, "q4_K_S")
    text = sum(len(f"<t{i}>") for i in range(shape.vocab_size))
    est_text = int(shape.vocab_size * ggml._VOCAB_TEXT_BYTES_PER_TOKEN)
    # padding depends on the start offset, so allow one alignment step per tensor
    assert abs(est.total_bytes - (path.stat().st_size - text + est_text)) <= 32 * len(ggml.expected_tensors(shape))
