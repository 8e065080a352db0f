"""Printing reports for people (rich) and machines (JSON). No logic lives here."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from .report import Report, Severity
from .size import SizeEstimate

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


def console() -> Console:
    """A console for tables: the terminal's width, or 200 columns in logs and pipes (CI)."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


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
        out.print(f"remote: {r['repo']}@{r['revision']} (commit {r['commit'][:10]}): read {size_text(r['bytes_read'])} "
                  f"of {size_text(r['total_bytes'])} in {r['requests']} requests"
                  + ("" if r.get("range_supported", True) else " (the server ignored Range: reads streamed through)"))
        if r.get("mirror"):
            out.print(f"sparse mirror kept in {r['mirror']}")


def size_text(n: int) -> str:
    """Decimal units, as the Hub shows sizes: ``1.2 MB``, ``36.65 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _print_one(report: Report, out: Console) -> None:
    params = " ".join(f"{k}={v}" for k, v in report.params.items())
    source = f" from {report.config_source}" if report.config_source else ""
    out.print(f"[bold]{report.path}[/]: format [bold]{report.format}[/]{source}  {params}")
    size = f"size {gb(report.actual_bytes)} ({report.actual_bytes} bytes)"
    if report.predicted_bytes is not None:
        size += f", predicted {gb(report.predicted_bytes)} ({report.predicted_bytes} bytes)"
    out.print(size)
    if report.runtimes:
        cells = [f"{r.name} {'[green]yes[/]' if r.compatible else '[red]no[/]'}" for r in report.runtimes]
        out.print("runtimes: " + ", ".join(cells))
        for r in report.runtimes:
            if not r.compatible and r.reason:
                out.print(f"  [dim]{r.name}: {r.reason}[/]")
    if report.findings:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("severity", "file", "where", "finding"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            table.add_row(f"[{_STYLE[f.severity]}]{f.severity.value}[/]", f.file, f.where, f.message)
        out.print(table)


def print_size(est: SizeEstimate, per_tensor: bool = False, out: Console | None = None) -> None:
    out = out or console()
    params = " ".join(f"{k}={v}" for k, v in est.params.items() if not isinstance(v, (dict, list)))
    out.print(f"[bold]{est.format}[/] {params}")
    table = Table(box=None, show_header=True, header_style="bold")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column("GB", justify="right")
    for part, n in est.parts.items():
        table.add_row(part, f"{n:,}", f"{n / 1e9:.3f}")
    table.add_row("[bold]total[/]", f"[bold]{est.total_bytes:,}[/]", f"[bold]{est.total_bytes / 1e9:.2f}[/]")
    out.print(table)
    if est.ram_bytes is not None:
        out.print(f"Max RAM required, no GPU offloading: {est.ram_bytes / 1e9:.2f} GB")
    for note in est.notes:
        out.print(note, markup=False, highlight=False)
    if per_tensor:
        t = Table(box=None, show_header=True, header_style="bold")
        for col in ("tensor", "type", "bytes"):
            t.add_column(col)
        for name, kind, n in est.tensors:
            t.add_row(name, kind, f"{n:,}")
        out.print(t)
