"""Helpers the test areas share: where things are, editing a written variant, running the CLI.

``tests/`` and ``tests/tools/`` are on ``sys.path`` (``pythonpath`` in pyproject.toml), so a test
module anywhere under ``tests/`` imports these as ``from helpers import ...``. Fixtures are in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the checkout
FIXTURES = ROOT / "tests" / "fixtures"  # files the real writers wrote (llama.cpp, GPTQModel)
REGISTRY = ROOT / "registry"


# -- editing what a builder wrote -------------------------------------------------------------------
def weights_file(folder: Path) -> Path:
    """The one ``*.safetensors`` file of a variant folder."""
    (path,) = folder.glob("*.safetensors")
    return path


def edit_tensors(folder: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    """Load the variant's weights file, let ``fn`` mutate the dict, write it back (format metadata kept)."""
    from safetensors.numpy import load_file, save_file

    path = weights_file(folder)
    tensors = dict(load_file(str(path)))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    """Load a JSON file, let ``fn`` mutate it, write it back."""
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


# -- registry entries ------------------------------------------------------------------------------
def custom_entry(tmp_path: Path, cfg: dict[str, Any], tokenizer_bytes: int = 0) -> Path:
    """An entry whose [architecture] points at a base model folder, with a license file and a `source`."""
    from mcard.formats import gptq

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(cfg))
    (base / "tokenizer.json").write_text('{"version": "1.0", "pad": "' + "x" * tokenizer_bytes + '"}')
    (base / "tokenizer_config.json").write_text('{"from": "base"}')
    (base / "generation_config.json").write_text('{"do_sample": true}')
    (tmp_path / "LICENSE.txt").write_text("license text\n")
    gptq.write_variant(tmp_path / "quantized" / "q4", cfg, bits=4, group_size=64, desc_act=False, seed=4)
    (tmp_path / "quantized" / "q4" / "tokenizer_config.json").write_text('{"from": "quantizer"}')
    (tmp_path / "quantized" / "q4" / "notes.txt").write_text("not a model file")
    entry = tmp_path / "entry.toml"
    entry.write_text("""
[model]
repo = "me/tiny-GPTQ"
name = "Tiny GPTQ"
license = "other"
license_file = "LICENSE.txt"
base_model = "me/tiny"

[architecture]
config = "base/config.json"

[[variants]]
branch = "main"
format = "gptq"
bits = 4
group_size = 64
source = "quantized/q4"
""")
    return entry


# -- running the CLI ----------------------------------------------------------------------------------
def run_cli(*args: Any, env: dict[str, str] | None = None) -> Any:
    """``mcard ARGS`` in-process through the typer app (fast); click's Result: exit_code, stdout, stderr."""
    from typer.testing import CliRunner

    from mcard.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def cli_process(*args: Any, cwd: Path = ROOT, env: dict[str, str] | None = None,
                timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m mcard.cli ARGS`` as a real process, in the checkout (exit codes, stderr and signals as a
    user sees them)."""
    return subprocess.run([sys.executable, "-m", "mcard.cli", *(str(a) for a in args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout, **kwargs)


def run_cli_clean(*args: Any, env: dict[str, str] | None = None) -> tuple[int, str]:
    """:func:`run_cli`, failing the test on an internal error: an exception other than the exit, an
    "internal error" line or a traceback in the output. Returns (exit code, output)."""
    result = run_cli(*args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"internal error: {result.exception!r}\n{result.output}") from result.exception
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    return result.exit_code, result.output
