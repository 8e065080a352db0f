"""``mcard card render``: render a model card from a registry entry (checking: :mod:`mcard.card.check`).

Rendering: front matter from ``huggingface_hub.ModelCardData`` (evaluations
become ``model-index``), body from the Jinja2 templates in ``templates/``, run
in a sandbox with ``StrictUndefined``. Registry text is only ever passed to the
templates as values: it is never compiled as a template.

Sizes come from, in order: the variant measured on disk (``--variants DIR``, or
``variant_paths`` for some variants only), the size recorded in the registry (as
published), a prediction by :func:`mcard.core.size.predict_size` (marked ``*`` with a
footnote).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import formats
from ..core.errors import UnusableInput
from ..core.untrusted import read_text
from ..registry.entry import Entry, load_entry
from .evals import EvalEntry, format_value
from .rows import Row, build_rows, runtimes_cell, size_cell, target_modules_text

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

TEMPLATES_PACKAGE = "mcard.card.templates"  # the top-level templates/ folder, as package data


def templates() -> Traversable:
    """The card templates, found with :mod:`importlib.resources` (every install style: editable, wheel,
    ``--target``, ``--user``, a zip)."""
    try:
        return resources.files(TEMPLATES_PACKAGE)
    except ModuleNotFoundError:
        raise UnusableInput("card templates not found (mcard.card.templates is not installed: reinstall mcard)") from None


def _package_loader() -> Any:
    """A Jinja2 loader over :func:`templates` that needs no file system path."""
    from jinja2 import FunctionLoader

    def load(name: str) -> str | None:
        found = templates().joinpath(name)
        return found.read_text(encoding="utf-8") if found.is_file() else None

    return FunctionLoader(load)


# -- chat template from a tokenizer_config.json ----------------------------------------


def find_chat_template(entry: Entry, variants_dir: Path | None,
                       variant_paths: dict[str, Path] | None = None) -> str | None:
    if variants_dir is None and not variant_paths:
        return None
    from ..core.jsonio import load_json_object

    candidates = []
    for v in entry.variants:
        if v.spec.files_are_variants:  # a file has no tokenizer_config.json of its own
            continue
        if variant_paths and v.key in variant_paths:
            candidates.append(Path(variant_paths[v.key]) / "tokenizer_config.json")
        elif variants_dir is not None:
            candidates.append(variants_dir / v.key / "tokenizer_config.json")
    if variants_dir is not None:
        candidates.append(variants_dir / "tokenizer_config.json")
    for path in candidates:
        if not path.is_file():
            continue
        value = load_json_object(path).get("chat_template")
        if isinstance(value, list):  # named templates: [{"name": "default", "template": "..."}]
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            value = named.get("default") or next((t for t in named.values() if isinstance(t, str)), None)
        if isinstance(value, str) and value.strip():
            return value
    return None


# -- front matter -------------------------------------------------------------------


def eval_result(e: EvalEntry) -> Any:
    from huggingface_hub import EvalResult

    metric_name = e.display_metric + (f" ({e.variant})" if e.variant else "")
    return EvalResult(
        task_type=e.task_type,
        dataset_type=e.dataset_type,
        dataset_name=e.dataset_name,
        metric_type=e.metric_type,
        metric_value=e.value,
        dataset_config=e.dataset_config,
        dataset_split=e.dataset_split,
        dataset_args={"num_few_shot": e.shots} if e.shots is not None else None,
        metric_name=metric_name if metric_name != e.metric_type else None,
        # huggingface_hub wants a source_url with a source_name; without one the name stays in the body only
        source_name=e.source_name if e.source_url else None,
        source_url=e.source_url if e.source_name else None,
    )


def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def card_data(entry: Entry, prompt_text: str | None) -> Any:
    from huggingface_hub import ModelCardData

    m = entry.model
    card = formats.family(entry.family)
    formats_tags = _dedupe([v.format for v in entry.variants] + list(card.tags))
    bits = sorted({v.bits for v in entry.variants if v.bits is not None and card.bits_tags})
    tags = _dedupe(m.tags + formats_tags + [f"{b}-bit" for b in bits])
    extra: dict[str, Any] = {}
    model_type = (entry.architecture or {}).get("model_type")
    for key, value in (
        ("inference", m.inference),
        ("model_creator", m.creator),
        ("model_type", model_type),
        ("prompt_template", prompt_text),
        ("quantized_by", m.quantized_by),
    ):
        if value is not None:
            extra[key] = value
    if card.library_name is not None:
        extra["library_name"] = card.library_name
    return ModelCardData(
        base_model=m.base_model,
        language=m.language or None,
        license=m.license,
        model_name=m.name,
        pipeline_tag=m.pipeline_tag,
        tags=tags,
        eval_results=[eval_result(e) for e in entry.evaluations] or None,
        **extra,
    )


# -- rendering ---------------------------------------------------------------------


def _md_cell(value: Any) -> str:
    """Table-cell-safe text: pipes escaped, newlines folded. Data only; never evaluated."""
    text = "" if value is None else str(value)
    return " ".join(text.replace("|", "\\|").split())


def environment(extra_dir: Path | None = None) -> Any:
    from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    loaders = [FileSystemLoader(str(extra_dir))] if extra_dir is not None else []
    loaders.append(_package_loader())
    env = SandboxedEnvironment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = _md_cell
    env.filters["size"] = size_cell
    env.filters["value"] = format_value
    return env


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            nl = text.find("\n", end + 4)
            return text[nl + 1:] if nl != -1 else ""
    return text


def _prompt(entry: Entry) -> tuple[str | None, str | None]:
    from . import prompts

    p = entry.model.prompt
    if p is None:
        return None, None
    tpl = prompts.resolve(p, str(entry.path))
    return tpl.title, tpl.filled(entry.model.system_message)


def table_rows(entry: Entry, rows: list[Row]) -> list[list[str]]:
    """The provided-files table as text cells, in the family's column order (each format's spec fills its rows)."""
    return [[_md_cell(c) for c in formats.by_alias(r.variant.format).card_cells(r.variant, r)] for r in rows]


# Metrics that are either fractions (lm-evaluation-harness: 0.527) or percentages (papers: 52.7).
PERCENTABLE_METRICS = frozenset({"acc", "acc_norm", "accuracy", "exact_match", "em", "f1", "mc1", "mc2"})


def eval_display(evaluations: list[EvalEntry]) -> tuple[list[tuple[str, str]], str]:
    """The evaluation table's (value, stderr) texts in one convention, and the sentence that states it.

    Fractions and percentages of accuracy-like metrics are never mixed in one table: when an
    entry gives both (an lm-eval file next to a paper's figure), fractions are shown x 100.
    The model-index keeps the values as given.
    """
    kinds = {e.value <= 1 for e in evaluations if e.metric_type.lower() in PERCENTABLE_METRICS}
    mixed = kinds == {True, False}
    shown = []
    for e in evaluations:
        scale = 100 if mixed and e.metric_type.lower() in PERCENTABLE_METRICS and e.value <= 1 else 1
        stderr = "" if e.stderr is None else format_value(round(e.stderr * scale, 4))
        shown.append((format_value(round(e.value * scale, 4)), stderr))
    if not kinds:
        return shown, ""
    if mixed:
        return shown, "Accuracies are percentages (lm-evaluation-harness fractions are shown x 100)."
    if kinds == {False}:
        return shown, "Accuracies are percentages."
    return shown, "Accuracies are fractions, as lm-evaluation-harness reports them (0.5 = 50 %)."


def context(entry: Entry, variants_dir: Path | None = None, variant_paths: dict[str, Path] | None = None,
            listed: set[str] | None = None, left_out: dict[str, str] | None = None) -> dict[str, Any]:
    """The template's values. ``listed``: only these variants get a provided-files row (``sync --render``
    lists the variants that passed); ``left_out``: variant key -> why it is not listed."""
    rows = build_rows(entry, variants_dir, variant_paths)
    if listed is not None:
        rows = [r for r in rows if r.variant.key in listed]
    prompt_title, prompt_text = _prompt(entry)
    original = None
    if entry.model.original_card is not None:
        original = _strip_front_matter(read_text(entry.model.original_card)).strip("\n")
    variants = []
    for r in rows:
        v = r.variant
        variants.append({
            "key": v.key, "branch": v.branch, "file": v.file, "format": v.format, "bits": v.bits,
            "split_name": v.spec.file_display_name(v.file) if v.file and v.spec.file_display_name(v.file) != v.file
            else None,
            "group_size": v.group_size, "desc_act": v.desc_act, "sym": v.sym, "type": v.type,
            "version": v.version, "zero_point": v.zero_point, "double_quant": v.double_quant,
            "made_with": v.made_with, "description": v.description, "dataset": v.dataset,
            "seq_len": v.seq_len, "damp_percent": v.damp_percent, "r": v.r, "alpha": v.alpha,
            "dropout": v.dropout, "target_modules": target_modules_text(v),
            "size": size_cell(r.size, r.predicted), "size_source": r.size_source,
            "runtimes": [{"name": rt.name, "compatible": rt.compatible, "reason": rt.reason} for rt in r.runtimes or []],
            "compatible_runtimes": runtimes_cell(r.runtimes),
        })
    m = entry.model
    shown, eval_note = eval_display(entry.evaluations)
    evals = [{
        "variant": e.variant or "", "dataset": e.dataset_name, "config": e.dataset_config or "",
        "split": e.dataset_split or "", "metric": e.display_metric, "value": value,
        "stderr": stderr, "shots": "" if e.shots is None else e.shots,
        "source": e.source_name or "", "source_url": e.source_url or "",
    } for e, (value, stderr) in zip(entry.evaluations, shown, strict=True)]
    return {
        "model": {
            "repo": m.repo, "name": m.name, "license": m.license, "creator": m.creator or "",
            "base_model": m.base_model or "", "base_model_name": m.base_model_name or m.base_model or "",
            "description": m.description or "", "quantized_by": m.quantized_by or "",
            "notes": list(m.notes), "links": list(m.links),
        },
        "family": entry.family,
        "columns": list(formats.family(entry.family).columns),
        "rows": table_rows(entry, rows),
        "variants": variants,
        "first": variants[0] if variants else None,
        "left_out": [{"key": k, "reason": _md_cell(why)} for k, why in (left_out or {}).items()],
        "eval_note": eval_note,
        "any_predicted": any(r.predicted for r in rows),
        "any_measured": any(r.size_source == "measured" for r in rows),
        "all_measured": bool(rows) and all(r.size_source == "measured" for r in rows),
        "prompt_title": prompt_title or "",
        "prompt_text": prompt_text or "",
        "chat_template": find_chat_template(entry, variants_dir, variant_paths) or "",
        "evals": evals,
        "tables": [{"title": t.title, "columns": [_md_cell(c) for c in t.columns],
                    "rows": [[_md_cell(c) for c in row] for row in t.rows], "caption": t.caption or ""}
                   for t in entry.tables],
        "original_card": original or "",
    }


def render_card(entry_path: str | Path, variants_dir: str | Path | None = None, template: str | Path | None = None,
                variant_paths: dict[str, Path] | None = None, listed: set[str] | None = None,
                left_out: dict[str, str] | None = None, registry_root: str | Path | None = None) -> str:
    """Render the model card (front matter + Markdown) of a registry entry. Deterministic.

    ``variants_dir``: one subfolder per branch (or the GGUF/GGML files); every variant is
    measured and must be there. ``variant_paths``: {variant key: file or folder} for the
    variants to measure; the others keep their recorded or predicted sizes. ``listed``: only
    these variants get a row (``sync --render``: the ones that passed); ``left_out``: key -> why
    a variant is not listed, said under the table.
    """
    from jinja2 import TemplateError, TemplateNotFound
    from jinja2.exceptions import SecurityError

    entry = load_entry(entry_path, registry_root)
    vdir = Path(variants_dir) if variants_dir is not None else None
    if vdir is not None and not vdir.is_dir():
        raise UnusableInput("--variants: not a folder", vdir)
    ctx = context(entry, vdir, variant_paths, listed, left_out)

    extra_dir, name = None, formats.family(entry.family).template
    if template is not None:
        t = Path(template)
        if t.is_file():
            extra_dir, name = t.resolve().parent, t.name
        elif "/" not in str(template) and templates().joinpath(str(template)).is_file():
            name = str(template)
        else:
            raise UnusableInput("--template: no such template file", template)
    env = environment(extra_dir)
    try:
        body = env.get_template(name).render(**ctx)
    except TemplateNotFound as exc:
        raise UnusableInput(f"template {name}: includes a missing template {exc.name!r}") from None
    except SecurityError as exc:
        raise UnusableInput(f"template {name}: unsafe operation refused by the sandbox: {exc}") from None
    except TemplateError as exc:
        raise UnusableInput(f"template {name}: {type(exc).__name__}: {exc}") from None

    front = card_data(entry, ctx["prompt_text"] or None).to_yaml()
    body = re.sub(r"\n{3,}", "\n\n", body).strip("\n")
    return f"---\n{front}\n---\n\n{body}\n"
