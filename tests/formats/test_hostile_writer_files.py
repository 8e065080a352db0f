"""Files the writers' agreement (#13) reads, under #14's rules: capped regular-file reads, patterns from files on
the timed matcher. Run as subprocesses: a regression here is a hang or a multi-GB read, which must not take the test
run down with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mcard.core.arch import tiny_config
from mcard.formats import bnb, lora

ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _mcard(*args: object, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "mcard.cli", *map(str, args)], capture_output=True, text=True,
                         env=ENV, timeout=timeout)
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    return run, time.monotonic() - started


def test_a_tokenizer_model_past_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "Tiny"  # a name the kv model accepts, so mcard size reads tokenizer.model
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config()))
    with open(folder / "tokenizer.model", "wb") as fh:
        fh.truncate(65 * 1024 * 1024)  # sparse: 65 MiB of zeros, a protobuf that parses forever in Python
    run, seconds = _mcard("size", folder / "config.json", "-f", "gguf", "--type", "Q4_0")
    assert run.returncode == 2 and "tokenizer.model" in run.stderr and "allowed" in run.stderr
    assert run.stderr.count("\n") == 1 and seconds < 15


def test_config_and_tokenizer_values_of_the_wrong_shape_keep_the_estimate(tmp_path: Path) -> None:
    folder = tmp_path / "Tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**tiny_config(), "architectures": []}))
    (folder / "tokenizer.model").write_bytes(b"\x0a\x03\x0a\x01a")
    run, _ = _mcard("size", folder / "config.json", "-f", "gguf", "--type", "Q4_0")
    assert run.returncode == 0 and "is an estimate" in run.stdout
    (folder / "tokenizer.model").unlink()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": 5}}))
    run, _ = _mcard("size", folder / "config.json", "-f", "gguf", "--type", "Q4_0")
    assert run.returncode == 0 and "counted from tokenizer.json" in run.stdout


def test_a_catastrophic_llm_int8_skip_modules_pattern_is_a_finding(tmp_path: Path) -> None:
    bnb.write_variant(tmp_path, tiny_config())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["llm_int8_skip_modules"] = [r"(.*?){30}\d{3}", "("]  # a runaway regex, and no regex at all
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    run, seconds = _mcard("validate", tmp_path, "--json")
    found = [f for f in json.loads(run.stdout)["findings"] if "llm_int8_skip_modules" in f["where"]]
    assert run.returncode == 1 and found and "catastrophic backtracking" in found[0]["message"] and seconds < 30


def test_a_catastrophic_exclude_modules_pattern_is_a_finding(tmp_path: Path) -> None:
    lora.write_variant(tmp_path, tiny_config(), r=8, base_config=True)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["exclude_modules"] = r"(.*?){30}\d{3}"
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    run, seconds = _mcard("validate", tmp_path, "--json")
    findings = json.loads(run.stdout)["findings"]
    assert run.returncode == 1 and any("catastrophic backtracking" in f["message"] for f in findings), findings
    assert seconds < 30
    cfg["exclude_modules"] = "("
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    run, _ = _mcard("validate", tmp_path, "--json")
    assert run.returncode == 1 and any(f["where"] == "exclude_modules" for f in json.loads(run.stdout)["findings"])


def test_a_fifo_or_device_given_to_validate_is_named_as_such(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.gguf")
    for path in (tmp_path / "model.gguf", "/dev/zero"):
        run, seconds = _mcard("validate", path)
        assert run.returncode == 2 and "only regular files are read" in run.stderr and seconds < 15
