"""The docs cannot drift: generated pages are current, the schema they come from is complete and agrees with
the loader, links resolve, the README's test command is what CI runs. (Python blocks: tests/test_readme.py.)"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

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


# -- links --------------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced blocks and inline code, where links and headings live."""
    return re.sub(r"`[^`\n]*`", "``", _FENCE.sub("", text)) if text else text


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes, -1.. for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        found = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not found:
            continue
        slug = re.sub(r"[^\w\- ]", "", found.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... not ours to check
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{page.name}: {target} (no heading #{anchor} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    assert _broken_links(page) == []


def test_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n## `mcard fetch`\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#mcard-fetch) [x](a.md#not-a-heading) [y](nope.md) [z](#here) `[c](nope2.md)`\n"
                    "[w](https://example.com/x)\n\n## Here\n")
    assert _broken_links(page) == ["b.md: a.md#not-a-heading (no heading #not-a-heading in a.md)",
                                   "b.md: nope.md (no such file)"]


def test_docs_has_each_page_the_readme_promises() -> None:
    names = {p.name for p in PAGES}
    assert {"cli.md", "registry.md", "formats.md", "hub.md", "kernels.md", "ci.md", "changes.md",
            "python-api.md"} <= names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 220  # short: the reference is in docs/


# -- finding codes --------------------------------------------------------------------------------------------------
@functools.cache
def _trees() -> list[tuple[Path, Any]]:
    import ast

    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted((ROOT / "mcard").rglob("*.py"))]


def _reported_codes() -> dict[str, dict[str, set[str]]]:
    """file stem -> code -> severities, for every ``report.error/warning/info("code", ...)`` with a literal code."""
    import ast

    out: dict[str, dict[str, set[str]]] = {}
    for path, tree in _trees():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and len(node.args) >= 4):
                continue
            severity, code = node.func.attr, node.args[0]
            if severity == "add" and isinstance(code, ast.Attribute) and code.attr in ("ERROR", "WARNING", "INFO"):
                severity, code = code.attr.lower(), node.args[1]
            if severity in ("error", "warning", "info") and isinstance(code, ast.Constant) and isinstance(code.value, str):
                out.setdefault(path.stem, {}).setdefault(code.value, set()).add(severity)
    return out


def _code_table(page: str, heading: str) -> dict[str, str]:
    """code -> severity cell of the finding-code table under ``heading`` in docs/<page>."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z_]+(?:-[a-z_]+)*)` \| ([^|]+) \|", section, re.MULTILINE))


def _literals() -> set[str]:
    import ast

    return {n.value for _, tree in _trees() for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


@pytest.mark.parametrize("page, heading, only", [("formats.md", "## Finding codes", False),
                                                 ("cards.md", "## `card check`", True)])
def test_every_finding_code_is_documented_with_its_severity(page: str, heading: str, only: bool) -> None:
    table = _code_table(page, heading)
    reported = {}
    for stem, codes in _reported_codes().items():
        if (stem == "card_check") == only:
            for code, severities in codes.items():
                reported.setdefault(code, set()).update(severities)
    assert len(reported) >= (12 if only else 40)
    missing = sorted(set(reported) - set(table))
    assert not missing, f"finding codes reported by mcard but not documented in docs/{page}: {missing}"
    for code, severities in reported.items():
        assert severities <= set(re.findall(r"error|warning|info", table[code])), (code, severities, table[code])
    unknown = sorted(set(table) - _literals())
    assert not unknown, f"docs/{page} documents codes mcard never reports: {unknown}"


# -- CI runs the README's test command ------------------------------------------------------------------------------
def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in quickstart.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ran = [line.replace("pip install -q ", "pip install ") for line in ci.splitlines() if "pytest" in line
           and not line.startswith("#")]
    assert ran == [commands[1]], f".ci/run runs {ran}, the README's Quickstart says {commands[1]!r}"
