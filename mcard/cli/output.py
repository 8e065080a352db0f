"""Printing reports for people (rich) and machines (JSON). No logic lives here.

Every value that came from a file, a server or a user goes through
:func:`mcard.core.safetext.markup_safe` (``esc``) before rich sees it: redacted,
control characters shown, markup such as ``[/]`` printed as written.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from ..core.report import WEIGHT_KINDS, Report, Severity
from ..core.safetext import dumps_json, markup_safe as esc, plain
from ..core.size import SizeEstimate
from ..core.units import format_size

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


def console() -> Console:
    """A console for tables: the terminal's width, or 200 columns in logs and pipes (CI)."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def print_json(obj: Any) -> None:
    """One JSON document on stdout, every string redacted; values JSON has no type for (a date) become strings."""
    sys.stdout.write(dumps_json(obj, indent=2, sort_keys=False) + "\n")


def print_report(report: Report, out: Console | None = None) -> None:
    out = out or console()
    _print_one(report, out)
    for part in report.parts:
        out.print()
        _print_one(part, out)
    errors = sum(f.severity is Severity.ERROR for f in report.all_findings())
    warnings = sum(f.severity is Severity.WARNING for f in report.all_findings())
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]FAILED[/]"
    out.print(f"\n{verdict}: {errors} error(s), {warnings} warning(s)")
    if report.remote is not None:
        r = report.remote
        out.print(f"remote: {esc(r['repo'])}@{esc(r['revision'])} (commit {esc(r['commit'][:10])}): "
                  f"read {format_size(r['bytes_read'])} of {format_size(r['total_bytes'])} in {r['requests']} requests"
                  + ("" if r.get("range_supported", True) else " (the server ignored Range: reads streamed through)"))
        if r.get("mirror"):
            out.print(f"sparse mirror kept in {esc(r['mirror'])}")


def _print_one(report: Report, out: Console) -> None:
    params = esc(" ".join(f"{k}={v}" for k, v in report.params.items()))
    source = f" from {esc(report.config_source)}" if report.config_source else ""
    out.print(f"[bold]{esc(report.path)}[/]: format [bold]{esc(report.format)}[/]{source}  {params}")
    size = size_line(report)
    if size:
        out.print(size)
    if report.runtimes:
        cells = [f"{esc(r.name)} {'[green]yes[/]' if r.compatible else '[red]no[/]'}" for r in report.runtimes]
        out.print("runtimes: " + ", ".join(cells))
        for r in report.runtimes:
            if not r.compatible and r.reason:
                out.print(f"  [dim]{esc(r.name)}: {esc(r.reason)}[/]")
    if report.findings:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("severity", "file", "where", "finding"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            table.add_row(f"[{_STYLE[f.severity]}]{f.severity.value}[/]", esc(f.file), esc(f.where), esc(f.message))
        out.print(table)


def size_line(report: Report) -> str:
    """``weights 979.06 kB (979,064 bytes), exactly as predicted``: the weights files against the prediction."""
    has_weights = any(f.kind in WEIGHT_KINDS for f in report.files)
    if not has_weights and report.predicted_bytes is None:
        return ""
    actual, predicted = report.actual_bytes, report.predicted_bytes
    text = f"weights {format_size(actual)} ({actual:,} bytes)"
    if predicted == actual:
        return text + ", exactly as predicted"
    if predicted is not None:
        text += f", predicted {format_size(predicted)} ({predicted:,} bytes, {actual - predicted:+,})"
    return text


def print_size(est: SizeEstimate, per_tensor: bool = False, out: Console | None = None) -> None:
    out = out or console()
    params = esc(" ".join(f"{k}={v}" for k, v in est.params.items() if not isinstance(v, (dict, list))))
    out.print(f"[bold]{esc(est.format)}[/] {params}")
    table = Table(box=None, show_header=True, header_style="bold")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column("size", justify="right")
    for part, n in est.parts.items():
        table.add_row(esc(part), f"{n:,}", format_size(n))
    table.add_row("[bold]total[/]", f"[bold]{est.total_bytes:,}[/]", f"[bold]{format_size(est.total_bytes)}[/]")
    out.print(table)
    if est.ram_bytes is not None:
        out.print(f"Max RAM required, no GPU offloading: {format_size(est.ram_bytes)}")
    for note in est.notes:
        out.print(plain(note), markup=False, highlight=False)
    if per_tensor:
        t = Table(box=None, show_header=True, header_style="bold")
        for col in ("tensor", "type", "bytes"):
            t.add_column(col)
        for name, kind, n in est.tensors:
            t.add_row(esc(name), esc(kind), f"{n:,}")
        out.print(t)
