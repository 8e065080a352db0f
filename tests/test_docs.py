"""The docs cannot drift: generated pages are current, the schema they come from is complete and agrees with
the loader, links resolve, the README's test command is what CI runs. (Python blocks: tests/test_readme.py.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from mcard.formats import params_of
from mcard.registry import FAMILIES, FORMAT_ONLY_KEYS, REQUIRED_KEYS, load_entry
from mcard.registry_schema import MODEL_SPEC, VARIANT_SPEC, reference

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- generated pages --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", ["cli.md", "registry.md"])
def test_generated_page_is_current(page: str) -> None:
    gen = _gen_docs()
    want = gen.render()[gen.DOCS / page]
    have = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert have == want, f"docs/{page} is stale: run `python tools/gen_docs.py` and commit the result"


def test_cli_reference_has_every_command_and_option() -> None:
    """Walked generically: a subcommand (card render) and options added by any module are in it."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for heading in ("## `mcard validate`", "## `mcard card render`", "## `mcard card check`", "## `mcard publish`"):
        assert heading in text
    assert "--max-shard-size" in text and "--registry-root" in text and "--require-gpu" in text
    assert "\x1b[" not in text and "╭" not in text and "┃" not in text  # no colour, no rich boxes


def test_generator_check_mode_names_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    gen = _gen_docs()
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "DOCS", tmp_path / "docs")
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    (tmp_path / "docs" / "registry.md").write_text("old\n")
    assert gen.main(["--check"]) == 1
    assert "docs/registry.md is stale: run `python tools/gen_docs.py`" in capsys.readouterr().err


def test_help_pages_do_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen_docs()
    before = gen.cli_markdown()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert gen.cli_markdown() == before


# -- the schema is the one source -------------------------------------------------------------------------------
def test_every_registry_key_is_described() -> None:
    ref = reference()
    assert {s.table for s in ref.sections} >= {"[model]", "[[variants]]", "[[tables]]"}
    for section in ref.sections:
        assert section.doc.strip(), section.table
        for key in section.keys:
            assert len(key.doc) > 10, f"{section.table} {key.name}: no description"


def test_schema_formats_agree_with_the_loader_and_params() -> None:
    for key, fmts in FORMAT_ONLY_KEYS.items():
        assert set(VARIANT_SPEC[key].formats) == set(fmts), key
    for fmt, keys in REQUIRED_KEYS.items():
        for key in keys:
            assert fmt in VARIANT_SPEC[key].formats, (fmt, key)
    for fmt in FAMILIES:
        for key in params_of(fmt):
            if key in VARIANT_SPEC and VARIANT_SPEC[key].formats:
                assert fmt in VARIANT_SPEC[key].formats, f"{fmt} checks {key}, the schema does not list it"
    assert {(p.format, p.key) for p in reference().params} >= {("gptq", "bits"), ("awq", "version"), ("lora", "r")}


_MINIMAL = {"gptq": 'bits = 4\ngroup_size = 128\n', "awq": 'bits = 4\ngroup_size = 128\n',
            "gguf": 'file = "m.gguf"\ntype = "Q4_0"\n', "ggml": 'file = "m.bin"\ntype = "q4_0"\n'}


def _load(tmp_path: Path, fmt: str):
    path = tmp_path / f"{fmt}.toml"
    path.write_text('[model]\nrepo = "o/m"\nname = "M"\nlicense = "mit"\n\n'
                    f'[[variants]]\nformat = "{fmt}"\n{_MINIMAL.get(fmt, "")}\n'
                    '[[evaluations]]\ndataset = "d"\nmetric = "acc"\nvalue = 0.5\n')
    return load_entry(path)


def test_documented_defaults_are_what_the_loader_uses(tmp_path: Path) -> None:
    """A default written as a TOML value in the schema is the value a loaded entry has without the key."""
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    checked = 0
    for spec, pick in ((MODEL_SPEC, lambda e: e.model), (VARIANT_SPEC, lambda e: e.variants[0])):
        for key, rule in spec.items():
            try:
                value = tomllib.loads(f"x = {rule.default}")["x"] if rule.default else None
            except tomllib.TOMLDecodeError:
                continue  # a computed default, said in words
            if value is None:
                continue
            for fmt in rule.formats or ("gptq",):
                assert getattr(pick(_load(tmp_path, fmt)), key) == value, (key, fmt)
                checked += 1
    assert _load(tmp_path, "gptq").evaluations[0].task_type == "text-generation"
    assert checked >= 9
