"""``mcard card check``: check a rendered (or hand-edited) model card.

Front matter and required metadata, the ``model-index`` round trip through
``huggingface_hub``'s ``EvalResult`` and, with a registry entry, every
variant's provided-files row and size (as :mod:`mcard.card.render` would render it).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import formats
from ..core.errors import UnusableInput
from ..core.report import FileEntry, Report
from ..core.units import UNITS, format_size
from ..core.untrusted import MAX_TEXT_BYTES, load_yaml, read_text
from ..registry.entry import Entry, load_entry
from .evals import format_value
from .render import eval_result
from .rows import expected_size


def quantized_tags() -> set[str]:
    """Tags that mark a card of quantized weights or an adapter: the aliases and card tags of such formats."""
    out: set[str] = set()
    for s in formats.specs():
        if s.card is not None and s.card.quantized:
            out.update(s.aliases)
            out.update(t for t in s.card.tags if not t.endswith("-bit"))
    return out


# -- Markdown tables and size cells ---------------------------------------------------


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.strip().replace("\\|", "|") for c in cells]


_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table in Markdown text: (header, rows). Code blocks are skipped."""
    lines = text.splitlines()
    tables, i, fence = [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fence = not fence
            i += 1
            continue
        if not fence and "|" in line and i + 1 < len(lines) and _SEP.match(lines[i + 1]):
            header = _split_row(line)
            rows = []
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_split_row(lines[i]))
                i += 1
            tables.append((header, rows))
            continue
        i += 1
    return tables


def _clean_key(cell: str) -> str:
    cell = cell.strip().strip("`*")
    link = re.match(r"^\[([^\]]+)\]\([^)]*\)$", cell)
    return link.group(1).strip("`") if link else cell


_SIZE_CELL = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(" + "|".join(UNITS) + r")\*?\s*$")


def parse_size_cell(cell: str) -> tuple[float, str] | None:
    """``"7.26 GB"`` -> (7.26, "GB"); ``"979.06 kB*"`` -> (979.06, "kB"); None when not a size."""
    found = _SIZE_CELL.match(cell)
    return (float(found.group(1)), found.group(2)) if found else None


# -- front matter and model-index ----------------------------------------------------


MAX_FRONT_MATTER = 1024 * 1024  # bytes of YAML metadata
MAX_META_NODES = 20_000  # YAML nodes in it
MAX_META_LIST = 2000  # items of any one list (tags, languages, results): huggingface_hub is quadratic in them


def _front_matter(text: str, where: str | Path = "front matter") -> dict[str, Any] | None:
    """The card's YAML metadata, parsed within the limits above (:func:`mcard.core.untrusted.load_yaml`)."""
    if not text.startswith("---"):
        return None
    found = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not found:
        return None
    if len(found.group(1)) > MAX_FRONT_MATTER:
        raise UnusableInput(f"the front matter is longer than {MAX_FRONT_MATTER} characters; refused", where)
    data = load_yaml(found.group(1), where, max_nodes=MAX_META_NODES)
    _check_lists(data, where)
    return data if isinstance(data, dict) else None


def _check_lists(value: Any, where: str | Path) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if len(item) > MAX_META_LIST:
                raise UnusableInput(f"a list of {len(item)} items in the front matter (limit {MAX_META_LIST}); "
                                    "refused", where)
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def _norm_index(value: Any) -> Any:
    """model-index with the results list made order-insensitive."""
    import json

    if not isinstance(value, list):
        return value
    out = []
    for model in value:
        if isinstance(model, dict) and isinstance(model.get("results"), list):
            model = {**model, "results": sorted(json.dumps(r, sort_keys=True) for r in model["results"])}
        out.append(model)
    return out


def _eval_keys(results: list[Any]) -> set[tuple[str, str, str, str]]:
    return {(r.dataset_type, r.dataset_config or "", r.metric_type, format_value(r.metric_value)) for r in results}


# -- checking ------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_hub_logging() -> Iterator[None]:
    """Keep huggingface_hub's warnings (e.g. "Repo card metadata block was not found") off the output."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)



def check_card(card_path: str | Path, registry_path: str | Path | None = None,
               registry_root: str | Path | None = None) -> Report:
    """Check a rendered (or hand-edited) card: metadata, model-index round trip, and with an
    entry, every variant's row and size. Returns a :class:`Report` with format ``card``."""
    import yaml
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    path = Path(card_path)
    if not path.exists():
        raise UnusableInput("no such card file", path)
    text = read_text(path, MAX_TEXT_BYTES)
    entry = load_entry(registry_path, registry_root) if registry_path is not None else None

    report = Report(path=str(path), format="card")
    report.files.append(FileEntry(path.name, path.stat().st_size, "other"))
    name = path.name
    usable = True
    try:
        meta = _front_matter(text, path)
    except yaml.YAMLError as exc:
        report.error("bad-metadata", name, "front matter", f"YAML does not parse: {' '.join(str(exc).split())}")
        meta, usable = {}, False
    except UnusableInput as exc:  # over the limits: never handed to huggingface_hub either
        report.error("bad-metadata", name, "front matter", exc.message)
        meta, usable = {}, False
    if meta is None:
        report.error("no-metadata", name, "front matter", "card has no YAML front matter (--- ... ---)")
        meta = {}
    body = text
    if usable:
        try:
            with _quiet_hub_logging():  # mcard's findings say what is wrong, not huggingface_hub's log lines
                body = ModelCard(text, ignore_metadata_errors=True).text
        except Exception as exc:  # noqa: BLE001 - huggingface_hub raises plain ValueError/YAML errors
            report.error("bad-metadata", name, "front matter", f"huggingface_hub cannot parse the card: {exc}")
    else:
        found = re.match(r"^---\s*\n.*?\n---\s*(\n|$)", text, re.DOTALL)
        body = text[found.end():] if found else text
    report.params = {k: meta[k] for k in ("license", "base_model", "model_type", "pipeline_tag") if k in meta}

    # model-index round trip
    card_results: list[Any] | None = None
    model_name: str | None = None
    index = meta.get("model-index")
    if index is not None:
        try:
            model_name, card_results = model_index_to_eval_results(index)
            back = eval_results_to_model_index(model_name, card_results)
        except Exception as exc:  # noqa: BLE001 - malformed model-index raises KeyError/TypeError/ValueError
            report.error("model-index", name, "model-index", f"does not parse: {type(exc).__name__}: {exc}")
            card_results = None
        else:
            if not model_name:
                report.error("model-index", name, "model-index[0].name", "model-index has no model name")
            if _norm_index(back) != _norm_index(index):
                report.error("model-index", name, "model-index",
                             "does not round-trip through huggingface_hub's EvalResult (unknown or malformed fields)")
        report.params["model_name"] = model_name

    # required metadata
    if not meta.get("license"):
        report.error("missing-metadata", name, "license", "no license in the front matter")
    if not meta.get("pipeline_tag"):
        report.warning("missing-metadata", name, "pipeline_tag", "no pipeline_tag: the Hub will not show a widget")
    raw_tags = meta.get("tags")
    tags = [str(t).lower() for t in raw_tags] if isinstance(raw_tags, list) else \
        [raw_tags.lower()] if isinstance(raw_tags, str) else []
    is_quant = formats.family(entry.family).quantized if entry is not None else (
        bool(meta.get("quantized_by")) or bool(quantized_tags() & set(tags))
    )
    if is_quant and not meta.get("base_model"):
        report.error("missing-metadata", name, "base_model", "a quantized or adapter repo needs base_model")

    if entry is not None:
        _check_against_entry(report, entry, meta, body, model_name, card_results)
    return report


def _check_against_entry(report: Report, entry: Entry, meta: dict[str, Any], body: str,
                         model_name: str | None, card_results: list[Any] | None) -> None:
    name = Path(report.path).name
    m = entry.model
    for field, wanted in (("license", m.license), ("base_model", m.base_model)):
        have = meta.get(field)
        if wanted is None or have == wanted:
            continue
        if have is None:  # missing, not a value "None"; said once
            if not any(f.code == "missing-metadata" and f.where == field for f in report.findings):
                report.error("missing-metadata", name, field, f"no {field} in the front matter; the registry says {wanted!r}")
            continue
        report.error("metadata-mismatch", name, field, f"card says {have!r}, registry says {wanted!r}")
    if entry.evaluations:
        if model_name is not None and model_name != m.name:
            report.error("metadata-mismatch", name, "model-index[0].name",
                         f"card says {model_name!r}, registry says {m.name!r}")
        if card_results is not None:
            want_keys = _eval_keys([eval_result(e) for e in entry.evaluations])
            have_keys = _eval_keys(card_results)
            for result in sorted(want_keys - have_keys):
                report.error("eval-mismatch", name, "model-index",
                             f"registry result {result[0]} {result[2]}={result[3]} is not in the card")
            for result in sorted(have_keys - want_keys):
                report.error("eval-mismatch", name, "model-index",
                             f"card result {result[0]} {result[2]}={result[3]} is not in the registry")
        elif "model-index" not in meta:
            report.error("eval-mismatch", name, "model-index", "registry has evaluations but the card has no model-index")

    card = formats.family(entry.family)
    columns = list(card.columns)
    table = next((t for t in markdown_tables(body) if t[0] and t[0][0] == columns[0] and len(t[0]) > 2), None)
    if table is None:
        report.error("missing-table", name, "provided files", f"no provided-files table (header starting {columns[0]!r})")
        return
    header, rows = table
    if header != columns:
        report.error("table-columns", name, "provided files", f"columns {header} differ from {columns}")
    col = {c: i for i, c in enumerate(header)}
    by_key: dict[str, list[str]] = {}
    for cells in rows:
        if cells:
            by_key[_clean_key(cells[0])] = cells
    variants = {v.key: v for v in entry.variants}
    for key in sorted(set(by_key) - set(variants)):
        report.error("unknown-row", name, f"provided files/{key}", "row for a variant the registry does not have")
    for key, v in variants.items():
        where = f"provided files/{key}"
        row = by_key.get(key)
        if row is None:
            report.error("missing-row", name, where, "no row for this variant")
            continue
        size, ram, source = expected_size(entry, v)
        for column, want in ((card.size_column, size), ("Max RAM required", ram)):
            if column not in col or want is None:
                continue
            cell = row[col[column]] if col[column] < len(row) else ""
            parsed = parse_size_cell(cell)
            if parsed is None:
                report.error("size-mismatch", name, f"{where}/{column}",
                             f"{cell!r} is not a size in {', '.join(UNITS)}")
                continue
            have, unit = parsed  # compare at the precision the card shows: one unit in the last digit
            if abs(have - round(want / UNITS[unit], 2)) > 0.01 + 1e-9:
                report.error("size-mismatch", name, f"{where}/{column}",
                             f"card says {cell.rstrip('*').strip()}, registry ({source}) says {format_size(want)}")
        if "Bits" in col and v.bits is not None and col["Bits"] < len(row) and row[col["Bits"]] != str(v.bits):
            report.error("param-mismatch", name, f"{where}/Bits", f"card says {row[col['Bits']]!r}, registry says {v.bits}")
        alias_col = card.check_alias_column  # a column naming the variant's alias (bitsandbytes: Quant type)
        if alias_col is not None and alias_col in col and col[alias_col] < len(row) and row[col[alias_col]] != v.format:
            report.error("param-mismatch", name, f"{where}/{alias_col}",
                         f"card says {row[col[alias_col]]!r}, registry says {v.format!r}")
        if "Group Size" in col and v.group_size is not None and col["Group Size"] < len(row) \
                and row[col["Group Size"]] != str(v.group_size):
            report.error("param-mismatch", name, f"{where}/Group Size",
                         f"card says {row[col['Group Size']]!r}, registry says {v.group_size}")
