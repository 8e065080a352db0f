"""One folder and one FormatSpec per format, and nobody else keeps format tables (#11).

The specs are checked against what they point to (templates, registry keys, parameters, the
kernel limits), and the code outside ``mcard/formats/`` is scanned for comparisons with format
names and dicts keyed by them: the if/elif chains and tables the specs replaced.
"""

from __future__ import annotations

import ast

import pytest

from helpers import ROOT
from mcard import formats
from mcard.card.render import templates
from mcard.formats.spec import FormatSpec
from mcard.registry.schema import VARIANT_SPEC

SPECS = formats.specs()


def test_every_folder_has_one_spec_and_every_spec_its_folder() -> None:
    folders = sorted(p.parent.name for p in (ROOT / "mcard" / "formats").glob("*/spec.py"))
    assert folders == sorted(formats.SPEC_MODULES)
    assert sorted(s.folder for s in SPECS) == sorted(formats.SPEC_MODULES)
    assert sorted(s.name for s in formats.detection_order()) == sorted(s.name for s in SPECS)
    assert all(isinstance(s, FormatSpec) and s.module.NAME == s.name for s in SPECS)


def test_names_are_one_vocabulary() -> None:
    names = [s.name for s in SPECS]
    aliases = [a for s in SPECS for a in s.aliases]
    assert len(set(names)) == len(names) and len(set(aliases)) == len(aliases)
    # an alias that is a format's name names that format (no word means two things)
    assert all(formats.by_alias(a).name == a for a in aliases if a in names)
    families = {s.card.family for s in SPECS if s.card is not None}
    assert families <= set(names), "a family is named like the format whose card it is"


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_a_spec_points_at_what_exists(spec: FormatSpec) -> None:
    keys = set(VARIANT_SPEC)
    assert set(spec.required_keys) <= keys and set(spec.own_keys) <= keys and set(spec.registry_keys) <= keys
    assert set(spec.params) <= keys | {"writer", "split_max_size", "imatrix"}  # mcard size's own options
    if spec.aliases:  # listed in entries and sized: a card, a predictor
        assert spec.card is not None and templates().joinpath(spec.card.template).is_file()
        assert spec.can_predict_size
        assert len(spec.card.columns) == len(set(spec.card.columns)) and spec.card.size_column in spec.card.columns
    if spec.files_are_variants:
        assert spec.file_kinds
    if spec.kernel_tolerance is not None:  # smoke layers: a smoke module in its folder
        assert (ROOT / "mcard" / "formats" / spec.folder / "smoke.py").is_file()
        assert type(spec).smoke_layers is not FormatSpec.smoke_layers
        assert 0 < spec.kernel_tolerance < 0.01


# Comparisons with format words outside formats/ that are not format knowledge, and why.
ALLOWED = {
    "hub/selection.py": "fetch's pickle policy judges a file by its name before it is downloaded",
    "pipeline/demo_publish.py": "the demo's own staging folders, named after what it builds",
    "pipeline/package.py": "sniff's file kind 'pickle' (a container, refused whatever the format)",
    "pipeline/package_plan.py": "sniff's file kind 'pickle' (a container, refused whatever the format)",
}


def _format_words() -> set[str]:
    words = {s.name for s in SPECS} | set(formats.aliases())
    return words | {s.card.family for s in SPECS if s.card is not None} | {"base", "bitsandbytes", "marlin"}


def test_no_format_tables_or_chains_outside_formats() -> None:
    words, found = _format_words(), []
    for path in sorted((ROOT / "mcard").rglob("*.py")):
        rel = path.relative_to(ROOT / "mcard").as_posix()
        if rel.startswith(("formats/", "testing/")) or rel in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    if any(isinstance(e, ast.Constant) and e.value in words for e in elts):
                        found.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Dict) and sum(isinstance(k, ast.Constant) and k.value in words
                                                  for k in node.keys) >= 2:
                found.append(f"{rel}:{node.lineno}")
    assert not found, f"format-keyed comparisons or tables outside mcard/formats/: {found}"
    for rel in ALLOWED:
        assert (ROOT / "mcard" / rel).is_file(), f"stale allowance: {rel}"
