"""The registry TOML schema: which keys each table takes, of which kinds, what each means, and the checks.

This module is the one statement of the schema: the loader (:mod:`mcard.registry`) checks entries
against these tables, and ``docs/registry.md`` is generated from :func:`reference` (with each
format's parameters from its ``PARAMS``) by ``python tools/gen_docs.py``.

Every error is an :class:`UnusableInput` naming the file and the key path.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .errors import UnusableInput

# The kinds of TOML value a key may take, as error messages name them.
STR, INT, FLOAT, BOOL, LIST, TABLE = "a string", "an integer", "a number", "a boolean", "an array", "a table"


def _is(kind: str, value: Any) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, list)
    if kind == TABLE:
        return isinstance(value, dict)
    raise AssertionError(kind)


class Key(NamedTuple):
    """One key of a registry table.

    ``default`` is what the loader uses when the key is absent, written as a TOML value
    (``'"main"'``, ``"false"``) or, when it is computed, in words; empty: no default.
    ``formats`` (``[[variants]]`` only) are the formats that use the key; empty: every format.
    """

    kinds: tuple[str, ...]
    required: bool = False
    doc: str = ""
    default: str = ""
    formats: tuple[str, ...] = ()


Spec = dict[str, Key]

TOP_SPEC: Spec = {
    "model": Key((TABLE,), True, "The published repo and the model: `[model]`."),
    "architecture": Key((TABLE,), doc="The base model's shape, to predict sizes: `[architecture]`."),
    "variants": Key((LIST,), True, "One table per variant (a branch, or a GGUF/GGML file): `[[variants]]`."),
    "evaluations": Key((LIST,), doc="Evaluation results for the card and its `model-index`: `[[evaluations]]`."),
    "tables": Key((LIST,), doc="Reported figures shown as Markdown tables (not in `model-index`): `[[tables]]`."),
}
MODEL_SPEC: Spec = {
    "repo": Key((STR,), True, "The Hub repo id (`org/name`) the card is for; checked against the Hub's naming rules."),
    "name": Key((STR,), True, "Display name: the card's title, `model_name` and the `model-index` name."),
    "license": Key((STR,), True, "A Hub license id (`apache-2.0`, `llama2`, `other`...)."),
    "creator": Key((STR,), doc="`model_creator` in the front matter."),
    "base_model": Key((STR,), doc="The base model's repo id; `card check` requires it for quantized and adapter repos."),
    "base_model_name": Key((STR,), doc="The base model's display name.", default="`base_model`"),
    "description": Key((STR,), doc="Markdown, shown as written (registry text is data: `{{ 7*7 }}` stays as written)."),
    "prompt": Key((STR, TABLE), doc="The prompt template: a name from `mcard.prompts`, a literal string with `{prompt}`, "
                  "or a table `{name, text}` (see `[model.prompt]`)."),
    "system_message": Key((STR,), doc="Fills the template's `{system_message}`.", default="the template's own"),
    "original_card": Key((STR,), doc="A Markdown file appended as \"Original model card\" (its front matter dropped); "
                         "a path under the path rule."),
    "license_file": Key((STR,), doc="The license text `mcard package` puts on every branch (as `LICENSE`, or its own "
                        "name when that starts with `LICENSE`); a path under the path rule."),
    "quantized_by": Key((STR,), doc="`quantized_by` in the front matter."),
    "tags": Key((LIST,), doc="Front matter tags (strings); the format and `N-bit` tags are added."),
    "pipeline_tag": Key((STR,), doc="Front matter `pipeline_tag`.", default='"text-generation"'),
    "inference": Key((BOOL,), doc="Front matter `inference`.", default="false"),
    "language": Key((LIST,), doc="Front matter `language` (strings)."),
    "notes": Key((LIST,), doc="Notes (strings) shown near the top of the card."),
    "links": Key((LIST,), doc="\"Repositories available\": tables `{text, url}` (see `[[model.links]]`)."),
}
PROMPT_SPEC: Spec = {
    "name": Key((STR,), True, "The template's title, shown in the card's \"Prompt template\" heading."),
    "text": Key((STR,), True, "The template; must contain `{prompt}`, may contain `{system_message}`."),
}
LINK_SPEC: Spec = {
    "text": Key((STR,), True, "The link text."),
    "url": Key((STR,), True, "Where it points."),
}
VARIANT_SPEC: Spec = {
    "format": Key((STR,), True, "The variant's format, case-insensitive. All variants of an entry belong to one "
                  "family (one card template)."),
    "branch": Key((STR,), doc="The branch that holds the variant (git's ref-name rules). GGUF and GGML files share "
                  "one branch.", default='"main"'),
    "file": Key((STR,), doc="The GGUF/GGML file: the variant's name in the card and the file `fetch` downloads.",
                formats=("gguf", "ggml")),
    "bits": Key((INT,), doc="Bits per weight. GGUF/GGML: taken from the `type` name when not given.",
                formats=("gptq", "awq", "gguf", "ggml")),
    "group_size": Key((INT,), doc="Quantization group size; -1: one group per column.", formats=("gptq", "awq")),
    "desc_act": Key((BOOL,), doc="Act-order (GPTQ `desc_act`).", default="false", formats=("gptq",)),
    "sym": Key((BOOL,), doc="Symmetric quantization.", default="true", formats=("gptq",)),
    "checkpoint_format": Key((STR,), doc="GPTQ zeros convention: `gptq` (v1, AutoGPTQ) or `gptq_v2`.",
                             default='"gptq"', formats=("gptq",)),
    "version": Key((STR,), doc="The AWQ kernel layout, GEMM or GEMV (case-insensitive).", default='"gemm"',
                   formats=("awq",)),
    "zero_point": Key((BOOL,), doc="AWQ asymmetric zeros; branches with `false` are named under the card's table.",
                      default="true", formats=("awq",)),
    "double_quant": Key((BOOL,), doc="bitsandbytes `bnb_4bit_use_double_quant` (nested absmax).", default="true",
                        formats=("nf4", "fp4")),
    "type": Key((STR,), doc="The llama.cpp file type (`Q4_K_M`, `q4_0`...), kept as spelled in the card.",
                formats=("gguf", "ggml")),
    "r": Key((INT,), doc="LoRA rank. With `[architecture]` (the base model's) the adapter's size is predicted from "
             "`r` and `target_modules`, as a float32 `adapter_model.safetensors`.", formats=("lora",)),
    "alpha": Key((INT, FLOAT), doc="LoRA alpha (does not change the size).", formats=("lora",)),
    "dropout": Key((FLOAT,), doc="LoRA dropout (does not change the size).", formats=("lora",)),
    "target_modules": Key((LIST,), doc="LoRA target modules (strings).", default="every linear",
                          formats=("lora",)),
    "made_with": Key((STR,), doc="The tool that wrote the variant, a table column. For GPTQ, a value starting with "
                     "`GPTQModel` predicts GPTQModel's layout (no bias) instead of AutoGPTQ's."),
    "description": Key((STR,), doc="The variant's table cell.", default='""'),
    "size": Key((STR, INT), doc="The published size: `\"7.26 GB\"` (decimal units), `\"512 MiB\"` or a byte count.",
                default="predicted, marked `*`"),
    "ram": Key((STR, INT), doc="GGUF/GGML \"Max RAM required\", as `size`.", default="size + 2.50 GB",
               formats=("gguf", "ggml")),
    "dataset": Key((STR,), doc="Calibration dataset (GPTQ: the provenance table; AWQ: the `AWQ Dataset` column).",
                   formats=("gptq", "awq")),
    "seq_len": Key((INT,), doc="Calibration sequence length (GPTQ: the provenance table; AWQ: the `Seq Len` column).",
                   formats=("gptq", "awq")),
    "damp_percent": Key((FLOAT,), doc="GPTQ damping, in the provenance table and the packaged `quantize_config.json`.",
                        formats=("gptq",)),
    "source": Key((STR,), doc="The quantizer's output that `mcard package` packages: a folder, or the GGUF/GGML "
                  "file; a path under the path rule.", default="`--from DIR/<branch>/` or `DIR/<file>`"),
}
EVAL_INLINE_SPEC: Spec = {
    "dataset": Key((STR,), True, "The dataset's name."),
    "dataset_type": Key((STR,), doc="The dataset's Hub id in `model-index`.", default="`dataset`"),
    "metric": Key((STR,), True, "The metric's type (`acc`, `acc_norm`...)."),
    "value": Key((FLOAT,), True, "The value, as reported: a fraction or a percentage."),
    "metric_name": Key((STR,), doc="The metric's display name."),
    "task": Key((STR,), doc="The `model-index` task type.", default='"text-generation"'),
    "config": Key((STR,), doc="The dataset configuration."),
    "split": Key((STR,), doc="The dataset split."),
    "stderr": Key((FLOAT,), doc="Standard error, shown next to the value."),
    "shots": Key((INT,), doc="Number of few-shot examples."),
    "source_name": Key((STR,), doc="Who reported it (with `source_url`)."),
    "source_url": Key((STR,), doc="Where it was reported."),
    "variant": Key((STR,), doc="The variant (branch, or file) it was measured on; must name one of the entry's."),
}
EVAL_FILE_SPEC: Spec = {
    "path": Key((STR,), True, "An lm-evaluation-harness results JSON, v0.4 (`results[task][\"acc,none\"]`, "
                "`\"acc_stderr,none\"`, `\"n-shot\"`) or v0.3 (`results[task][\"acc\"]`); a path under the path rule."),
    "metrics": Key((LIST,), doc="The metrics to take (strings).", default='["acc"]'),
    "tasks": Key((LIST,), doc="The tasks to take (strings).", default="every task in the file"),
    "filter": Key((STR,), doc="The lm-evaluation-harness v0.4 filter (`acc,none`).", default='"none"'),
    "task": Key((STR,), doc="The `model-index` task type.", default='"text-generation"'),
    "source_name": Key((STR,), doc="Who reported it (with `source_url`)."),
    "source_url": Key((STR,), doc="Where it was reported."),
    "variant": Key((STR,), doc="The variant (branch, or file) it was measured on; must name one of the entry's."),
}
TABLE_SPEC: Spec = {
    "title": Key((STR,), True, "The table's heading."),
    "columns": Key((LIST,), True, "Column names (strings or numbers)."),
    "rows": Key((LIST,), True, "Rows: arrays of strings or numbers, as many cells as columns."),
    "caption": Key((STR,), doc="Text under the table."),
}


def check_keys(data: dict[str, Any], spec: Spec, where: str, file: Path) -> None:
    """Unknown keys (with the closest valid one), missing required keys, wrong types."""
    for key in data:
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(spec)})"
            raise UnusableInput(f"{_join(where, key)}: unknown key {key!r}{hint}", file)
    for key, rule in spec.items():
        if key not in data:
            if rule.required:
                raise UnusableInput(f"{where or 'top level'}: missing required key {key!r}", file)
            continue
        if not any(_is(k, data[key]) for k in rule.kinds):
            raise UnusableInput(
                f"{_join(where, key)}: expected {' or '.join(rule.kinds)}, found {kind_of(data[key])}", file
            )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def kind_of(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def list_of(value: list[Any], kind: str, where: str, file: Path) -> list[Any]:
    for i, item in enumerate(value):
        if not _is(kind, item):
            raise UnusableInput(f"{where}[{i}]: expected {kind}, found {kind_of(item)}", file)
    return value


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: str | int, where: str = "", file: str | Path | None = None) -> int:
    """``7260000000``, ``"7.26 GB"`` (decimal), ``"512 MiB"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UnusableInput(f"{where}: a size cannot be negative", file)
        return value
    found = _SIZE.match(str(value))
    if not found:
        raise UnusableInput(f"{where}: expected a size like \"7.26 GB\" or a byte count, found {value!r}", file)
    return int(round(float(found.group(1)) * _UNITS[found.group(2).lower()]))


# -- the reference (docs/registry.md is generated from it) ------------------------------------------------------

RULES = """\
One TOML file per published repo, `registry/NAME.toml`. Commented examples are in `registry/examples/`
(`EXAMPLE.toml`, a GPTQ repo with every key; `awq-example.toml`), outside `registry/*.toml` so that tools
that read every entry (`mcard plan registry/`) never pick them up; the tests render and check them.

**The path rule.** Files an entry names (`original_card`, `architecture.config`, `license_file`, a
variant's `source`, an evaluation's `path`) are relative to the entry and must resolve inside its folder,
or inside `--registry-root DIR` (an option of `card render`, `card check`, `sync`, `plan`, `package` and
`publish`); absolute paths, and `..` or symlinks leading out of it, are refused. Only regular files are
read, with a cap: an entry 4 MiB, a config 64 MiB, an original card or an evaluation file 16 MiB.

**Names.** Repo ids, branch names (git's ref-name rules) and file names are checked when the entry loads,
and may not contain the characters a shell treats specially (`` " ' ` $ ; & | < > ( ) { } ! # ``, spaces).

**Errors.** Every problem is exit 2 with the file and the key path: an unknown key is named with the
closest valid one (`variants[0].brnach: unknown key 'brnach' (did you mean 'branch'?)`), a missing
required key is named, a wrong type says what was expected, a value the format cannot represent says
what it can (the same check as `mcard size`), and a TOML syntax error reports `file:line:column`.
"""

ARCHITECTURE = """\
The base model's shape, used to predict the size of variants that have no recorded `size`: either
`config = "path/to/config.json"` (a path under the path rule) or the keys of a `config.json` inline, not
both. The loader fails early on a config whose sizes cannot be predicted (llama, mistral, qwen2 and gemma
families are modelled, GQA included)."""


@dataclass(frozen=True)
class KeyDoc:
    """One key as the reference shows it."""

    name: str
    types: str  # "string or table"
    required: str  # "yes", "" or the formats that require it
    default: str  # a TOML value in backticks, or words
    formats: str  # "" (every format) or the formats that use it, and whether others refuse it
    doc: str


@dataclass(frozen=True)
class SectionDoc:
    table: str  # "[model]", "[[variants]]"
    doc: str
    keys: list[KeyDoc] = field(default_factory=list)


@dataclass(frozen=True)
class ParamDoc:
    """A registry key whose values a format checks (its ``PARAMS``, the same check as ``mcard size``)."""

    format: str
    key: str
    valid: str
    changes_size: bool


@dataclass(frozen=True)
class SchemaReference:
    rules: str
    sections: list[SectionDoc]
    params: list[ParamDoc]


def _is_toml_value(text: str) -> bool:
    from .jsonio import tomllib  # tomllib, or tomli on Python 3.10

    try:
        tomllib.loads(f"x = {text}")
    except tomllib.TOMLDecodeError:
        return False
    return True


def _key_docs(spec: Spec, extra: dict[str, str] | None = None, required: dict[str, list[str]] | None = None,
              only: dict[str, tuple[str, ...]] | None = None) -> list[KeyDoc]:
    out = []
    for name, rule in spec.items():
        needed = "yes" if rule.required else ", ".join((required or {}).get(name, []))
        used = ", ".join(rule.formats)
        if only and name in only:
            used = f"{', '.join(only[name])} only (refused on other formats)"
        default = f"`{rule.default}`" if rule.default and _is_toml_value(rule.default) else rule.default
        doc = rule.doc + (f" {extra[name]}" if extra and name in extra else "")
        types = " or ".join(kind.split(" ", 1)[1] for kind in rule.kinds)
        out.append(KeyDoc(name, types, needed, default, used, doc))
    return out


def reference() -> SchemaReference:
    """The whole schema, for the reference: every table and key with its type, default, formats and meaning,
    and the values each format accepts for its parameters (from the format's ``PARAMS``).

    Example:
        >>> from mcard.registry_schema import reference
        >>> [s.table for s in reference().sections][:2]
        ['top level', '[model]']
    """
    from . import prompts
    from .formats import params_of
    from .formats._params import KINDS
    from .registry import FAMILIES, FORMAT_ONLY_KEYS, REQUIRED_KEYS

    required: dict[str, list[str]] = {}
    for fmt, keys in REQUIRED_KEYS.items():
        for key in keys:
            required.setdefault(key, []).append(fmt)
    families = ", ".join(f"`{fmt}` ({family})" for fmt, family in FAMILIES.items())
    sections = [
        SectionDoc("top level", "The tables of an entry.", _key_docs(TOP_SPEC)),
        SectionDoc("[model]", "The published repo and the model: the card's front matter and heading.",
                   _key_docs(MODEL_SPEC, {"prompt": f"Names: {', '.join(f'`{n}`' for n in prompts.LIBRARY)}."})),
        SectionDoc("[model.prompt]", "`prompt` as a table: a template of your own.", _key_docs(PROMPT_SPEC)),
        SectionDoc("[[model.links]]", "One link of \"Repositories available\".", _key_docs(LINK_SPEC)),
        SectionDoc("[architecture]", ARCHITECTURE),
        SectionDoc("[[variants]]", "One variant: a branch (GPTQ, AWQ, bitsandbytes, LoRA, fp16/bf16/fp32) or a "
                   "file (GGUF, GGML). Keys that a format does not use are accepted and ignored unless said "
                   "otherwise; the values of format parameters are checked by the format (see below).",
                   _key_docs(VARIANT_SPEC, {"format": f"Formats (family): {families}."}, required,
                             FORMAT_ONLY_KEYS)),
        SectionDoc("[[evaluations]] (inline)", "One result given in the entry.", _key_docs(EVAL_INLINE_SPEC)),
        SectionDoc("[[evaluations]] (from a file)", "Results read from an lm-evaluation-harness file: a table "
                   "with `path`.", _key_docs(EVAL_FILE_SPEC)),
        SectionDoc("[[tables]]", "Reported figures shown as Markdown tables, not in `model-index`.",
                   _key_docs(TABLE_SPEC)),
    ]
    params = []
    for fmt in FAMILIES:
        for key, param in params_of(fmt).items():
            if key in VARIANT_SPEC:
                params.append(ParamDoc(fmt, key, param.expected or KINDS[param.kind], param.sizes))
    return SchemaReference(RULES, sections, params)
