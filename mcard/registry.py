"""The registry: one TOML file per published repo, the source of truth for its card.

Schema (see ``registry/examples/EXAMPLE.toml`` and ``registry/examples/awq-example.toml``
for commented examples)::

    [model]          repo, name, license (required); creator, base_model,
                     base_model_name, description, prompt, system_message,
                     original_card, quantized_by, tags, pipeline_tag, inference,
                     language, notes, links
    [architecture]   config = "path/to/config.json", or config.json keys inline
    [[variants]]     format (required); branch / file; bits, group_size, desc_act,
                     sym, checkpoint_format, version, zero_point, double_quant,
                     type, r, alpha, dropout, target_modules, made_with,
                     description, size, ram, dataset, seq_len, damp_percent
    [[evaluations]]  dataset, metric, value (inline) or path (lm-eval JSON)
    [[tables]]       title, columns, rows, caption

Every error is an :class:`UnusableInput` naming the file and the key path.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnusableInput
from .evals import EvalEntry, load_lm_eval
from .jsonio import load_json_object, load_toml

# format -> family (one template per family)
FAMILIES: dict[str, str] = {
    "gptq": "gptq",
    "awq": "awq",
    "nf4": "bnb",
    "fp4": "bnb",
    "gguf": "gguf",
    "ggml": "gguf",
    "lora": "lora",
    "fp16": "base",
    "bf16": "base",
    "fp32": "base",
}
BRANCH_FAMILIES = ("gptq", "awq", "bnb", "lora", "base")  # a variant is a branch; gguf/ggml: a file

# Keys that only some formats take (others refuse them), and the keys each format requires.
FORMAT_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "version": ("awq",),
    "zero_point": ("awq",),
    "double_quant": ("nf4", "fp4"),
}
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "gptq": ("bits", "group_size"),
    "awq": ("bits", "group_size"),
    "gguf": ("file", "type"),
    "ggml": ("file", "type"),
}
AWQ_VERSIONS = ("gemm", "gemv")  # as mcard.formats.awq.VERSIONS
AWQ_BITS = 4  # AutoAWQ, vLLM and transformers load 4-bit AWQ only

_STR, _INT, _FLOAT, _BOOL, _LIST, _TABLE = "a string", "an integer", "a number", "a boolean", "an array", "a table"


def _is(kind: str, value: Any) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _LIST:
        return isinstance(value, list)
    if kind == _TABLE:
        return isinstance(value, dict)
    raise AssertionError(kind)


# key -> (accepted kinds, required)
TOP_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "model": ((_TABLE,), True),
    "architecture": ((_TABLE,), False),
    "variants": ((_LIST,), True),
    "evaluations": ((_LIST,), False),
    "tables": ((_LIST,), False),
}
MODEL_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "repo": ((_STR,), True),
    "name": ((_STR,), True),
    "license": ((_STR,), True),
    "creator": ((_STR,), False),
    "base_model": ((_STR,), False),
    "base_model_name": ((_STR,), False),
    "description": ((_STR,), False),
    "prompt": ((_STR, _TABLE), False),
    "system_message": ((_STR,), False),
    "original_card": ((_STR,), False),
    "quantized_by": ((_STR,), False),
    "tags": ((_LIST,), False),
    "pipeline_tag": ((_STR,), False),
    "inference": ((_BOOL,), False),
    "language": ((_LIST,), False),
    "notes": ((_LIST,), False),
    "links": ((_LIST,), False),
}
PROMPT_SPEC = {"name": ((_STR,), True), "text": ((_STR,), True)}
LINK_SPEC = {"text": ((_STR,), True), "url": ((_STR,), True)}
VARIANT_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "format": ((_STR,), True),
    "branch": ((_STR,), False),
    "file": ((_STR,), False),
    "bits": ((_INT,), False),
    "group_size": ((_INT,), False),
    "desc_act": ((_BOOL,), False),
    "sym": ((_BOOL,), False),
    "checkpoint_format": ((_STR,), False),
    "version": ((_STR,), False),
    "zero_point": ((_BOOL,), False),
    "double_quant": ((_BOOL,), False),
    "type": ((_STR,), False),
    "r": ((_INT,), False),
    "alpha": ((_INT, _FLOAT), False),
    "dropout": ((_FLOAT,), False),
    "target_modules": ((_LIST,), False),
    "made_with": ((_STR,), False),
    "description": ((_STR,), False),
    "size": ((_STR, _INT), False),
    "ram": ((_STR, _INT), False),
    "dataset": ((_STR,), False),
    "seq_len": ((_INT,), False),
    "damp_percent": ((_FLOAT,), False),
}
EVAL_INLINE_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "dataset": ((_STR,), True),
    "dataset_type": ((_STR,), False),
    "metric": ((_STR,), True),
    "value": ((_FLOAT,), True),
    "metric_name": ((_STR,), False),
    "task": ((_STR,), False),
    "config": ((_STR,), False),
    "split": ((_STR,), False),
    "stderr": ((_FLOAT,), False),
    "shots": ((_INT,), False),
    "source_name": ((_STR,), False),
    "source_url": ((_STR,), False),
    "variant": ((_STR,), False),
}
EVAL_FILE_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "path": ((_STR,), True),
    "metrics": ((_LIST,), False),
    "tasks": ((_LIST,), False),
    "filter": ((_STR,), False),
    "task": ((_STR,), False),
    "source_name": ((_STR,), False),
    "source_url": ((_STR,), False),
    "variant": ((_STR,), False),
}
TABLE_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "title": ((_STR,), True),
    "columns": ((_LIST,), True),
    "rows": ((_LIST,), True),
    "caption": ((_STR,), False),
}


def _check(data: dict[str, Any], spec: dict[str, tuple[tuple[str, ...], bool]], where: str, file: Path) -> None:
    """Unknown keys (with the closest valid one), missing required keys, wrong types."""
    for key in data:
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(spec)})"
            raise UnusableInput(f"{_join(where, key)}: unknown key {key!r}{hint}", file)
    for key, (kinds, required) in spec.items():
        if key not in data:
            if required:
                raise UnusableInput(f"{where or 'top level'}: missing required key {key!r}", file)
            continue
        if not any(_is(k, data[key]) for k in kinds):
            raise UnusableInput(
                f"{_join(where, key)}: expected {' or '.join(kinds)}, found {_kind(data[key])}", file
            )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _list_of(value: list[Any], kind: str, where: str, file: Path) -> list[Any]:
    for i, item in enumerate(value):
        if not _is(kind, item):
            raise UnusableInput(f"{where}[{i}]: expected {kind}, found {_kind(item)}", file)
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


# -- the loaded entry -----------------------------------------------------------


@dataclass
class ModelInfo:
    repo: str
    name: str
    license: str
    creator: str | None = None
    base_model: str | None = None
    base_model_name: str | None = None
    description: str | None = None
    prompt: dict[str, str] | str | None = None  # library name, or {"name", "text"}
    system_message: str | None = None
    original_card: Path | None = None
    quantized_by: str | None = None
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str = "text-generation"
    inference: bool = False
    language: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)


@dataclass
class RegistryVariant:
    format: str
    family: str
    branch: str = "main"
    file: str | None = None
    bits: int | None = None
    group_size: int | None = None
    desc_act: bool = False
    sym: bool = True
    checkpoint_format: str = "gptq"
    version: str | None = None  # AWQ: gemm (default) or gemv
    zero_point: bool = True  # AWQ
    double_quant: bool = True  # bitsandbytes nf4/fp4
    type: str | None = None
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: list[str] = field(default_factory=list)
    made_with: str | None = None
    description: str = ""
    size: int | None = None  # bytes, as published
    ram: int | None = None  # bytes, GGUF/GGML
    dataset: str | None = None
    seq_len: int | None = None
    damp_percent: float | None = None

    @property
    def key(self) -> str:
        """The name of its row: the branch, or the file for GGUF/GGML."""
        return self.file if self.family == "gguf" and self.file else self.branch

    def size_params(self) -> dict[str, Any]:
        """Keyword arguments for :func:`mcard.size.predict_size`."""
        if self.format == "gptq":
            return {"bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act}
        if self.format == "awq":
            return {"bits": self.bits, "group_size": self.group_size, "version": self.version or AWQ_VERSIONS[0]}
        if self.format in ("nf4", "fp4"):  # the quant type is implied by the format name
            return {"double_quant": self.double_quant}
        if self.format == "lora":  # lora_alpha and dropout do not change the file
            return {"r": self.r, "target_modules": list(self.target_modules) or None}
        if self.format in ("gguf", "ggml"):
            return {"type": self.type}
        return {}


@dataclass
class TableSpec:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Entry:
    path: Path
    model: ModelInfo
    variants: list[RegistryVariant]
    family: str
    architecture: dict[str, Any] | None = None
    architecture_source: str | None = None
    evaluations: list[EvalEntry] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)


def _cell(value: Any, where: str, file: Path) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (str, int, float)):
        return str(value)
    raise UnusableInput(f"{where}: a table cell must be a string or a number, found {_kind(value)}", file)


def load_entry(path: str | Path) -> Entry:
    """Load and validate a registry entry. Raises :class:`UnusableInput` on any problem."""
    path = Path(path)
    data = load_toml(path)
    _check(data, TOP_SPEC, "", path)
    base_dir = path.parent

    m = data["model"]
    _check(m, MODEL_SPEC, "model", path)
    prompt = m.get("prompt")
    if isinstance(prompt, dict):
        _check(prompt, PROMPT_SPEC, "model.prompt", path)
        if "{prompt}" not in prompt["text"]:
            raise UnusableInput("model.prompt.text: has no {prompt} placeholder", path)
    elif isinstance(prompt, str):
        from . import prompts

        prompts.get(prompt, f"{path}: model.prompt")
    links = _list_of(m.get("links", []), _TABLE, "model.links", path)
    for i, link in enumerate(links):
        _check(link, LINK_SPEC, f"model.links[{i}]", path)
    original = None
    if "original_card" in m:
        original = (base_dir / m["original_card"]).resolve()
        if not original.is_file():
            raise UnusableInput(f"model.original_card: no such file {m['original_card']!r}", path)
    model = ModelInfo(
        repo=m["repo"],
        name=m["name"],
        license=m["license"],
        creator=m.get("creator"),
        base_model=m.get("base_model"),
        base_model_name=m.get("base_model_name"),
        description=m.get("description"),
        prompt=prompt,
        system_message=m.get("system_message"),
        original_card=original,
        quantized_by=m.get("quantized_by"),
        tags=list(_list_of(m.get("tags", []), _STR, "model.tags", path)),
        pipeline_tag=m.get("pipeline_tag", "text-generation"),
        inference=m.get("inference", False),
        language=list(_list_of(m.get("language", []), _STR, "model.language", path)),
        notes=list(_list_of(m.get("notes", []), _STR, "model.notes", path)),
        links=[dict(link) for link in links],
    )

    arch, arch_source = None, None
    if "architecture" in data:
        a = data["architecture"]
        if "config" in a:
            if len(a) != 1:
                others = ", ".join(sorted(k for k in a if k != "config"))
                raise UnusableInput(f"architecture: give either config = PATH or inline keys, not both ({others})", path)
            if not isinstance(a["config"], str):
                raise UnusableInput(f"architecture.config: expected a string, found {_kind(a['config'])}", path)
            cfg_path = base_dir / a["config"]
            arch, arch_source = load_json_object(cfg_path), str(cfg_path)
        else:
            arch, arch_source = dict(a), f"{path}: architecture"
        from .arch import ModelShape

        ModelShape.from_config(arch, arch_source)  # fail early on a config that cannot predict sizes

    variants = [_variant(v, i, path) for i, v in enumerate(_list_of(data["variants"], _TABLE, "variants", path))]
    if not variants:
        raise UnusableInput("variants: at least one variant is required", path)
    families = sorted({v.family for v in variants})
    if len(families) > 1:
        raise UnusableInput(f"variants: all variants of a repo must be one format family, found {', '.join(families)}", path)
    seen: dict[str, int] = {}
    for i, v in enumerate(variants):
        if v.key in seen:
            raise UnusableInput(f"variants[{i}]: {v.key!r} is already variants[{seen[v.key]}]", path)
        seen[v.key] = i

    evaluations: list[EvalEntry] = []
    for i, e in enumerate(_list_of(data.get("evaluations", []), _TABLE, "evaluations", path)):
        evaluations.extend(_evaluation(e, f"evaluations[{i}]", path, set(seen)))

    tables = []
    for i, t in enumerate(_list_of(data.get("tables", []), _TABLE, "tables", path)):
        where = f"tables[{i}]"
        _check(t, TABLE_SPEC, where, path)
        columns = [_cell(c, f"{where}.columns", path) for c in t["columns"]]
        rows = []
        for j, row in enumerate(_list_of(t["rows"], _LIST, f"{where}.rows", path)):
            if len(row) != len(columns):
                raise UnusableInput(f"{where}.rows[{j}]: {len(row)} cells but {len(columns)} columns", path)
            rows.append([_cell(c, f"{where}.rows[{j}]", path) for c in row])
        tables.append(TableSpec(t["title"], columns, rows, t.get("caption")))

    return Entry(
        path=path,
        model=model,
        variants=variants,
        family=families[0],
        architecture=arch,
        architecture_source=arch_source,
        evaluations=sorted(evaluations, key=EvalEntry.sort_key),
        tables=tables,
    )


def _variant(v: dict[str, Any], i: int, path: Path) -> RegistryVariant:
    where = f"variants[{i}]"
    _check(v, VARIANT_SPEC, where, path)
    fmt = v["format"].lower()
    if fmt not in FAMILIES:
        close = difflib.get_close_matches(fmt, list(FAMILIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnusableInput(f"{where}.format: unknown format {v['format']!r}{hint}; known: {', '.join(FAMILIES)}", path)
    family = FAMILIES[fmt]
    for key in REQUIRED_KEYS.get(fmt, ()):
        if key not in v:
            raise UnusableInput(f"{where}: missing required key {key!r} for format {fmt}", path)
    for key, fmts in FORMAT_ONLY_KEYS.items():
        if key in v and fmt not in fmts:
            raise UnusableInput(f"{where}.{key}: only for format {' or '.join(fmts)}, not {fmt}", path)
    version = None
    if fmt == "awq":
        version = str(v.get("version", AWQ_VERSIONS[0])).lower()
        if version not in AWQ_VERSIONS:
            close = difflib.get_close_matches(version, list(AWQ_VERSIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnusableInput(
                f"{where}.version: unknown AWQ version {v['version']!r}{hint}; known: {', '.join(AWQ_VERSIONS)}", path)
        if v["bits"] != AWQ_BITS:
            raise UnusableInput(f"{where}.bits: AWQ is {AWQ_BITS}-bit only, found {v['bits']}", path)
    out = RegistryVariant(
        format=fmt,
        family=family,
        branch=v.get("branch", "main"),
        file=v.get("file"),
        bits=v.get("bits"),
        group_size=v.get("group_size"),
        desc_act=v.get("desc_act", False),
        sym=v.get("sym", True),
        checkpoint_format=v.get("checkpoint_format", "gptq"),
        version=version,
        zero_point=v.get("zero_point", True),
        double_quant=v.get("double_quant", True),
        type=v.get("type"),
        r=v.get("r"),
        alpha=v.get("alpha"),
        dropout=v.get("dropout"),
        target_modules=list(_list_of(v.get("target_modules", []), _STR, f"{where}.target_modules", path)),
        made_with=v.get("made_with"),
        description=v.get("description", ""),
        size=parse_size(v["size"], f"{where}.size", path) if "size" in v else None,
        ram=parse_size(v["ram"], f"{where}.ram", path) if "ram" in v else None,
        dataset=v.get("dataset"),
        seq_len=v.get("seq_len"),
        damp_percent=v.get("damp_percent"),
    )
    if out.bits is None and out.type:
        found = re.search(r"(\d+)", out.type)
        out.bits = int(found.group(1)) if found else None
    if out.r is not None and out.r < 1:
        raise UnusableInput(f"{where}.r: the LoRA rank must be at least 1, found {out.r}", path)
    if out.damp_percent is not None and not 0 < out.damp_percent < 1:
        raise UnusableInput(f"{where}.damp_percent: must be between 0 and 1, found {out.damp_percent}", path)
    return out


def _evaluation(e: dict[str, Any], where: str, path: Path, variant_keys: set[str]) -> list[EvalEntry]:
    if "variant" in e and isinstance(e["variant"], str) and e["variant"] not in variant_keys:
        close = difflib.get_close_matches(e["variant"], sorted(variant_keys), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnusableInput(f"{where}.variant: no variant {e['variant']!r}{hint}", path)
    if "path" in e:
        _check(e, EVAL_FILE_SPEC, where, path)
        metrics = _list_of(e.get("metrics", ["acc"]), _STR, f"{where}.metrics", path)
        tasks = _list_of(e["tasks"], _STR, f"{where}.tasks", path) if "tasks" in e else None
        return load_lm_eval(
            path.parent / e["path"],
            metrics=list(metrics),
            tasks=list(tasks) if tasks is not None else None,
            filter_name=e.get("filter", "none"),
            source_name=e.get("source_name"),
            source_url=e.get("source_url"),
            variant=e.get("variant"),
            task_type=e.get("task", "text-generation"),
        )
    _check(e, EVAL_INLINE_SPEC, where, path)
    return [
        EvalEntry(
            dataset_name=e["dataset"],
            dataset_type=e.get("dataset_type", e["dataset"]),
            metric_type=e["metric"],
            value=e["value"],
            task_type=e.get("task", "text-generation"),
            metric_name=e.get("metric_name"),
            dataset_config=e.get("config"),
            dataset_split=e.get("split"),
            stderr=e.get("stderr"),
            shots=e.get("shots"),
            source_name=e.get("source_name"),
            source_url=e.get("source_url"),
            variant=e.get("variant"),
        )
    ]
