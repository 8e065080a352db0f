"""Rendering cards from the registry and checking cards against it.

Golden cards live in tests/card/golden/NAME.md, one per registry/NAME.toml; regenerate
them with ``MCARD_UPDATE_GOLDEN=1 pytest tests/card/test_card.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from helpers import REGISTRY, cli_process, run_cli
from mcard.card.check import check_card, markdown_tables
from mcard.card.render import render_card
from mcard.card.rows import size_cell
from mcard.core.arch import tiny_config
from mcard.core.errors import UnusableInput

GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = REGISTRY / "examples"  # commented examples: rendered and checked, never planned or published
ENTRIES = sorted(REGISTRY.glob("*.toml")) + sorted(EXAMPLES.glob("*.toml"))


def needs(module: str, attr: str):
    """The format module, or skip when it (or the function the test needs) is not there yet."""
    mod = pytest.importorskip(f"mcard.formats.{module}")
    if not hasattr(mod, attr):
        pytest.skip(f"mcard.formats.{module} has no {attr} yet")
    return mod


def files_table(text: str, first: str) -> tuple[list[str], list[dict[str, str]]]:
    for header, rows in markdown_tables(text):
        if header and header[0] == first and len(header) > 2:
            return header, [dict(zip(header, row, strict=False)) for row in rows]
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
    assert cli_process("card", "render", str(entry), "-o", str(out1)).returncode == 0
    assert run_cli("card", "render", str(entry), "-o", str(out2)).exit_code == 0
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
    from mcard.card.rows import predict
    from mcard.registry.entry import load_entry

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
    proc = cli_process("card", "render", str(entry), "--template", str(evil))
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
    assert all(r["File Size"].endswith("B*") for r in rows)  # predicted from the tiny architecture


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
    for row, branch in zip(rows, ["main", "gptq-8bit-128g"], strict=False):
        weights = sum(p.stat().st_size for p in (vdir / branch).glob("*.safetensors"))
        assert row["File Size"] == size_cell(weights)  # measured: no star
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
        assert r["Size"] == size_cell(size)
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
    proc = run_cli("card", "check", str(card), "--registry", str(REGISTRY / "llama-2-13b-chat-gptq.toml"), "--json")
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
    proc = run_cli("card", "check", str(card))
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
    ok = run_cli("card", "check", str(card), "--registry", str(REGISTRY / "qlora-instruct.toml"))
    assert ok.exit_code == 0, ok.stdout
    missing = cli_process("card", "check", str(tmp_path / "nope.md"))
    assert missing.returncode == 2 and missing.stderr.startswith("mcard: ") and "Traceback" not in missing.stderr
    bad_entry = tmp_path / "bad.toml"
    bad_entry.write_text("[model\n")
    bad = run_cli("card", "check", str(card), "--registry", str(bad_entry))
    assert bad.exit_code == 2 and re.search(r"bad\.toml:1:\d+: TOML syntax error", bad.stderr)


# -- AWQ, bitsandbytes 4-bit and LoRA entries ---------------------------------------------------

AWQ_VARIANTS = """
[[variants]]
branch = "main"
format = "awq"
bits = 4
group_size = 128
made_with = "AutoAWQ"
dataset = "pileval"
seq_len = 512
description = "GEMM"

[[variants]]
branch = "awq-4bit-64g-gemv"
format = "awq"
bits = 4
group_size = 64
version = "GEMV"

[[variants]]
branch = "awq-4bit-256g-nozp"
format = "awq"
bits = 4
group_size = 256
zero_point = false
"""


def _entry_rows(path: Path, **kwargs):
    from mcard.card.rows import build_rows
    from mcard.registry.entry import load_entry

    entry = load_entry(path)
    return entry, {r.variant.key: r for r in build_rows(entry, **kwargs)}


def test_awq_entry_predicted_sizes_and_runtimes(tmp_path: Path) -> None:
    awq = needs("awq", "runtimes")
    from mcard import formats
    from mcard.core.size import predict_size

    entry = tiny_entry(tmp_path, AWQ_VARIANTS)
    e, rows = _entry_rows(entry)
    assert e.family == "awq"
    params = {"main": (128, "gemm", True), "awq-4bit-64g-gemv": (64, "gemv", True),
              "awq-4bit-256g-nozp": (256, "gemm", False)}
    for key, (gs, version, zp) in params.items():
        want = predict_size(tiny_config(), "awq", bits=4, group_size=gs, version=version).total_bytes
        assert (rows[key].size, rows[key].size_source) == (want, "predicted"), key
        assert [(r.name, r.compatible) for r in rows[key].runtimes] == [
            (r.name, r.compatible) for r in awq.runtimes(bits=4, group_size=gs, version=version, zero_point=zp)]
    text = render_card(entry)
    header, table = files_table(text, "Branch")
    assert header == list(formats.family("awq").columns)
    by = {r["Branch"]: r for r in table}
    assert [by[k]["Version"] for k in params] == ["GEMM", "GEMV", "GEMM"]
    assert (by["main"]["AWQ Dataset"], by["main"]["Seq Len"], by["main"]["Made With"]) == ("pileval", "512", "AutoAWQ")
    assert by["awq-4bit-64g-gemv"]["AWQ Dataset"] == "-"
    assert all(r["Size"].endswith("B*") for r in table)
    assert by["main"]["Compatible runtimes"] == "vLLM AWQ, Marlin, transformers"
    assert by["awq-4bit-64g-gemv"]["Compatible runtimes"] == "transformers"  # GEMV: no vLLM, no Marlin
    assert by["awq-4bit-256g-nozp"]["Compatible runtimes"] == "vLLM AWQ, transformers"  # Marlin: group size, zero point
    assert "* `awq-4bit-256g-nozp`" in text  # listed as quantized without zero points
    from huggingface_hub import ModelCard

    tags = ModelCard(text).data.tags
    assert "awq" in tags and "4-bit" in tags
    card = tmp_path / "README.md"
    card.write_text(text, encoding="utf-8")
    assert check_card(card, entry).ok
    card.write_text(text.replace("| main | 4 | 128 |", "| main | 4 | 64 |"), encoding="utf-8")
    assert [f.code for f in check_card(card, entry).findings] == ["param-mismatch"]


BNB_VARIANTS = """
[[variants]]
branch = "main"
format = "nf4"
description = "NF4, double quant"

[[variants]]
branch = "fp4"
format = "fp4"
double_quant = false
"""


def test_bnb_entry_predicted_sizes_and_runtimes(tmp_path: Path) -> None:
    bnb = needs("bnb", "runtimes")
    from mcard import formats
    from mcard.core.size import predict_size

    entry = tiny_entry(tmp_path, BNB_VARIANTS)
    e, rows = _entry_rows(entry)
    assert e.family == "bnb" and [v.double_quant for v in e.variants] == [True, False]
    assert rows["main"].size == predict_size(tiny_config(), "nf4", double_quant=True).total_bytes
    assert rows["fp4"].size == predict_size(tiny_config(), "fp4", double_quant=False).total_bytes
    assert rows["main"].size != predict_size(tiny_config(), "nf4", double_quant=False).total_bytes
    text = render_card(entry)
    header, table = files_table(text, "Branch")
    assert header == list(formats.family("bnb").columns) == ["Branch", "Quant type", "Double quant", "Size",
                                                             "Compatible runtimes", "Description"]
    assert [(r["Branch"], r["Quant type"], r["Double quant"]) for r in table] == [
        ("main", "nf4", "True"), ("fp4", "fp4", "False")]
    compatible = ", ".join(r.name for r in bnb.runtimes("nf4", True) if r.compatible)
    assert table[0]["Compatible runtimes"] == compatible and "llama.cpp" not in compatible
    assert all(r["Size"].endswith("B*") for r in table)
    assert "bitsandbytes" in text
    card = tmp_path / "README.md"
    card.write_text(text, encoding="utf-8")
    assert check_card(card, entry).ok
    card.write_text(text.replace("| fp4 | fp4 |", "| fp4 | nf4 |"), encoding="utf-8")
    assert [(f.code, f.where) for f in check_card(card, entry).findings] == [
        ("param-mismatch", "provided files/fp4/Quant type")]


LORA_VARIANTS = """
[[variants]]
branch = "main"
format = "lora"
r = 8
alpha = 16
target_modules = ["q_proj", "v_proj"]

[[variants]]
branch = "all-linear"
format = "lora"
r = 16
alpha = 32

[[variants]]
branch = "no-rank"
format = "lora"
"""


def test_lora_sizes_predicted_from_rank_and_targets(tmp_path: Path) -> None:
    needs("lora", "predict_size")
    from mcard.core.size import predict_size

    entry = tiny_entry(tmp_path, LORA_VARIANTS)
    _, rows = _entry_rows(entry)
    assert rows["main"].size == predict_size(tiny_config(), "lora", r=8, target_modules=["q_proj", "v_proj"]).total_bytes
    assert rows["all-linear"].size == predict_size(tiny_config(), "lora", r=16).total_bytes
    assert rows["main"].size_source == rows["all-linear"].size_source == "predicted"
    assert rows["main"].size < rows["all-linear"].size
    assert (rows["no-rank"].size, rows["no-rank"].size_source) == (None, "unknown")  # no r: no prediction
    _, table = files_table(render_card(entry), "Branch")
    assert [r["Size"].endswith("B*") for r in table] == [True, True, False]
    # without an architecture nothing is predicted
    _, rows = _entry_rows(tiny_entry(tmp_path, LORA_VARIANTS, arch=False))
    assert all(r.size is None for r in rows.values())


def test_lora_prediction_equals_the_written_adapter(tmp_path: Path) -> None:
    lora = needs("lora", "write_variant")
    entry = tiny_entry(tmp_path, LORA_VARIANTS)
    lora.write_variant(tmp_path / "main", tiny_config(), r=8, target_modules=["q_proj", "v_proj"])
    _, predicted = _entry_rows(entry)
    _, measured = _entry_rows(entry, variant_paths={"main": tmp_path / "main"})
    assert measured["main"].size_source == "measured"
    assert measured["main"].size == predicted["main"].size


# -- variant_paths: measure some variants, keep the others' recorded or predicted sizes -----------


def test_variant_paths_measure_only_the_given_variants(tmp_path: Path) -> None:
    gptq = needs("gptq", "write_variant")
    entry = tiny_entry(tmp_path, GPTQ_VARIANTS)
    gptq.write_variant(tmp_path / "built-main", tiny_config(), bits=4, group_size=128)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (tmp_path / "built-main" / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    weights = sum(p.stat().st_size for p in (tmp_path / "built-main").glob("*.safetensors"))
    _, rows = _entry_rows(entry, variant_paths={"main": tmp_path / "built-main"})
    assert (rows["main"].size, rows["main"].size_source) == (weights, "measured")
    assert rows["gptq-8bit-128g"].size_source == "predicted"
    text = render_card(entry, variant_paths={"main": tmp_path / "built-main"})
    _, table = files_table(text, "Branch")
    assert table[0]["File Size"] == size_cell(weights)  # measured: no star
    assert table[1]["File Size"].endswith("B*")
    assert "Sizes measured from the files" in text and "\\* Predicted by `mcard size`" in text
    assert template in text  # the measured folder's tokenizer_config.json
    # the same bytes as measuring every variant would give for that variant
    gptq.write_variant(tmp_path / "all" / "main", tiny_config(), bits=4, group_size=128)
    gptq.write_variant(tmp_path / "all" / "gptq-8bit-128g", tiny_config(), bits=8, group_size=128)
    _, full = _entry_rows(entry, variants_dir=tmp_path / "all")
    assert full["main"].size == rows["main"].size
    # variant_paths wins over variants_dir for its keys; variants_dir still needs the others
    _, both = _entry_rows(entry, variants_dir=tmp_path / "all", variant_paths={"main": tmp_path / "built-main"})
    assert both["gptq-8bit-128g"].size == full["gptq-8bit-128g"].size
    assert render_card(entry, variant_paths={}) == render_card(entry)  # empty: as without --variants


def test_variant_paths_measure_awq_and_bnb_exactly(tmp_path: Path) -> None:
    awq = needs("awq", "write_variant")
    bnb = needs("bnb", "write_variant")
    entry = tiny_entry(tmp_path, AWQ_VARIANTS)
    awq.write_variant(tmp_path / "awq-main", tiny_config(), group_size=128, version="gemm")
    awq.write_variant(tmp_path / "awq-gemv", tiny_config(), group_size=64, version="gemv")
    _, predicted = _entry_rows(entry)
    _, rows = _entry_rows(entry, variant_paths={"main": tmp_path / "awq-main",
                                                "awq-4bit-64g-gemv": tmp_path / "awq-gemv"})
    for key in ("main", "awq-4bit-64g-gemv"):
        assert rows[key].size_source == "measured" and rows[key].size == predicted[key].size, key
    assert rows["awq-4bit-256g-nozp"].size_source == "predicted"
    compatible = {r.name for r in rows["main"].runtimes if r.compatible}
    assert {"vLLM AWQ", "transformers"} <= compatible
    entry = tiny_entry(tmp_path, BNB_VARIANTS)
    bnb.write_variant(tmp_path / "bnb-fp4", tiny_config(), quant_type="fp4", double_quant=False)
    _, predicted = _entry_rows(entry)
    _, rows = _entry_rows(entry, variant_paths={"fp4": tmp_path / "bnb-fp4"})
    assert rows["fp4"].size_source == "measured" and rows["main"].size_source == "predicted"
    assert abs(rows["fp4"].size - predicted["fp4"].size) < 1000  # exact but for nested_offset digits


def test_variant_paths_accept_a_file(tmp_path: Path) -> None:
    ggml = needs("ggml", "write_variant")
    variants = "".join(
        f'\n[[variants]]\nfile = "tiny.{t}.bin"\nformat = "ggml"\ntype = "{t}"\n' for t in ("q8_0", "q4_0"))
    cfg = tiny_config(num_key_value_heads=4, intermediate_size=768)
    entry = tiny_entry(tmp_path, variants, cfg=cfg)
    built = tmp_path / "out" / "anything.bin"
    built.parent.mkdir()
    ggml.write_variant(built, cfg, ftype="q4_0")
    _, rows = _entry_rows(entry, variant_paths={"tiny.q4_0.bin": built})
    assert (rows["tiny.q4_0.bin"].size, rows["tiny.q4_0.bin"].size_source) == (built.stat().st_size, "measured")
    assert rows["tiny.q4_0.bin"].ram == built.stat().st_size + 2_500_000_000
    assert rows["tiny.q8_0.bin"].size_source == "predicted"


def test_variant_paths_errors(tmp_path: Path) -> None:
    entry = tiny_entry(tmp_path, GPTQ_VARIANTS)
    with pytest.raises(UnusableInput, match=r"no variant 'mian' in tiny.toml \(did you mean 'main'\?\)"):
        render_card(entry, variant_paths={"mian": tmp_path})
    with pytest.raises(UnusableInput, match="no such file or folder for variant 'main'"):
        render_card(entry, variant_paths={"main": tmp_path / "nope"})


# -- issue #10 item 19: what the cards tell a user ---------------------------------------------------


GGUF_ENTRY = """\
[model]
repo = "org/tiny-GGUF"
name = "Tiny GGUF"
license = "apache-2.0"
base_model = "org/tiny"

[[variants]]
file = "tiny.Q4_K_M.gguf"
format = "gguf"
type = "Q4_K_M"
size = "4.08 GB"
"""


def test_gguf_card_fetches_one_file_and_shows_llama_cpp(tmp_path: Path, rendered: dict[str, str]) -> None:
    entry = tmp_path / "tiny-gguf.toml"
    entry.write_text(GGUF_ENTRY)
    text = render_card(entry)
    assert "fetch one file" in text and "mcard fetch org/tiny-GGUF tiny.Q4_K_M.gguf\n" in text
    assert "mcard fetch org/tiny-GGUF:main" not in text
    assert "## How to run with llama.cpp" in text and "llama-cli -m tiny.Q4_K_M.gguf " in text
    ggml = rendered["guanaco-7b-ggml"]  # legacy GGML files: no llama.cpp recipe that would not load them
    assert "mcard fetch TheBloke/guanaco-7B-GGML guanaco-7B.ggmlv3.q2_K.bin\n" in ggml
    assert "llama-cli" not in ggml and "llama.cpp has loaded only GGUF since August 2023" in ggml


def test_adapter_fp16_and_eval_conventions(rendered: dict[str, str]) -> None:
    assert "\nlibrary_name: peft\n" in rendered["qlora-instruct"].split("\n---\n")[0]
    llama = rendered["llama-13b"]
    assert "from the architecture and the dtype, not measured" in llama and "quantization parameters" not in llama
    header, rows = next(t for t in markdown_tables(llama) if t[0][:4] == ["Variant", "Dataset", "Metric", "Value"])
    values = {row[1]: float(row[3]) for row in rows}
    assert values["MMLU"] == 46.9 and values["arc_challenge"] == 52.7  # one convention in one table
    assert all(v > 1 for v in values.values())
    assert "Accuracies are percentages (lm-evaluation-harness fractions are shown x 100)." in llama
    assert "value: 0.527" in llama  # model-index keeps the values as given
