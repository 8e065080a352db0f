"""Fuzzing ``validate`` and ``dequantize``: mutated real files never crash, memory stays bounded.

The property test mutates builder-written variants (tests/tools/fuzzkit.py) and
requires that ``api.inspect`` / ``api.dequantize`` either succeed or raise a
:class:`McardError` (what the CLI prints as one line). The CI profile is
derandomized with no example database; ``HYPOTHESIS_PROFILE=long`` runs more::

    HYPOTHESIS_PROFILE=long python -m pytest -q tests/core/test_fuzz_validate.py
    python tests/tools/fuzzkit.py --count 20000     # the plain random campaign

The regression tests below are the minimal inputs of crashes the campaign found.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import fuzzcli
import fuzzkit
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mcard import api
from mcard.core.arch import tiny_config
from mcard.core.errors import McardError, UnusableInput
from mcard.formats import awq, ggml, gguf, gptq, lora

settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

# NaN/inf scales in mutated blocks make numpy warn while dequantizing; that is not a failure.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if _PROFILE not in ("ci", "long"):
    _PROFILE = "ci"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    return fuzzkit.build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


# -- the property ------------------------------------------------------------------------------
@settings.get_profile(_PROFILE)
@given(name=st.sampled_from(sorted(fuzzkit.SEEDS)), rnd=st.randoms(use_true_random=False))
def test_mutated_variants_never_crash(seeds, name, rnd):
    case = Path(tempfile.mkdtemp(prefix="mcard-fuzz-"))
    try:
        fuzzkit.make_case(seeds[name], case, rnd)
        fuzzkit.run_target(fuzzkit._single_file(name, case), fuzzkit.SEEDS[name][1])  # McardError is fine
    finally:
        shutil.rmtree(case, ignore_errors=True)


def test_campaign_loop_runs(tmp_path):
    """The plain random loop (what `python tests/tools/fuzzkit.py` runs) finds nothing on a short run."""
    assert fuzzkit.campaign(60, seed=7, root=tmp_path) == []


# -- the CLI campaigns (tests/tools/fuzzcli.py): an internal error, a traceback or a printed token is a failure -------
@pytest.mark.parametrize("kind, count", [("registry", 30), ("card", 20), ("validate", 15), ("listing", 12)])
def test_cli_campaign_share_finds_no_internal_error(tmp_path, kind, count):
    found: list[str] = []
    assert fuzzcli.campaign(kind, count, seed=11, root=tmp_path, report=found.append) == [], found


def test_cli_campaign_counts_internal_errors_as_failures(tmp_path, monkeypatch):
    import mcard.card.check

    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\n---\n# x\n")
    assert fuzzcli.run_cli(["card", "check", str(card)]) is None
    monkeypatch.setattr(mcard.card.check, "check_card", lambda *a, **k: {}["missing"])
    problem = fuzzcli.run_cli(["card", "check", str(card)])  # raised, or printed as an internal error
    assert problem is not None and "KeyError" in problem


# -- helpers for the regressions -----------------------------------------------------------------
def _unusable(fn, *args) -> str:
    with pytest.raises(UnusableInput) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _rewrite_safetensors(path: Path, edit) -> None:
    """Re-write a safetensors file with edited tensors (a consistent file with other shapes)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    doc = json.loads(data[8:8 + n])
    text = edit(doc)
    raw = (text if isinstance(text, str) else json.dumps(doc)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _gguf_field(data: bytes, key: bytes) -> int:
    """Offset of the value of a GGUF kv ``key`` (after its 4-byte type)."""
    i = data.index(key)
    return i + len(key) + 4


# -- safetensors header --------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # RecursionError in json
    '{"a":{"dtype":"F16","shape":[1e400],"data_offsets":[0,2]}}',  # int(inf): OverflowError
    '{"a":{"dtype":"F16","shape":["2"],"data_offsets":[0,4]}}',  # strings where ints belong
    '{"a":{"dtype":"F16","shape":[2.5],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4,8]}}',
    '{"a":{"dtype":null,"shape":[2],"data_offsets":[0,4]}}',
    '{"a":[1,2]}',
    '{"a":{"dtype":"F16","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,4]}}',
])
def test_malformed_safetensors_header_is_unusable(tmp_path, text):
    gptq.write_variant(tmp_path, tiny_config())
    path = next(tmp_path.glob("*.safetensors"))
    _edit_header(path, lambda doc: text)
    msg = _unusable(api.inspect, tmp_path)
    assert path.name in msg


# -- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [
    ("hidden_size", 0), ("num_attention_heads", 0), ("hidden_size", float("inf")), ("vocab_size", -1),
    ("num_hidden_layers", 10**12), ("intermediate_size", "512"), ("num_key_value_heads", [2]),
    ("hidden_size", True),
])
def test_bad_config_dimension_is_unusable(tmp_path, key, value):
    gptq.write_variant(tmp_path, tiny_config(), desc_act=True, group_size=64, config_file="config.json")
    _edit_json(tmp_path / "config.json", **{key: value})
    msg = _unusable(api.inspect, tmp_path)
    assert "config.json" in msg and key in msg


def test_deeply_nested_config_is_unusable(tmp_path):
    lora.write_variant(tmp_path, tiny_config(), r=8, base_config=True)
    (tmp_path / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in _unusable(api.inspect, tmp_path)


@pytest.mark.parametrize("key, value", [("modules_to_save", 3), ("layers_to_transform", "nan")])
def test_lora_config_wrong_types_are_findings(tmp_path, key, value):
    lora.write_variant(tmp_path, tiny_config(), r=8, base_config=True)
    _edit_json(tmp_path / "adapter_config.json", **{key: value})
    report = api.inspect(tmp_path)
    assert not report.ok and any(f.code == "bad-adapter-config" and f.where == key for f in report.findings)


def test_lora_unknown_dtype_does_not_break_size_prediction(tmp_path):
    lora.write_variant(tmp_path, tiny_config(), r=8, base_config=True)
    path = tmp_path / "adapter_model.safetensors"
    _edit_header(path, lambda doc: [e.update(dtype="f16") for k, e in doc.items() if k.endswith("lora_A.weight")])
    report = api.inspect(tmp_path)
    assert not report.ok and "bad-offsets" in report.codes()


def test_lora_huge_layer_index_stays_bounded(tmp_path):
    lora.write_variant(tmp_path, tiny_config(), r=8)  # no base config: layer coverage check
    path = tmp_path / "adapter_model.safetensors"

    def rename(doc):
        name = next(k for k in doc if ".layers.0." in k)
        doc[name.replace(".layers.0.", ".layers.999999999999.")] = doc.pop(name)
    _edit_header(path, rename)
    report = api.inspect(tmp_path)
    assert len(report.findings) < 100 and not report.ok


def test_awq_group_size_of_wrong_type_in_dequantize(tmp_path):
    awq.write_variant(tmp_path, tiny_config())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = {"a": 1}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert "group_size" in _unusable(api.dequantize, tmp_path, fuzzkit.Q_PROJ)


@pytest.mark.parametrize("bits, group_size", [(4, [1]), (4, {"a": 1}), ("4", 128)])
def test_gptq_bad_params_in_dequantize(tmp_path, bits, group_size):
    gptq.write_variant(tmp_path, tiny_config())
    _edit_json(tmp_path / "quantize_config.json", bits=bits, group_size=group_size)
    assert "not usable" in _unusable(api.dequantize, tmp_path, fuzzkit.Q_PROJ)


# -- tensors whose shapes disagree (dequantize) -----------------------------------------------------------
def test_awq_gemv_scales_of_wrong_width(tmp_path):
    awq.write_variant(tmp_path, tiny_config(), version="gemv", config_style="quant_config.json", group_size=64)
    _rewrite_safetensors(tmp_path / "model.safetensors",
                         lambda t: t.update({fuzzkit.Q_PROJ + ".scales": t[fuzzkit.Q_PROJ + ".scales"][:, :8].copy()}))
    assert "inconsistent shapes" in _unusable(api.dequantize, tmp_path, fuzzkit.Q_PROJ)


def test_gptq_3bit_rows_not_whole_periods(tmp_path):
    gptq.write_variant(tmp_path, tiny_config(), bits=3, group_size=32, checkpoint_format="gptq_v2")
    path = next(tmp_path.glob("*.safetensors"))
    _rewrite_safetensors(path, lambda t: t.update({fuzzkit.Q_PROJ + ".qweight": t[fuzzkit.Q_PROJ + ".qweight"][:-1].copy()}))
    _unusable(api.dequantize, tmp_path, fuzzkit.Q_PROJ)
    assert not api.inspect(tmp_path).ok  # validate reports it as findings


def test_gptq_g_idx_out_of_range(tmp_path):
    gptq.write_variant(tmp_path, tiny_config())
    path = next(tmp_path.glob("*.safetensors"))

    def edit(t):
        g = t[fuzzkit.Q_PROJ + ".g_idx"].copy()
        g[0] = 99
        t[fuzzkit.Q_PROJ + ".g_idx"] = g
    _rewrite_safetensors(path, edit)
    assert "g_idx" in _unusable(api.dequantize, tmp_path, fuzzkit.Q_PROJ)


def test_lora_a_b_that_do_not_multiply(tmp_path):
    lora.write_variant(tmp_path, tiny_config(), r=8, base_config=True)
    a = lora.PREFIX + fuzzkit.Q_PROJ + lora.A_SUFFIX
    _rewrite_safetensors(tmp_path / "adapter_model.safetensors", lambda t: t.update({a: t[a][:1].copy()}))
    assert "do not multiply" in _unusable(api.dequantize, tmp_path, fuzzkit.Q_PROJ)


# -- GGUF / GGML --------------------------------------------------------------------------------------------
def test_gguf_row_not_whole_blocks_in_dequantize(tmp_path):
    path = tmp_path / "m.gguf"
    gguf.write_variant(path, tiny_config(), ftype="Q4_K_M")
    data = bytearray(path.read_bytes())
    name = b"blk.0.attn_q.weight"
    i = data.rindex(name) + len(name) + 4  # after the name: n_dims u32, then ne0 u64
    data[i:i + 8] = struct.pack("<Q", 250)
    path.write_bytes(bytes(data))
    assert "cannot be decoded" in _unusable(api.dequantize, path, "blk.0.attn_q.weight")


@pytest.mark.parametrize("key, value", [(b"llama.block_count", 2**31), (b"llama.attention.head_count", 0)])
def test_gguf_hostile_hparams_stay_bounded(tmp_path, key, value):
    path = tmp_path / "m.gguf"
    gguf.write_variant(path, tiny_config(), ftype="Q8_0")
    data = bytearray(path.read_bytes())
    i = _gguf_field(bytes(data), key)
    data[i:i + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))
    api.inspect(path)  # no hang over 2**31 layers, no ZeroDivisionError


def _ggml_file(tmp_path: Path, ftype: str = "q4_0") -> Path:
    path = tmp_path / "m.bin"
    ggml.write_variant(path, tiny_config(num_key_value_heads=4, intermediate_size=768), ftype=ftype)
    return path


def test_ggml_negative_dim_is_unusable(tmp_path):
    path = _ggml_file(tmp_path)
    data = bytearray(path.read_bytes())
    first_tensor = [off for off, _w, role in fuzzkit.ggml_fields(bytes(data)) if role == "dim"][0]
    data[first_tensor:first_tensor + 4] = struct.pack("<i", -5)
    path.write_bytes(bytes(data))
    assert "dims" in _unusable(api.inspect, path)


@pytest.mark.parametrize("index, value", [(2, 0), (4, 2**31 - 1)])  # n_mult 0; n_layer 2**31-1
def test_ggml_hostile_hparams_are_unusable(tmp_path, index, value):
    path = _ggml_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[8 + 4 * index:12 + 4 * index] = struct.pack("<i", value)
    path.write_bytes(bytes(data))
    assert "hparams" in _unusable(api.inspect, path)


def test_ggml_row_not_whole_blocks_in_dequantize(tmp_path):
    path = _ggml_file(tmp_path, "q4_0")
    data = bytearray(path.read_bytes())
    name = b"layers.0.attention.wq.weight"
    i = data.index(name) - 8  # dims (ne0, ne1) sit just before the name
    data[i:i + 4] = struct.pack("<i", 48)
    path.write_bytes(bytes(data))
    _unusable(api.dequantize, path, "layers.0.attention.wq.weight")


# -- pickle zip archives ------------------------------------------------------------------------------------
def _torch_zip(tmp_path: Path) -> Path:
    fuzzkit._torch_zip(tmp_path)
    return tmp_path / "pytorch_model.bin"


@pytest.mark.parametrize("how", ["central-directory", "crc", "local-header", "name-utf8", "multi-disk"])
def test_corrupt_torch_zip_is_a_finding(tmp_path, how):
    path = _torch_zip(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    if how == "central-directory":
        i = data.rindex(b"PK\x01\x02")
        data[i + 3] = 0x07
    elif how == "crc":
        i = info.header_offset + 30 + len(info.filename) + len(info.extra) + 2
        data[i] ^= 0xFF  # a byte of the stored data.pkl
    elif how == "local-header":
        data[info.header_offset + 1] = 0x00
    elif how == "multi-disk":  # zipfile.is_zipfile itself raises BadZipFile on this one
        i = data.rindex(b"PK\x06\x07")  # zip64 end-of-central-directory locator: total disks at +16
        data[i + 16:i + 20] = struct.pack("<I", 2)
    else:
        i = data.rindex(info.filename.encode())
        data[i] = 0xFF
        data[i - 46 + 9] |= 0x08  # general purpose flag bit 11 (UTF-8 names) in the central record
    path.write_bytes(bytes(data))
    report = api.inspect(tmp_path)
    assert not report.ok and "pickle-only" in report.codes()


# -- memory -----------------------------------------------------------------------------------------------------
def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        try:
            fn()
        except McardError:
            pass
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_memory_bounded_for_huge_claims(tmp_path):
    # safetensors: a header claiming a 2**52-element tensor and a 2**60 offset
    gptq.write_variant(tmp_path / "st", tiny_config())
    st = next((tmp_path / "st").glob("*.safetensors"))

    def huge(doc):
        name = next(k for k in doc if k.endswith(".qweight"))
        doc[name]["shape"] = [2**26, 2**26]
        doc[name]["data_offsets"] = [0, 2**50]
    _edit_header(st, huge)
    # GGUF: a tensor with 2**40 x 2**20 dims, and a kv string array claiming 2**60 items
    g1, g2 = tmp_path / "a.gguf", tmp_path / "b.gguf"
    gguf.write_variant(g1, tiny_config(), ftype="Q8_0")
    data = bytearray(g1.read_bytes())
    name = b"blk.0.attn_q.weight"
    i = data.rindex(name) + len(name) + 4
    data[i:i + 16] = struct.pack("<QQ", 2**40, 2**20)
    g1.write_bytes(bytes(data))
    data = bytearray(g2.read_bytes() if g2.exists() else g1.read_bytes())
    i = _gguf_field(bytes(data), b"tokenizer.ggml.tokens")
    data[i + 4:i + 12] = struct.pack("<Q", 2**60)  # after the array's element type
    g2.write_bytes(bytes(data))
    # GGML: n_vocab at the file-size bound, a tensor of 2**30 x 2**30
    m = _ggml_file(tmp_path)
    data = bytearray(m.read_bytes())
    d = [off for off, _w, role in fuzzkit.ggml_fields(bytes(data)) if role == "dim"][:2]
    for off in d:
        data[off:off + 4] = struct.pack("<i", 2**30)
    m.write_bytes(bytes(data))
    for target in (tmp_path / "st", g1, g2, m):
        assert _peak_mb(lambda target=target: api.inspect(target)) < 200, target
    assert _peak_mb(lambda: api.dequantize(g1, "blk.0.attn_q.weight")) < 200
    assert _peak_mb(lambda: api.dequantize(tmp_path / "st", fuzzkit.Q_PROJ)) < 200


def test_fuzz_helpers_parse_their_seeds(seeds):
    """The structured mutators find the fields they mutate (else they would only flip bytes)."""
    g = next(seeds["gguf-q4km"].glob("*.gguf")).read_bytes()
    roles = {r for _o, _w, r in fuzzkit.gguf_fields(g)}
    assert {"kv type", "dim", "type id", "array count"} <= roles
    b = next(seeds["ggml-q4_0"].glob("*.bin")).read_bytes()
    assert {"hparam", "dim", "type id"} <= {r for _o, _w, r in fuzzkit.ggml_fields(b)}
    rnd = random.Random(0)
    st = next(seeds["gptq"].glob("*.safetensors")).read_bytes()
    assert fuzzkit.mutate_safetensors(st, rnd) != st
    np.testing.assert_equal(len(fuzzkit.SEEDS), len(seeds))
