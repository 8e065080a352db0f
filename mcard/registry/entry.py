"""The registry: one TOML file per published repo, the source of truth for its card.

The schema (every table and key, its type, default and meaning) is stated once, in
:mod:`mcard.registry.schema`; ``docs/registry.md`` is generated from it. Commented examples:
``registry/examples/EXAMPLE.toml`` and ``registry/examples/awq-example.toml``. Every error is an
:class:`UnusableInput` naming the file and the key path.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..card.evals import EvalEntry, load_lm_eval
from ..core.errors import UnusableInput
from ..core.jsonio import load_json_object, load_toml
from ..formats import BadParam, FormatSpec, aliases, by_alias, check_params, params_of
from ..hub.refs import validate_ref_name, validate_repo_file, validate_repo_id
from .schema import (
    EVAL_FILE_SPEC,
    EVAL_INLINE_SPEC,
    LINK_SPEC,
    LIST,
    MODEL_SPEC,
    PROMPT_SPEC,
    STR,
    TABLE,
    TABLE_SPEC,
    TOP_SPEC,
    VARIANT_SPEC,
    check_keys,
    kind_of,
    list_of,
    parse_size,
)

# What each format takes (its aliases, required and own keys, parameters, family) is its spec's
# (mcard.formats.<name>/spec.py); the values of format parameters (bits, group_size, version, type,
# r...) are checked by the format's own PARAMS (mcard.formats.check_params), as `mcard size` checks them.


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
    license_file: str | None = None  # the license text to package as LICENSE, relative to the entry


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
    source: str | None = None  # the quantizer's output (folder or file) to package, relative to the entry

    @property
    def spec(self) -> FormatSpec:
        """The spec of the variant's format (``nf4`` -> bitsandbytes')."""
        return by_alias(self.format)

    @property
    def key(self) -> str:
        """The name of its row: the branch, or the file for formats whose variants are files (GGUF/GGML)."""
        return self.file if self.spec.files_are_variants and self.file else self.branch

    def size_params(self) -> dict[str, Any]:
        """Keyword arguments for :func:`mcard.core.size.predict_size` (the format's spec says which)."""
        return self.spec.size_params(self) or {}


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
    registry_root: Path | None = None  # --registry-root: files the entry names may lie anywhere inside it

    def file(self, value: str, key: str) -> Path:
        """A path the entry names (``license_file``, a variant's ``source``), by :func:`entry_file`'s rule."""
        return entry_file(value, key, self.path, self.registry_root)


def _cell(value: Any, where: str, file: Path) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (str, int, float)):
        return str(value)
    raise UnusableInput(f"{where}: a table cell must be a string or a number, found {kind_of(value)}", file)


def entry_file(value: str, key: str, entry_path: Path, root: str | Path | None = None) -> Path:
    """A file named in an entry (``original_card``, ``architecture.config``, an evaluation ``path``,
    ``license_file``, a variant's ``source``).

    It is relative to the entry's folder and must resolve (symlinks followed)
    inside that folder, or inside ``root`` (``--registry-root``) when given;
    anything else is refused, so an entry cannot pull ``/etc/passwd`` or
    ``/proc/self/environ`` into a card.
    """
    base = entry_path.parent
    allowed = Path(root) if root is not None else base
    if not value or os.path.isabs(value) or value.startswith("~") or "\0" in value:
        raise UnusableInput(f"{key}: {value!r} must be a relative path (from the entry's folder)", entry_path)
    real, real_root = os.path.realpath(base / value), os.path.realpath(allowed)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnusableInput(f"{key}: {value!r} resolves outside {allowed} (paths in an entry stay inside its "
                            "folder; pass --registry-root to allow a wider folder)", entry_path)
    return Path(real)


def load_entry(path: str | Path, registry_root: str | Path | None = None) -> Entry:
    """Load and validate a registry entry. Raises :class:`UnusableInput` on any problem.

    Files the entry names resolve inside its folder, or inside ``registry_root`` (see :func:`entry_file`).
    """
    path = Path(path)
    data = load_toml(path)
    check_keys(data, TOP_SPEC, "", path)

    m = data["model"]
    check_keys(m, MODEL_SPEC, "model", path)
    prompt = m.get("prompt")
    if isinstance(prompt, dict):
        check_keys(prompt, PROMPT_SPEC, "model.prompt", path)
        if "{prompt}" not in prompt["text"]:
            raise UnusableInput("model.prompt.text: has no {prompt} placeholder", path)
    elif isinstance(prompt, str):  # a library name, or a literal template with {prompt}
        from ..card import prompts

        prompts.resolve(prompt, f"{path}: model.prompt")
    links = list_of(m.get("links", []), TABLE, "model.links", path)
    for i, link in enumerate(links):
        check_keys(link, LINK_SPEC, f"model.links[{i}]", path)
    _named(validate_repo_id, m["repo"], "model.repo", path)
    original = None
    if "original_card" in m:
        original = entry_file(m["original_card"], "model.original_card", path, registry_root)
        if not original.is_file():
            raise UnusableInput(f"model.original_card: no such file {m['original_card']!r}", path)
    if isinstance(m.get("license_file"), str):  # packaged as LICENSE and published: the same rule
        entry_file(m["license_file"], "model.license_file", path, registry_root)
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
        tags=list(list_of(m.get("tags", []), STR, "model.tags", path)),
        pipeline_tag=m.get("pipeline_tag", "text-generation"),
        inference=m.get("inference", False),
        language=list(list_of(m.get("language", []), STR, "model.language", path)),
        notes=list(list_of(m.get("notes", []), STR, "model.notes", path)),
        links=[dict(link) for link in links],
        license_file=m.get("license_file"),
    )

    arch, arch_source = None, None
    if "architecture" in data:
        a = data["architecture"]
        if "config" in a:
            if len(a) != 1:
                others = ", ".join(sorted(k for k in a if k != "config"))
                raise UnusableInput(f"architecture: give either config = PATH or inline keys, not both ({others})", path)
            if not isinstance(a["config"], str):
                raise UnusableInput(f"architecture.config: expected a string, found {kind_of(a['config'])}", path)
            cfg_path = entry_file(a["config"], "architecture.config", path, registry_root)
            arch, arch_source = load_json_object(cfg_path), str(cfg_path)
        else:
            arch, arch_source = dict(a), f"{path}: architecture"
        from ..core.arch import ModelShape

        ModelShape.from_config(arch, arch_source)  # fail early on a config that cannot predict sizes

    variants = [_variant(v, i, path, registry_root)
                for i, v in enumerate(list_of(data["variants"], TABLE, "variants", path))]
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
    for i, e in enumerate(list_of(data.get("evaluations", []), TABLE, "evaluations", path)):
        evaluations.extend(_evaluation(e, f"evaluations[{i}]", path, set(seen), registry_root))

    tables = []
    for i, t in enumerate(list_of(data.get("tables", []), TABLE, "tables", path)):
        where = f"tables[{i}]"
        check_keys(t, TABLE_SPEC, where, path)
        columns = [_cell(c, f"{where}.columns", path) for c in t["columns"]]
        rows = []
        for j, row in enumerate(list_of(t["rows"], LIST, f"{where}.rows", path)):
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
        registry_root=Path(registry_root) if registry_root is not None else None,
    )


def _named(check: Any, value: str, key: str, path: Path) -> None:
    """A Hub name (repo, branch, file) checked at load time: the error names the key and the entry."""
    try:
        check(value)
    except UnusableInput as exc:
        raise UnusableInput(f"{key}: {exc.message}", path) from None


@functools.cache
def _key_owners() -> dict[str, list[str]]:
    """Each format-only registry key -> the format aliases that take it (asked once per key of every variant)."""
    owners: dict[str, list[str]] = {}
    for alias, spec in aliases().items():
        for key in spec.own_keys:
            owners.setdefault(key, []).append(alias)
    return owners


def _variant(v: dict[str, Any], i: int, path: Path, registry_root: str | Path | None = None) -> RegistryVariant:
    where = f"variants[{i}]"
    check_keys(v, VARIANT_SPEC, where, path)
    fmt = v["format"].lower()
    known = aliases()
    if fmt not in known:
        close = difflib.get_close_matches(fmt, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnusableInput(f"{where}.format: unknown format {v['format']!r}{hint}; known: {', '.join(known)}", path)
    spec = known[fmt]
    assert spec.card is not None  # a format with aliases has a card
    for key in spec.required_keys:
        if key not in v:
            raise UnusableInput(f"{where}: missing required key {key!r} for format {fmt}", path)
    key_owners = _key_owners()
    for key in v:
        owners = key_owners.get(key)
        if owners and key not in spec.own_keys:
            raise UnusableInput(f"{where}.{key}: only for format {' or '.join(owners)}, not {fmt}", path)
    checked = _format_params(fmt, v, where, path)
    version = checked.get("version", spec.registry_defaults.get("version"))
    if "branch" in v:
        _named(validate_ref_name, v["branch"], f"{where}.branch", path)
    if "file" in v:
        _named(validate_repo_file, v["file"], f"{where}.file", path)
    if isinstance(v.get("source"), str):  # the quantizer's output (packaged and published): the same path rule
        entry_file(v["source"], f"{where}.source", path, registry_root)
    out = RegistryVariant(
        format=fmt,
        family=spec.card.family,
        branch=v.get("branch", "main"),
        file=v.get("file"),
        bits=v.get("bits"),
        group_size=v.get("group_size"),
        desc_act=v.get("desc_act", False),
        sym=v.get("sym", True),
        checkpoint_format=checked.get("checkpoint_format", "gptq"),
        version=version,
        zero_point=v.get("zero_point", True),
        double_quant=v.get("double_quant", True),
        type=v.get("type"),  # checked above; kept as spelled (file names and cards use q4_K_M)
        r=v.get("r"),
        alpha=v.get("alpha"),
        dropout=v.get("dropout"),
        target_modules=list(list_of(v.get("target_modules", []), STR, f"{where}.target_modules", path)),
        made_with=v.get("made_with"),
        description=v.get("description", ""),
        size=parse_size(v["size"], f"{where}.size", path) if "size" in v else None,
        ram=parse_size(v["ram"], f"{where}.ram", path) if "ram" in v else None,
        dataset=v.get("dataset"),
        seq_len=v.get("seq_len"),
        damp_percent=v.get("damp_percent"),
        source=v.get("source"),
    )
    if out.bits is None and out.type:
        found = re.search(r"(\d+)", out.type)
        out.bits = int(found.group(1)) if found else None
    return out


def _format_params(fmt: str, v: dict[str, Any], where: str, path: Path) -> dict[str, Any]:
    """The variant's format parameters, checked and normalized by the format module (as `mcard size` does)."""
    given = {key: v[key] for key in params_of(fmt) if key in v}
    if not given:
        return {}
    try:
        return check_params(fmt, given)
    except BadParam as exc:
        raise UnusableInput(f"{where}.{exc.key}: {exc.problem}", path) from None


def _evaluation(e: dict[str, Any], where: str, path: Path, variant_keys: set[str],
                registry_root: str | Path | None = None) -> list[EvalEntry]:
    if "variant" in e and isinstance(e["variant"], str) and e["variant"] not in variant_keys:
        close = difflib.get_close_matches(e["variant"], sorted(variant_keys), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnusableInput(f"{where}.variant: no variant {e['variant']!r}{hint}", path)
    if "path" in e:
        check_keys(e, EVAL_FILE_SPEC, where, path)
        metrics = list_of(e.get("metrics", ["acc"]), STR, f"{where}.metrics", path)
        tasks = list_of(e["tasks"], STR, f"{where}.tasks", path) if "tasks" in e else None
        return load_lm_eval(
            entry_file(e["path"], f"{where}.path", path, registry_root),
            metrics=list(metrics),
            tasks=list(tasks) if tasks is not None else None,
            filter_name=e.get("filter", "none"),
            source_name=e.get("source_name"),
            source_url=e.get("source_url"),
            variant=e.get("variant"),
            task_type=e.get("task", "text-generation"),
        )
    check_keys(e, EVAL_INLINE_SPEC, where, path)
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
