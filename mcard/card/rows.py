"""The provided-files rows of a card: each variant's size (measured, published or predicted) and runtimes.

Sizes come from, in order: the variant measured on disk, the size recorded in
the registry (as published), a prediction by :func:`mcard.core.size.predict_size`.
Compatibility comes from the format modules' published runtime rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UnusableInput
from ..core.report import Runtime
from ..core.units import format_size
from ..registry.entry import Entry, RegistryVariant


@dataclass
class Row:
    """One provided-files row: a variant with its size, where the size came from, and runtimes."""

    variant: RegistryVariant
    size: int | None = None
    size_source: str = "unknown"  # measured, published, predicted, unknown
    ram: int | None = None
    runtimes: list[Runtime] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> bool:
        return self.size_source == "predicted"


def size_cell(n: int | None, predicted: bool = False) -> str:
    """A size as cards show it (:func:`mcard.core.units.format_size`), starred when predicted."""
    return format_size(n) + ("*" if predicted and n is not None else "")


def rule_runtimes(v: RegistryVariant) -> list[Runtime] | None:
    """Compatibility from the format's published rules (None when it has no rules)."""
    return v.spec.rule_runtimes(v)


def predict(entry: Entry, v: RegistryVariant) -> tuple[int | None, int | None]:
    """Predicted (size, ram) bytes, or (None, None) when no architecture, no predictor, or too few parameters."""
    from ..core.size import RAM_OVERHEAD_BYTES, predict_size

    params = v.spec.size_params(v)
    if entry.architecture is None or not v.spec.can_predict_size or params is None:
        return None, None
    est = predict_size(entry.architecture, v.format, **params)
    ram = est.ram_bytes
    if ram is None and _card(entry).ram:
        ram = est.total_bytes + RAM_OVERHEAD_BYTES
    return est.total_bytes, ram


def _card(entry: Entry) -> Any:
    from .. import formats

    return formats.family(entry.family)


def expected_size(entry: Entry, v: RegistryVariant) -> tuple[int | None, int | None, str]:
    """What the registry says a variant's (size, ram) is: recorded, else predicted."""
    from ..core.size import RAM_OVERHEAD_BYTES

    if v.size is not None:
        ram = v.ram if v.ram is not None else (v.size + RAM_OVERHEAD_BYTES if _card(entry).ram else None)
        return v.size, ram, "published"
    size, ram = predict(entry, v)
    if size is None:
        return None, None, "unknown"
    if v.ram is not None:
        ram = v.ram
    return size, ram, "predicted"


def measure(path: Path) -> tuple[int, list[Runtime]]:
    from ..core.validate import inspect

    report = inspect(path)
    size = report.actual_bytes
    runtimes = list(report.runtimes)
    for part in report.parts:
        runtimes.extend(part.runtimes)
    return size, runtimes


def _check_variant_paths(entry: Entry, variant_paths: dict[str, Path] | None) -> dict[str, Path]:
    """``variant_paths`` as Paths; every key must name a variant and every path exist."""
    if not variant_paths:
        return {}
    keys = [v.key for v in entry.variants]
    out = {}
    for key, value in variant_paths.items():
        if key not in keys:
            import difflib

            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (variants: {', '.join(keys)})"
            raise UnusableInput(f"variant_paths: no variant {key!r} in {entry.path.name}{hint}")
        path = Path(value)
        if not path.exists():
            raise UnusableInput(f"no such file or folder for variant {key!r} of {entry.path.name}", path)
        out[key] = path
    return out


def build_rows(entry: Entry, variants_dir: Path | None = None,
               variant_paths: dict[str, Path] | None = None) -> list[Row]:
    """One row per variant. A variant is measured from ``variant_paths[key]`` when given, else from
    ``variants_dir/key`` when ``variants_dir`` is given (then every other variant must be there),
    else sized as recorded or predicted."""
    from ..core.size import RAM_OVERHEAD_BYTES

    paths = _check_variant_paths(entry, variant_paths)
    rows = []
    for v in entry.variants:
        row = Row(v)
        path = paths.get(v.key)
        if path is None and variants_dir is not None:
            path = variants_dir / v.key
            if not path.exists():
                raise UnusableInput(f"no {v.key!r} in it for variant {v.key!r} of {entry.path.name}", variants_dir)
        if path is not None:
            row.size, measured_runtimes = measure(path)
            row.size_source = "measured"
            row.ram = v.ram if v.ram is not None else (row.size + RAM_OVERHEAD_BYTES if _card(entry).ram else None)
            row.runtimes = measured_runtimes or rule_runtimes(v)
        else:
            row.size, row.ram, row.size_source = expected_size(entry, v)
            row.runtimes = rule_runtimes(v)
        rows.append(row)
    if _card(entry).sort_by_size:  # unknown sizes last, then by name
        rows.sort(key=lambda r: (r.size is None, r.size or 0, r.variant.key))
    return rows


def runtimes_cell(runtimes: list[Runtime] | None) -> str:
    """The names of the compatible runtimes, comma-separated; ``?`` without rules, ``-`` when none."""
    if runtimes is None:
        return "?"
    return ", ".join(r.name for r in runtimes if r.compatible) or "-"


def target_modules_text(v: RegistryVariant) -> str:
    """An adapter's target modules as a card shows them."""
    return ", ".join(v.target_modules) if v.target_modules else "all linear layers"


def exllama_cell(runtimes: list[Runtime] | None) -> str:
    """``True``/``False`` from the runtimes named like ExLlama; which ones when they disagree."""
    if runtimes is None:
        return "?"
    ex = [r for r in runtimes if "exllama" in r.name.lower()]
    if not ex:
        return "?"
    if all(r.compatible for r in ex):
        return "True"
    if not any(r.compatible for r in ex):
        return "False"
    return ", ".join(r.name for r in ex if r.compatible) + " only"
