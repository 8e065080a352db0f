"""What users read: one error prefix and a JSON error object for every command, sizes, messages (#10)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from helpers import REGISTRY
from mcard.cli import app
from mcard.cli.errors import run_app
from mcard.core.arch import tiny_config
from mcard.core.units import format_size
from mcard.formats import gptq
from mcard.testing.hubserver import free_port


@pytest.fixture(scope="module")
def tiny_gptq(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("messages") / "gptq"
    gptq.write_variant(folder, tiny_config(), bits=4, group_size=32)
    return folder


@pytest.fixture
def offline_hub(monkeypatch):
    """A Hub endpoint that refuses connections: remote lookups fail fast and deterministically."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _run(capsys, args: list[str]) -> tuple[int, str, str]:
    code = run_app(app, args)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mcard: ") and "Traceback" not in err
    return lines[0]


# -- item 14: every command, one prefix, a JSON object on failure ---------------------------


@pytest.mark.parametrize("args, code", [
    (["validate", "{tmp}/missing-folder", "--json"], 2),
    (["size", "{tmp}/missing.json", "--format", "gptq", "--bits", "4", "-g", "128", "--json"], 2),
    (["size", "--json"], 2),  # the argument parser's own usage error
    (["size", "{tmp}/missing.json", "--json", "--no-such-option"], 2),
    (["card", "check", "{tmp}/README.md", "--json"], 2),
    (["smoke", "{tmp}/missing-folder", "--json"], 2),
    (["sync", "{tmp}/missing.toml", "--json"], 2),
    (["branches", "../etc", "--json"], 2),
    (["fetch", "../etc", "--json"], 2),
])
def test_every_command_fails_with_one_line_and_a_json_object(capsys, tmp_path, offline_hub, args, code):
    args = [a.format(tmp=tmp_path) for a in args]
    got, out, err = _run(capsys, args)
    assert got == code
    line = _one_error_line(err)
    doc = json.loads(out)
    assert doc == {"ok": False, "error": line[len("mcard: "):], "exit_code": code}


def test_without_json_stdout_stays_empty_on_failure(capsys, tmp_path):
    code, out, err = _run(capsys, ["sync", str(tmp_path / "missing.toml")])
    assert code == 2 and out == "" and _one_error_line(err).endswith("no such registry entry or folder")


# -- item 16: one size formatter, one prediction ---------------------------------------------


def test_format_size_scales_decimal_units():
    assert [format_size(n) for n in (None, 0, 17, 999, 1000, 979_064, 999_999_999, 7_260_000_000, 3.2e12)] == [
        "-", "0 B", "17 B", "999 B", "1.00 kB", "979.06 kB", "1.00 GB", "7.26 GB", "3.20 TB"]


def test_validate_prints_one_byte_count_that_matches_its_prediction(capsys, tiny_gptq):
    code, out, _err = _run(capsys, ["validate", str(tiny_gptq)])
    weights = next(tiny_gptq.glob("*.safetensors")).stat().st_size
    assert code == 0 and "0.00 GB" not in out
    assert f"weights {format_size(weights)} ({weights:,} bytes), exactly as predicted" in out
    assert f"size {weights} bytes equals the predicted size exactly" in out
    _code, out, _err = _run(capsys, ["validate", str(tiny_gptq), "--json"])
    doc = json.loads(out)
    assert doc["actual_bytes"] == doc["predicted_bytes"] == weights


def test_size_prints_sizes_scaled(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config()))
    code, out, _err = _run(capsys, ["size", str(cfg), "--format", "gguf", "--type", "Q4_0"])
    assert code == 0 and "0.00" not in out and " kB" in out and "Max RAM required, no GPU offloading: 2.50 GB" in out


# -- items 3, 4, 17: mcard size refuses what the format cannot represent ---------------------


@pytest.fixture(scope="module")
def config_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("size") / "config.json"
    path.write_text(json.dumps(tiny_config()))
    return path


@pytest.mark.parametrize("args, says", [
    (["-f", "gptq", "--bits", "5"], "--bits: gptq bits must be 2, 3, 4 or 8, not 5"),
    (["-f", "gptq", "--bits", "0"], "--bits: gptq bits must be 2, 3, 4 or 8, not 0"),
    (["-f", "gptq", "-g", "-5"], "--group-size: gptq group_size must be -1 (no groups) or a positive integer, not -5"),
    (["-f", "gptq", "-g", "0"], "--group-size: gptq group_size must be -1 (no groups) or a positive integer, not 0"),
    (["-f", "awq", "--bits", "8"], "--bits: awq bits must be 4, not 8"),
    (["-f", "gguf", "--type", "Q9_K"], "--type: unknown GGUF/GGML type 'Q9_K' (known: F32, F16, BF16, Q4_0"),
    (["-f", "gguf", "--type", "NVFP4"], "--type: NVFP4 is a llama.cpp type mcard does not model (modelled: F32"),
    (["-f", "ggml", "--type", "iq4_xs"], "--type: ggml type must be one of F32, F16, Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, "
     "Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, not 'IQ4_XS'"),
    (["-f", "gguf", "--type", "Q4_0", "--split-max-size", "5X"],
     "--split-max-size: gguf split_max_size must be a positive number followed by M or G (e.g. 50G), not '5X'"),
    (["-f", "gguf", "--type", "Q4_0", "--writer", "gptqmodel"],
     "--writer does not apply to --format gguf (it takes --type, --split-max-size, --imatrix)"),
    (["-f", "gptq", "--writer", "exllama"], "--writer: gptq writer must be autogptq or gptqmodel, not 'exllama'"),
    (["-f", "gguf"], "--type: gguf needs a type: one of F32, F16, BF16, Q4_0"),
    (["-f", "nf4", "--bits", "3"], "--bits does not apply to --format nf4 (it takes --double-quant)"),
    (["-f", "gptq", "--rank", "8"], "--rank does not apply to --format gptq (it takes --bits, --group-size, --act-order"),
    (["-f", "fp16", "--type", "Q4_0"], "--type does not apply to --format fp16 (it takes no options)"),
    (["-f", "lora", "--rank", "0"], "--rank: lora r must be a positive integer, not 0"),
    (["-f", "lora", "--target-modules", "q_proj,qproj"], "--target-modules: lora target_modules must be a non-empty list"),
    (["-f", "gptq5"], "unknown format 'gptq5' (known: gptq, awq, gguf, ggml, nf4, fp4, fp16, bf16, fp32, lora)"),
])
def test_size_refuses_parameters_the_format_cannot_represent(capsys, config_json, args, says):
    code, out, err = _run(capsys, ["size", str(config_json), *args])
    line = _one_error_line(err)
    assert code == 2 and out == "" and "internal error" not in line
    assert says in line, line


def test_size_lora_takes_rank_and_target_modules(capsys, config_json):
    from mcard.core.arch import ModelShape
    from mcard.formats import lora

    code, out, _err = _run(capsys, ["size", str(config_json), "-f", "lora", "--rank", "8",
                                    "--target-modules", "q_proj,v_proj", "--json"])
    want = lora.predict_size(ModelShape.from_config(tiny_config()), r=8, target_modules=["q_proj", "v_proj"])
    assert code == 0 and json.loads(out)["total_bytes"] == want.total_bytes


def test_size_takes_every_file_type_issue_13_models(capsys, config_json):
    """The known GGUF types are #13's file-type facts (no second list): each one is sized, none refused."""
    from mcard.core.size import predict_size
    from mcard.formats import ggml_types as _ggml_types

    assert {predict_size(tiny_config(), "gguf", type=t).params["type"] for t in _ggml_types.FTYPES} == set(_ggml_types.FTYPES)
    code, out, _err = _run(capsys, ["size", str(config_json), "-f", "gguf", "--type", "iq4_nl", "--imatrix",
                                    "--split-max-size", "1M", "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["params"]["type"] == "IQ4_NL" and doc["params"]["imatrix"] is True
    assert sum(doc["params"]["shards"]) == doc["total_bytes"]


def test_size_help_lists_every_format_and_the_lora_options(capsys):
    from mcard.formats import aliases

    SIZE_FORMATS = list(aliases())

    code, out, _err = _run(capsys, ["size", "--help"])
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "--rank" in text and "--target-modules" in text
    assert f"One of: {', '.join(SIZE_FORMATS)}." in text and "lora" in SIZE_FORMATS


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    code, out, _err = _run(capsys, ["--version"])
    assert code == 0 and out.strip() == f"mcard {version('mcard')}"


# -- items 12, 13, 15: messages that say what is wrong -------------------------------------


def test_a_mistyped_local_path_says_so_and_what_the_hub_said(capsys, offline_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, ["validate", "foo/bar"])
    line = _one_error_line(err)
    assert code == 2 and line.startswith("mcard: foo/bar: no such file or folder; as a Hub repo: cannot reach http://")


def test_a_malformed_quantize_config_is_one_finding(capsys, tiny_gptq, tmp_path):
    import shutil

    folder = tmp_path / "v"
    shutil.copytree(tiny_gptq, folder)
    (folder / "quantize_config.json").write_text('{"bits": 4, "group_size": 32,\n')
    code, out, _err = _run(capsys, ["validate", str(folder), "--json"])
    doc = json.loads(out)
    assert code == 1
    assert [(f["code"], f["file"]) for f in doc["findings"] if f["severity"] != "info"] == [
        ("bad-config", "quantize_config.json")]
    assert "malformed JSON at line 2" in doc["findings"][0]["message"]


def test_card_check_prints_only_mcard_output_and_names_missing_values(capsys, tmp_path):
    import logging

    card = tmp_path / "README.md"
    card.write_text("# a card\n\nno front matter\n")
    registry = REGISTRY / "llama-2-13b-chat-gptq.toml"
    logged = io.StringIO()
    logging.getLogger("huggingface_hub").addHandler(handler := logging.StreamHandler(logged))
    try:
        code, out, err = _run(capsys, ["card", "check", str(card), "--registry", str(registry)])
    finally:
        logging.getLogger("huggingface_hub").removeHandler(handler)
    assert code == 1 and err == "" and logged.getvalue() == "" and "metadata block" not in out
    assert "None" not in out and "0.00 GB" not in out and "no license in the front matter" in out
    card.write_text("---\nlicense: llama2\n---\n\n# a card\n")
    code, out, err = _run(capsys, ["card", "check", str(card), "--registry", str(registry), "--json"])
    messages = {f["where"]: f["message"] for f in json.loads(out)["findings"]}
    assert messages["base_model"] == "a quantized or adapter repo needs base_model"
    assert "None" not in out
