"""Registry schema, lm-eval parsing and prompt templates; schema errors through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REGISTRY, cli_process
from mcard.card import prompts
from mcard.card.evals import load_lm_eval
from mcard.core.errors import UnusableInput
from mcard.registry.entry import load_entry
from mcard.registry.schema import parse_size

MINIMAL = """\
[model]
repo = "org/x-GPTQ"
name = "X GPTQ"
license = "apache-2.0"
base_model = "org/x"

[architecture]
model_type = "llama"
hidden_size = 256
intermediate_size = 512
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
vocab_size = 256

[[variants]]
branch = "main"
format = "gptq"
bits = 4
group_size = 128
"""


def write(tmp_path: Path, text: str, name: str = "entry.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- shipped entries -------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(REGISTRY.glob("*.toml")) + sorted((REGISTRY / "examples").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_entries_load(path: Path) -> None:
    entry = load_entry(path)
    assert entry.variants and entry.model.license


def test_llama2_gptq_entry_has_the_four_branches() -> None:
    entry = load_entry(REGISTRY / "llama-2-13b-chat-gptq.toml")
    got = [(v.branch, v.bits, v.group_size, v.desc_act, round(v.size / 1e9, 2), v.made_with) for v in entry.variants]
    assert got == [
        ("main", 4, 128, False, 7.26, "AutoGPTQ"),
        ("gptq-4bit-32g-actorder_True", 4, 32, True, 8.00, "AutoGPTQ"),
        ("gptq-4bit-64g-actorder_True", 4, 64, True, 7.51, "AutoGPTQ"),
        ("gptq-4bit-128g-actorder_True", 4, 128, True, 7.26, "AutoGPTQ"),
    ]


def test_guanaco_entry_has_fourteen_ggml_files() -> None:
    entry = load_entry(REGISTRY / "guanaco-7b-ggml.toml")
    assert entry.family == "gguf" and len(entry.variants) == 14
    assert {v.format for v in entry.variants} == {"ggml"}
    assert all(v.file == f"guanaco-7B.ggmlv3.{v.type}.bin" for v in entry.variants)


def test_qlora_and_alpaca_entries() -> None:
    q = load_entry(REGISTRY / "qlora-instruct.toml")
    v = q.variants[0]
    assert (v.format, v.r, v.alpha, v.dropout) == ("lora", 64, 16, 0.1)
    assert [(e.dataset_name, e.value, e.shots) for e in q.evaluations] == [("MMLU", 44.5, 5)]
    a = load_entry(REGISTRY / "alpaca-13b-int4.toml")
    assert {(e.dataset_type, e.value) for e in a.evaluations} == {
        ("c4", 6.925674915313721), ("ptb_text_only", 9.23875904083252), ("wikitext", 5.219980716705322)}
    assert any(".pt" in n for n in a.model.notes)


# -- schema errors ----------------------------------------------------------------------------


def test_minimal_entry_loads(tmp_path: Path) -> None:
    entry = load_entry(write(tmp_path, MINIMAL))
    assert entry.family == "gptq" and entry.variants[0].key == "main" and entry.variants[0].desc_act is False


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('branch = "main"', 'brnach = "main"', "variants[0].brnach: unknown key 'brnach' (did you mean 'branch'?)"),
        ('license = "apache-2.0"', 'licence = "apache-2.0"', "model.licence: unknown key 'licence' (did you mean 'license'?)"),
        ('license = "apache-2.0"\n', "", "model: missing required key 'license'"),
        ("group_size = 128\n", "", "variants[0]: missing required key 'group_size' for format gptq"),
        ("bits = 4", 'bits = "4"', "variants[0].bits: expected an integer, found a string"),
        ('format = "gptq"', 'format = "gptg"', "unknown format 'gptg' (did you mean 'gptq'?)"),
        # #10 item 3: what the format cannot represent, in the words `mcard size` uses
        ("bits = 4", "bits = 5", "variants[0].bits: gptq bits must be 2, 3, 4 or 8, not 5"),
        ("group_size = 128", "group_size = 0", "variants[0].group_size: gptq group_size must be -1 (no groups) or a "
                                               "positive integer, not 0"),
        ("bits = 4", 'bits = 4\ncheckpoint_format = "marlin"',
         "variants[0].checkpoint_format: gptq checkpoint_format must be gptq or gptq_v2, not 'marlin'"),
        ("[[variants]]", "[[variant]]", "unknown key 'variant' (did you mean 'variants'?)"),
    ],
)
def test_schema_errors_name_the_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(UnusableInput) as info:
        load_entry(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("qtype, expected", [
    ("Q9_K", "variants[0].type: unknown GGUF/GGML type 'Q9_K' (known: F32, F16"),
    ("NVFP4", "variants[0].type: NVFP4 is a llama.cpp type mcard does not model (modelled: F32"),
])
def test_gguf_type_checked_at_load(tmp_path: Path, qtype: str, expected: str) -> None:
    text = MINIMAL.replace('branch = "main"\nformat = "gptq"\nbits = 4\ngroup_size = 128\n',
                           f'file = "x.gguf"\nformat = "gguf"\ntype = "{qtype}"\n')
    with pytest.raises(UnusableInput) as info:
        load_entry(write(tmp_path, text))
    assert expected in str(info.value)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('name = "X GPTQ"', 'name = "X GPTQ'))
    with pytest.raises(UnusableInput) as info:
        load_entry(path)
    assert f"{path}:3:" in str(info.value)


def test_unknown_prompt_name_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('base_model = "org/x"', 'base_model = "org/x"\nprompt = "vicuna2"'))
    with pytest.raises(UnusableInput, match="did you mean 'vicuna'"):
        load_entry(path)


def test_variant_key_must_be_unique_and_evals_name_real_variants(tmp_path: Path) -> None:
    dup = MINIMAL + '\n[[variants]]\nbranch = "main"\nformat = "gptq"\nbits = 8\ngroup_size = 128\n'
    with pytest.raises(UnusableInput, match="already variants"):
        load_entry(write(tmp_path, dup))
    bad = MINIMAL + '\n[[evaluations]]\ndataset = "c4"\nmetric = "perplexity"\nvalue = 7.0\nvariant = "mian"\n'
    with pytest.raises(UnusableInput, match="did you mean 'main'"):
        load_entry(write(tmp_path, bad))


@pytest.mark.parametrize(
    ("args_fn", "needle"),
    [
        (lambda p: p.write_text(MINIMAL.replace('branch = "main"', 'brnach = "main"')), "did you mean 'branch'?"),
        (lambda p: p.write_text(MINIMAL.replace('repo = "org/x-GPTQ"\n', "")), "missing required key 'repo'"),
        (lambda p: p.write_text(MINIMAL.replace("bits = 4", "bits = [")), "entry.toml:"),
    ],
    ids=["unknown-key", "missing-key", "toml-syntax"],
)
def test_cli_schema_errors_exit_2_one_line(tmp_path: Path, args_fn, needle: str) -> None:
    path = tmp_path / "entry.toml"
    args_fn(path)
    proc = cli_process("card", "render", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_toml_syntax_error_reports_line_col(tmp_path: Path) -> None:
    text = MINIMAL.replace("bits = 4", "bits = 4 4")
    line = text.splitlines().index("bits = 4 4") + 1
    path = write(tmp_path, text)
    proc = cli_process("card", "render", str(path))
    assert proc.returncode == 2
    assert f"{path}:{line}:10: " in proc.stderr  # the stray "4" at column 10
    assert "TOML syntax error" in proc.stderr


# -- sizes ------------------------------------------------------------------------------------


def test_parse_size() -> None:
    assert parse_size("7.26 GB") == 7_260_000_000
    assert parse_size("512 MiB") == 512 * 2**20
    assert parse_size(123) == 123
    with pytest.raises(UnusableInput, match="expected a size"):
        parse_size("seven GB", "variants[0].size", "x.toml")


# -- lm-eval JSON -----------------------------------------------------------------------------


def test_lm_eval_v04(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.5, "acc_stderr,none": 0.01,
                                  "acc_norm,none": 0.6, "acc_norm_stderr,none": 0.02},
                    "arc_easy": {"acc,none": 0.7, "acc_stderr,none": "N/A"}},
        "n-shot": {"hellaswag": 10, "arc_easy": 0},
    }))
    got = load_lm_eval(path, metrics=["acc", "acc_norm"])
    assert [(e.dataset_type, e.metric_type, e.value, e.stderr, e.shots) for e in got] == [
        ("arc_easy", "acc", 0.7, None, 0),
        ("hellaswag", "acc", 0.5, 0.01, 10),
        ("hellaswag", "acc_norm", 0.6, 0.02, 10),
    ]


def test_lm_eval_v03(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": {"piqa": {"acc": 0.8, "acc_stderr": 0.009}}, "config": {"num_fewshot": 0}}))
    (e,) = load_lm_eval(path)
    assert (e.dataset_type, e.value, e.stderr, e.shots) == ("piqa", 0.8, 0.009, 0)


@pytest.mark.parametrize(
    "doc",
    [{"scores": {}}, {"results": {"piqa": 0.8}}, {"results": {"piqa": {"f1": 0.8}}}, []],
    ids=["no-results", "not-a-table", "no-acc", "not-an-object"],
)
def test_lm_eval_unknown_shape_says_what_was_expected(tmp_path: Path, doc) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UnusableInput) as info:
        load_lm_eval(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "acc,none" in msg or "expected a JSON object" in msg


def test_registry_eval_file_and_unknown_shape(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"results": {"piqa": {"f1": 1}}}))
    path = write(tmp_path, MINIMAL + '\n[[evaluations]]\npath = "bad.json"\n')
    with pytest.raises(UnusableInput, match=r"acc,none"):
        load_entry(path)


# -- prompts ----------------------------------------------------------------------------------


def test_literal_prompt_as_documented(tmp_path: Path) -> None:
    """#10 item 10: `prompt = "USER: {prompt} ASSISTANT:"` is a literal template, as the README says."""
    from mcard.card.render import render_card

    text = MINIMAL.replace('base_model = "org/x"', 'base_model = "org/x"\nprompt = "USER: {prompt} ASSISTANT:"')
    path = write(tmp_path, text)
    assert load_entry(path).model.prompt == "USER: {prompt} ASSISTANT:"
    card = render_card(path)
    assert "prompt_template: 'USER: {prompt} ASSISTANT:'" in card and "USER: {prompt} ASSISTANT:\n```" in card


def test_prompt_library() -> None:
    for name in ("alpaca", "vicuna", "guanaco", "llama-2-chat", "chatml"):
        assert "{prompt}" in prompts.get(name).text
    filled = prompts.get("llama-2-chat").filled()
    assert filled.startswith("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.")
    assert filled.endswith("<</SYS>>\n{prompt} [/INST]")
    assert prompts.get("guanaco").text == "### Human: {prompt} ### Assistant:"
    assert prompts.get("chatml").filled("Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")


# -- AWQ, bitsandbytes 4-bit, LoRA variants ---------------------------------------------------------

AWQ = MINIMAL.replace('format = "gptq"', 'format = "awq"')
BNB = MINIMAL.replace('format = "gptq"\nbits = 4\ngroup_size = 128\n', 'format = "nf4"\n')


def test_awq_variant_defaults_and_size_params(tmp_path: Path) -> None:
    entry = load_entry(write(tmp_path, AWQ))
    v = entry.variants[0]
    assert (entry.family, v.format, v.version, v.zero_point) == ("awq", "awq", "gemm", True)
    assert v.size_params() == {"bits": 4, "group_size": 128, "version": "gemm"}
    v = load_entry(write(tmp_path, AWQ + 'version = "GEMV"\nzero_point = false\n')).variants[0]
    assert (v.version, v.zero_point) == ("gemv", False)


def test_bnb_variants(tmp_path: Path) -> None:
    entry = load_entry(write(tmp_path, BNB))
    v = entry.variants[0]
    assert (entry.family, v.format, v.double_quant, v.key) == ("bnb", "nf4", True, "main")
    assert v.size_params() == {"double_quant": True}
    two = BNB + '\n[[variants]]\nbranch = "fp4"\nformat = "fp4"\ndouble_quant = false\n'
    assert [(v.format, v.double_quant) for v in load_entry(write(tmp_path, two)).variants] == [
        ("nf4", True), ("fp4", False)]


def test_lora_size_params(tmp_path: Path) -> None:
    text = BNB.replace('format = "nf4"', 'format = "lora"\nr = 16\nalpha = 32\ntarget_modules = ["q_proj"]')
    v = load_entry(write(tmp_path, text)).variants[0]
    assert v.size_params() == {"r": 16, "target_modules": ["q_proj"]}  # alpha does not change the file
    v = load_entry(write(tmp_path, BNB.replace('format = "nf4"', 'format = "lora"\nr = 8'))).variants[0]
    assert v.size_params() == {"r": 8, "target_modules": None}  # None: every linear


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (AWQ + 'version = "gemv2"\n',
         "variants[0].version: awq version must be gemm or gemv, not 'gemv2' (did you mean 'gemv'?)"),
        (AWQ + 'version = "marlin"\n', "variants[0].version: awq version must be gemm or gemv, not 'marlin'"),
        (AWQ + "version = 2\n", "variants[0].version: expected a string, found an integer"),
        (AWQ.replace("bits = 4", "bits = 8"), "variants[0].bits: awq bits must be 4, not 8"),
        (AWQ.replace("group_size = 128\n", ""), "variants[0]: missing required key 'group_size' for format awq"),
        (AWQ + "double_quant = true\n", "variants[0].double_quant: only for format nf4 or fp4, not awq"),
        (MINIMAL + 'version = "gemm"\n', "variants[0].version: only for format awq, not gptq"),
        (BNB + "zero_point = false\n", "variants[0].zero_point: only for format awq, not nf4"),
        (BNB + '\n[[variants]]\nbranch = "b"\nformat = "awq"\nbits = 4\ngroup_size = 128\n',
         "all variants of a repo must be one format family, found awq, bnb"),
        (BNB.replace('format = "nf4"', 'format = "nf5"'), "unknown format 'nf5' (did you mean 'nf4'?)"),
        (BNB.replace('format = "nf4"', 'format = "lora"\nr = 0'), "variants[0].r: lora r must be a positive integer, not 0"),
    ],
    ids=["version-close", "version-unknown", "version-type", "awq-bits", "awq-group-size", "dq-on-awq",
         "version-on-gptq", "zp-on-nf4", "mixed-families", "unknown-format", "lora-rank"],
)
def test_awq_bnb_schema_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UnusableInput) as info:
        load_entry(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_examples_are_not_top_level_entries() -> None:
    assert not (REGISTRY / "EXAMPLE.toml").exists()  # `mcard plan registry/` reads registry/*.toml
    examples = {p.name for p in (REGISTRY / "examples").glob("*.toml")}
    assert {"EXAMPLE.toml", "awq-example.toml"} <= examples
    entry = load_entry(REGISTRY / "examples" / "awq-example.toml")
    assert entry.family == "awq" and [v.version for v in entry.variants] == ["gemm", "gemv"]
