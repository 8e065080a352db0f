"""What users read: one error prefix and a JSON error object for every command, sizes, messages (#10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcard.arch import tiny_config
from mcard.cli import app
from mcard.cli_errors import run_app
from mcard.formats import gptq
from mcard.testing.hubserver import free_port
from mcard.units import format_size


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
