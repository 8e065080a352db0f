"""Rendering cards from the registry and checking cards against it.

Golden cards live in tests/golden/NAME.md, one per registry/NAME.toml; regenerate
them with ``MCARD_UPDATE_GOLDEN=1 pytest tests/test_card.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mcard.arch import tiny_config
from mcard.card import check_card, markdown_tables, render_card
from mcard.errors import UnusableInput

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "registry"
GOLDEN = Path(__file__).resolve().parent / "golden"
ENTRIES = sorted(REGISTRY.glob("*.toml"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcard.cli", *args], capture_output=True, text=True, cwd=ROOT)


def run(*args: str):
    """The CLI in-process (fast); returns click's Result with exit_code, stdout, stderr."""
    from typer.testing import CliRunner

    from mcard.cli import app

    return CliRunner().invoke(app, list(args))


def needs(module: str, attr: str):
    """The format module, or skip when it (or the function the test needs) is not there yet."""
    mod = pytest.importorskip(f"mcard.formats.{module}")
    if not hasattr(mod, attr):
        pytest.skip(f"mcard.formats.{module} has no {attr} yet")
    return mod


def files_table(text: str, first: str) -> tuple[list[str], list[dict[str, str]]]:
    for header, rows in markdown_tables(text):
        if header and header[0] == first and len(header) > 2:
            return header, [dict(zip(header, row)) for row in rows]
    raise AssertionError(f"no table starting with {first!r}")


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {p.stem: render_card(p) for p in ENTRIES}


# -- golden cards ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda p: p.stem)
def test_golden(entry: Path, rendered: dict[str, str]) -> None:
    if entry.stem in ("llama-2-13b-chat-gptq", "alpaca-13b-int4", "EXAMPLE"):
        needs("gptq", "runtimes")
    golden = GOLDEN / f"{entry.stem}.md"
    text = rendered[entry.stem]
    if os.environ.get("MCARD_UPDATE_GOLDEN") == "1":
        golden.write_bytes(text.encode("utf-8"))
    assert golden.is_file(), f"no golden card {golden}; run with MCARD_UPDATE_GOLDEN=1"
    assert text.encode("utf-8") == golden.read_bytes(), f"{entry.name} renders differently from {golden.name}"


def test_every_entry_has_a_golden() -> None:
    assert {p.stem for p in GOLDEN.glob("*.md")} == {p.stem for p in ENTRIES}


def test_render_is_deterministic(tmp_path: Path) -> None:
    entry = REGISTRY / "guanaco-7b-ggml.toml"
    first, second = render_card(entry), render_card(entry)
    assert first == second
    out1, out2 = tmp_path / "a.md", tmp_path / "b.md"
    assert cli("card", "render", str(entry), "-o", str(out1)).returncode == 0
    assert run("card", "render", str(entry), "-o", str(out2)).exit_code == 0
    assert out1.read_bytes() == out2.read_bytes() == first.encode("utf-8")


# -- the seed cards' tables reproduced -----------------------------------------------------


def test_gptq_table_reproduces_the_seed(rendered: dict[str, str]) -> None:
    needs("gptq", "runtimes")
    header, rows = files_table(rendered["llama-2-13b-chat-gptq"], "Branch")
    assert header == ["Branch", "Bits", "Group Size", "Act Order", "File Size", "ExLlama Compatible", "Made With",
                      "Description"]
    got = [(r["Branch"], r["Bits"], r["Group Size"], r["Act Order"], r["File Size"], r["ExLlama Compatible"],
            r["Made With"]) for r in rows]
    assert got == [
        ("main", "4", "128", "False", "7.26 GB", "True", "AutoGPTQ"),
        ("gptq-4bit-32g-actorder_True", "4", "32", "True", "8.00 GB", "True", "AutoGPTQ"),
        ("gptq-4bit-64g-actorder_True", "4", "64", "True", "7.51 GB", "True", "AutoGPTQ"),
        ("gptq-4bit-128g-actorder_True", "4", "128", "True", "7.26 GB", "True", "AutoGPTQ"),
    ]


GUANACO = [  # name suffix, quant method, bits, size, max RAM: as published
    ("q2_K", "2", "2.80 GB", "5.30 GB"), ("q3_K_S", "3", "2.90 GB", "5.40 GB"),
    ("q3_K_M", "3", "3.23 GB", "5.73 GB"), ("q3_K_L", "3", "3.55 GB", "6.05 GB"),
    ("q4_0", "4", "3.79 GB", "6.29 GB"), ("q4_K_S", "4", "3.79 GB", "6.29 GB"),
    ("q4_K_M", "4", "4.05 GB", "6.55 GB"), ("q4_1", "4", "4.21 GB", "6.71 GB"),
    ("q5_0", "5", "4.63 GB", "7.13 GB"), ("q5_K_S", "5", "4.63 GB", "7.13 GB"),
    ("q5_K_M", "5", "4.77 GB", "7.27 GB"), ("q5_1", "5", "5.06 GB", "7.56 GB"),
    ("q6_K", "6", "5.53 GB", "8.03 GB"), ("q8_0", "8", "7.16 GB", "9.66 GB"),
]


def test_ggml_table_reproduces_the_seed_sorted_by_size(rendered: dict[str, str]) -> None:
    header, rows = files_table(rendered["guanaco-7b-ggml"], "Name")
    assert header == ["Name", "Quant method", "Bits", "Size", "Max RAM required", "Use case"]
    got = [(r["Name"], r["Quant method"], r["Bits"], r["Size"], r["Max RAM required"]) for r in rows]
    assert got == [(f"guanaco-7B.ggmlv3.{t}.bin", t, b, s, ram) for t, b, s, ram in GUANACO]
    sizes = [float(r["Size"].split()[0]) for r in rows]
    assert sizes == sorted(sizes)
    assert all(r["Use case"] for r in rows)


@pytest.mark.parametrize(("entry", "module"), [("llama-2-13b-chat-gptq", "gptq"), ("guanaco-7b-ggml", "ggml")])
def test_predictions_agree_with_published_sizes(entry: str, module: str) -> None:
    needs(module, "predict_size")
    from mcard.card import predict
    from mcard.registry import load_entry

    e = load_entry(REGISTRY / f"{entry}.toml")
    for v in e.variants:
        size, ram = predict(e, v)
        assert round(size / 1e9, 2) == round(v.size / 1e9, 2), v.key
        if v.ram is not None:
            assert round(ram / 1e9, 2) == round(v.ram / 1e9, 2), v.key


def test_predicted_sizes_are_marked(rendered: dict[str, str]) -> None:
    needs("gptq", "predict_size")
    _, rows = files_table(rendered["alpaca-13b-int4"], "Branch")
    assert rows[0]["File Size"] == "7.26 GB*"
    assert "\\* Predicted by `mcard size`" in rendered["alpaca-13b-int4"]
    _, rows = files_table(rendered["llama-13b"], "Branch")
    assert rows[0]["Size"].endswith(" GB*")
    assert "* Predicted" not in rendered["guanaco-7b-ggml"]


def test_front_matter_and_model_index(rendered: dict[str, str]) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard(rendered["alpaca-13b-int4"])
    assert card.data.license == "other" and card.data.base_model == "huggyllama/llama-13b"
    assert card.data.model_name == "Alpaca 13B LoRA int4"
    assert {(r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results} == {
        ("c4", "perplexity", 6.925674915313721), ("ptb_text_only", "perplexity", 9.23875904083252),
        ("wikitext", "perplexity", 5.219980716705322)}
    gptq = ModelCard(rendered["llama-2-13b-chat-gptq"]).data.to_dict()
    assert gptq["quantized_by"] == "TheBloke" and gptq["inference"] is False and gptq["model_type"] == "llama"
    assert gptq["prompt_template"].startswith("[INST] <<SYS>>")
    assert "gptq" in gptq["tags"] and "4-bit" in gptq["tags"]
    base = ModelCard(rendered["llama-13b"]).data
    assert ("boolq", "acc", 0.781) in {(r.dataset_type, r.metric_type, r.metric_value) for r in base.eval_results}


def test_download_section(rendered: dict[str, str]) -> None:
    text = rendered["llama-2-13b-chat-gptq"]
    b = "gptq-4bit-32g-actorder_True"
    assert f"mcard fetch TheBloke/Llama-2-13B-chat-GPTQ:{b}" in text
    assert f"git clone --single-branch --branch {b} https://huggingface.co/TheBloke/Llama-2-13B-chat-GPTQ" in text
    assert f'snapshot_download(repo_id="TheBloke/Llama-2-13B-chat-GPTQ", revision="{b}")' in text
    assert f'from_pretrained("TheBloke/Llama-2-13B-chat-GPTQ", revision="{b}"' in text


# -- sandbox: registry text is data ----------------------------------------------------------


def tiny_entry(tmp_path: Path, variants: str, extra_model: str = "", arch: bool = True, cfg: dict | None = None) -> Path:
    cfg = cfg or tiny_config()
    arch_text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items() if not isinstance(v, list)) if arch else ""
    text = (
        '[model]\nrepo = "org/tiny"\nname = "Tiny"\nlicense = "mit"\nbase_model = "org/tiny-base"\n' + extra_model
        + ("\n[architecture]\n" + arch_text if arch else "") + "\n" + variants
    )
    path = tmp_path / "tiny.toml"
    path.write_text(text, encoding="utf-8")
    return path


GPTQ_VARIANTS = """
[[variants]]
branch = "main"
format = "gptq"
bits = 4
group_size = 128
description = "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }} | pipe"

[[variants]]
branch = "gptq-8bit-128g"
format = "gptq"
bits = 8
group_size = 128
"""


def test_registry_text_is_never_template_code(tmp_path: Path) -> None:
    needs("gptq", "runtimes")
    entry = tiny_entry(tmp_path, GPTQ_VARIANTS, 'description = "Hello {{ 7*7 }} {{ config }}"\n')
    text = render_card(entry)
    assert "Hello {{ 7*7 }} {{ config }}" in text
    assert "49" not in text
    assert "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }} \\| pipe" in text


def test_sandbox_refuses_unsafe_template(tmp_path: Path) -> None:
    needs("gptq", "runtimes")
    entry = tiny_entry(tmp_path, GPTQ_VARIANTS)
    evil = tmp_path / "evil.md.j2"
    evil.write_text("{{ model.__class__.__mro__[1].__subclasses__() }}\n")
    proc = cli("card", "render", str(entry), "--template", str(evil))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_template_override_can_use_partials(tmp_path: Path) -> None:
    needs("gptq", "runtimes")
    entry = tiny_entry(tmp_path, GPTQ_VARIANTS)
    mine = tmp_path / "mine.md.j2"
    mine.write_text("# {{ model.name }} (custom)\n\n{% include '_files.md.j2' %}")
    text = render_card(entry, template=mine)
    assert "# Tiny (custom)" in text
    _, rows = files_table(text, "Branch")
    assert [r["Branch"] for r in rows] == ["main", "gptq-8bit-128g"]
    assert [r["ExLlama Compatible"] for r in rows] == ["True", "False"]
    assert all(r["File Size"].endswith(" GB*") for r in rows)  # predicted from the tiny architecture


# -- measured from --variants ---------------------------------------------------------------


def test_variants_dir_measures_sizes_and_reads_chat_template(tmp_path: Path) -> None:
    gptq = needs("gptq", "write_variant")
    entry = tiny_entry(tmp_path, GPTQ_VARIANTS)
    vdir = tmp_path / "variants"
    gptq.write_variant(vdir / "main", tiny_config(), bits=4, group_size=128)
    gptq.write_variant(vdir / "gptq-8bit-128g", tiny_config(), bits=8, group_size=128)
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    (vdir / "main" / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    text = render_card(entry, variants_dir=vdir)
    _, rows = files_table(text, "Branch")
    for row, branch in zip(rows, ["main", "gptq-8bit-128g"]):
        weights = sum(p.stat().st_size for p in (vdir / branch).glob("*.safetensors"))
        assert row["File Size"] == f"{weights / 1e9:.2f} GB"  # measured: no star
    assert [r["ExLlama Compatible"] for r in rows] == ["True", "False"]
    assert "Sizes measured from the files" in text
    assert template in text  # shown literally, never executed
    assert render_card(entry, variants_dir=vdir) == text


def test_variants_dir_measures_ggml_files(tmp_path: Path) -> None:
    ggml = needs("ggml", "write_variant")
    variants = "".join(
        f'\n[[variants]]\nfile = "tiny.{t}.bin"\nformat = "ggml"\ntype = "{t}"\ndescription = "{t}"\n'
        for t in ("q8_0", "q4_0")
    )
    cfg = tiny_config(num_key_value_heads=4, intermediate_size=768)  # GGML v3: no GQA, n_ff from n_mult
    entry = tiny_entry(tmp_path, variants, cfg=cfg)
    vdir = tmp_path / "files"
    vdir.mkdir()
    for t in ("q8_0", "q4_0"):
        ggml.write_variant(vdir / f"tiny.{t}.bin", cfg, ftype=t)
    text = render_card(entry, variants_dir=vdir)
    _, rows = files_table(text, "Name")
    assert [r["Name"] for r in rows] == ["tiny.q4_0.bin", "tiny.q8_0.bin"]  # sorted by size
    for r in rows:
        size = (vdir / r["Name"]).stat().st_size
        assert r["Size"] == f"{size / 1e9:.2f} GB"
        assert r["Max RAM required"] == f"{(size + 2_500_000_000) / 1e9:.2f} GB"


def test_variants_dir_missing_branch_is_unusable(tmp_path: Path) -> None:
    entry = tiny_entry(tmp_path, GPTQ_VARIANTS)
    (tmp_path / "v").mkdir()
    with pytest.raises(UnusableInput, match="no 'main' in it"):
        render_card(entry, variants_dir=tmp_path / "v")


# -- card check -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda p: p.stem)
def test_check_passes_on_rendered_cards(entry: Path, rendered: dict[str, str], tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    card.write_text(rendered[entry.stem], encoding="utf-8")
    report = check_card(card, entry)
    assert report.ok, [f.to_dict() for f in report.all_findings()]
    assert report.format == "card"


def _edited(tmp_path: Path, text: str, old: str, new: str, count: int = 1) -> Path:
    assert old in text
    card = tmp_path / "README.md"
    card.write_text(text.replace(old, new, count), encoding="utf-8")
    return card


def test_check_catches_a_changed_size(tmp_path: Path, rendered: dict[str, str]) -> None:
    text = rendered["llama-2-13b-chat-gptq"]
    card = _edited(tmp_path, text, "| 8.00 GB |", "| 8.20 GB |")
    proc = run("card", "check", str(card), "--registry", str(REGISTRY / "llama-2-13b-chat-gptq.toml"), "--json")
    assert proc.exit_code == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["format"] == "card"
    [finding] = doc["findings"]
    assert finding["code"] == "size-mismatch" and "gptq-4bit-32g-actorder_True" in finding["where"]
    # within rounding is fine
    card = _edited(tmp_path, text, "| 8.00 GB |", "| 8.01 GB |")
    assert check_card(card, REGISTRY / "llama-2-13b-chat-gptq.toml").ok


def test_check_catches_a_deleted_row_and_ram(tmp_path: Path, rendered: dict[str, str]) -> None:
    text = rendered["guanaco-7b-ggml"]
    row = next(line for line in text.splitlines() if line.startswith("| guanaco-7B.ggmlv3.q5_1.bin "))
    card = _edited(tmp_path, text, row + "\n", "")
    report = check_card(card, REGISTRY / "guanaco-7b-ggml.toml")
    assert [(f.code, f.where) for f in report.findings] == [
        ("missing-row", "provided files/guanaco-7B.ggmlv3.q5_1.bin")]
    card = _edited(tmp_path, text, "| 7.16 GB | 9.66 GB |", "| 7.16 GB | 7.66 GB |")
    assert {f.code for f in check_card(card, REGISTRY / "guanaco-7b-ggml.toml").findings} == {"size-mismatch"}


def test_check_catches_a_broken_model_index(tmp_path: Path, rendered: dict[str, str]) -> None:
    text = rendered["alpaca-13b-int4"]
    entry = REGISTRY / "alpaca-13b-int4.toml"
    # a value changed by hand: no longer what the registry says
    card = _edited(tmp_path, text, "value: 9.23875904083252", "value: 8.5")
    assert "eval-mismatch" in check_card(card, entry).codes()
    # the structure broken: metrics without a type does not round-trip
    card = _edited(tmp_path, text, "    - type: perplexity\n      value: 9.23875904083252",
                   "    - value: 9.23875904083252")
    report = check_card(card, entry)
    assert "model-index" in report.codes()
    proc = run("card", "check", str(card))
    assert proc.exit_code == 1 and "model-index" in proc.stdout


def test_check_without_registry_requires_metadata(tmp_path: Path, rendered: dict[str, str]) -> None:
    text = rendered["llama-2-13b-chat-gptq"]
    card = _edited(tmp_path, text, "base_model: meta-llama/Llama-2-13b-chat-hf\n", "")
    report = check_card(card)
    assert [(f.code, f.where) for f in report.findings] == [("missing-metadata", "base_model")]
    card = _edited(tmp_path, text, "license: llama2\n", "")
    assert ("missing-metadata", "license") in {(f.code, f.where) for f in check_card(card).findings}


def test_check_exit_codes(tmp_path: Path, rendered: dict[str, str]) -> None:
    card = tmp_path / "README.md"
    card.write_text(rendered["qlora-instruct"], encoding="utf-8")
    ok = run("card", "check", str(card), "--registry", str(REGISTRY / "qlora-instruct.toml"))
    assert ok.exit_code == 0, ok.stdout
    missing = cli("card", "check", str(tmp_path / "nope.md"))
    assert missing.returncode == 2 and missing.stderr.startswith("mcard: ") and "Traceback" not in missing.stderr
    bad_entry = tmp_path / "bad.toml"
    bad_entry.write_text("[model\n")
    bad = run("card", "check", str(card), "--registry", str(bad_entry))
    assert bad.exit_code == 2 and re.search(r"bad\.toml:1:\d+: TOML syntax error", bad.stderr)
