"""Typer commands ``mcard branches`` and ``mcard fetch``: parse arguments, call :mod:`mcard.hub`, print.

Register them on the main app with::

    app.command("branches")(cli_hub.branches)
    app.command("fetch")(cli_hub.fetch)

Every :class:`~mcard.core.errors.McardError` becomes one line on stderr and its
``exit_code`` (0 ok, 1 failed verification or download, 2 bad usage or
unusable input); an interrupt exits 130 and keeps partial files for resuming.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..core.errors import EXIT_FAILED, UnusableInput
from ..core.safetext import echo, markup_safe as esc, plain
from ..core.units import format_size
from .errors import PREFIX, guarded
from .options import JsonOpt, RevisionOpt
from .output import console, print_json

if TYPE_CHECKING:  # the Hub modules (httpx, huggingface_hub) load when a Hub command runs, not with the CLI
    from ..hub.branches import BranchListing, RefReport
    from ..hub.download import FetchResult
    from ..hub.progress import Reporter

INTERRUPTED = "interrupted; partial downloads are kept and resume on the next run"


# -- branches -------------------------------------------------------------------------------------
def _config_text(ref: RefReport) -> str:
    """Config parameters, one entry per distinct value: ``gptq 4bit g32 act-order (quantize_config.json, config.json)``."""
    groups: dict[str, list[str]] = {}
    for source, params in ref.config_params.items():
        groups.setdefault(params.describe(), []).append(source)
    return "; ".join(f"{text} ({', '.join(sources)})" for text, sources in groups.items()) or "-"


def _print_branches_table(listing: BranchListing, out: Any = None) -> None:
    from rich.table import Table

    out = out or console()
    table = Table(title=f"{listing.repo_id}" + (" (offline, from the cache)" if listing.offline else ""))
    for column in ("ref", "kind", "commit", "from name", "from config", "check", "files", "size"):
        table.add_column(column, justify="right" if column in ("files", "size") else "left",
                         no_wrap=column in ("ref", "commit", "size"), overflow="fold")
    styles = {"DISAGREES": "bold red", "error": "red", "agrees": "green", "no config": "yellow"}
    for ref in listing.refs:
        style = styles.get(ref.status)
        table.add_row(esc(ref.name), esc(ref.kind), esc(ref.commit[:10]), esc(ref.name_params.describe()),
                      esc(_config_text(ref)), f"[{style}]{ref.status}[/]" if style else esc(ref.status),
                      str(ref.file_count), format_size(ref.total_size))
    out.print(table)
    for ref in listing.refs:  # in full below the table, never cut to fit a column
        for d in ref.disagreements:
            out.print(f"[bold red]{esc(ref.name)}[/]: {esc(d)}", highlight=False, soft_wrap=True)
        if ref.error:
            out.print(f"[red]{esc(ref.name)}: error: {esc(ref.error)}[/]", highlight=False, soft_wrap=True)
        for note in ref.notes:
            out.print(f"{plain(ref.name)}: {plain(note)}", highlight=False, soft_wrap=True, markup=False)


def _print_branches_plain(listing: BranchListing) -> None:
    """One tab-separated line per ref on stdout (for scripts); what disagrees goes to stderr."""
    for ref in listing.refs:
        config = _config_text(ref)
        echo("\t".join([ref.name, ref.kind, ref.commit, ref.name_params.describe(), config, ref.status,
                         str(ref.file_count), str(ref.total_size)]))


def branches(
    repo: Annotated[str, typer.Argument(help="Model repo: org/name or a Hub URL.")],
    as_json: JsonOpt = False,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="List branches only.")] = False,
) -> None:
    """List a repo's branches and tags: commit, files, size, and quant parameters from the name vs the config."""
    from ..hub.branches import list_branches

    listing: BranchListing = guarded(as_json, lambda: list_branches(repo, include_tags=not no_tags), INTERRUPTED)
    if as_json:
        print_json(listing.to_dict())
    elif sys.stdout.isatty():
        _print_branches_table(listing)
    else:
        _print_branches_plain(listing)
    if not listing.ok:  # a ref that disagrees with its configs, or could not be read: the check failed
        for ref in listing.refs:
            if not sys.stdout.isatty() or as_json:  # the table already lists them below itself
                for d in ref.disagreements:
                    echo(f"{PREFIX}{listing.repo_id}@{ref.name}: {d}", err=True)
            if ref.error:
                echo(f"{PREFIX}{listing.repo_id}@{ref.name}: {ref.error}", err=True)
        raise typer.Exit(EXIT_FAILED)


# -- fetch ----------------------------------------------------------------------------------------
def _print_plan(result: FetchResult) -> None:
    rows = [(f.path, f.size, f.status + (f" (resume from {f.resumed_from})" if f.resumed_from else ""))
            for f in result.files]
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(title=esc(f"{result.repo_id}@{result.revision} (commit {result.commit[:10]}) -> {result.target}"))
        table.add_column("file")
        table.add_column("size", justify="right")
        table.add_column("status")
        for path, size, status in rows:
            table.add_row(esc(path), format_size(size), esc(status))
        console().print(table)
    else:
        for path, size, status in rows:
            echo(f"{path}\t{size}\t{status}")
    for path, reason in result.skipped:
        echo(f"skip\t{path}\t{reason}")
    echo(f"total: {len(result.files)} files, {format_size(result.total_size)}; "
               f"to download: {format_size(result.to_download)}")


def _summary(result: FetchResult) -> str:
    counts: dict[str, int] = {}
    for f in result.files:
        counts[f.status] = counts.get(f.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return (f"{result.repo_id}@{result.revision} (commit {result.commit[:10]}): {len(result.files)} files, "
            f"{format_size(result.total_size)} ({parts})")


def _rate(text: str | None) -> float | None:
    """``--max-rate``: a size per second (``50MB``, ``50MB/s``, ``512 MiB``, a byte count)."""
    if text is None:
        return None
    from ..registry.schema import parse_size

    value = text.strip().removesuffix("/s")
    rate = parse_size(int(value) if value.isdigit() else value, "--max-rate")
    if rate <= 0:
        raise UnusableInput(f"--max-rate: expected more than 0 bytes per second, found {text!r}")
    return float(rate)


def fetch(
    repo: Annotated[str, typer.Argument(help="org/name, org/name:branch, or a Hub URL (.../tree/<branch>).")],
    files: Annotated[list[str] | None, typer.Argument(help="Only these files (paths in the repo).")] = None,
    revision: RevisionOpt = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only paths matching this glob.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Skip paths matching this glob.")] = None,
    local_dir: Annotated[Path | None, typer.Option("--local-dir", help="Write plain files here, not the HF cache.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="HF cache folder (default: HF_HUB_CACHE).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; download nothing.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle-only weights.")] = False,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Parallel downloads.")] = 8,
    connections: Annotated[int | None, typer.Option(
        "--connections", min=1, max=32, help="Connections per file (default: from its size, up to 8).")] = None,
    max_rate: Annotated[str | None, typer.Option(
        "--max-rate", help="Cap on the total rate, e.g. 50MB (per second).")] = None,
) -> None:
    """Download one revision, pinned to one commit, verifying every file's hash as it streams in."""
    from ..hub.download import fetch as fetch_revision
    from ..hub.progress import NullReporter, RichReporter

    reporter: Reporter = RichReporter() if sys.stderr.isatty() and not quiet and not dry_run else NullReporter()
    result: FetchResult = guarded(as_json, lambda: fetch_revision(
        repo, revision=revision, files=files or (), include=include or (), exclude=exclude or (),
        local_dir=local_dir, cache_dir=cache_dir, dry_run=dry_run, allow_pickle=allow_pickle, workers=workers,
        reporter=reporter, connections=connections, max_rate=_rate(max_rate)), INTERRUPTED)
    if as_json:
        print_json(result.to_dict())
    elif dry_run:
        _print_plan(result)
    else:
        echo(result.target)
        if not quiet:
            echo(_summary(result), err=True)
            for path, reason in result.skipped:
                echo(f"skipped {path}: {reason}", err=True)
    failed = result.failures()
    for f in failed:
        echo(f"{PREFIX}{f.error}", err=True)
    if failed:
        raise typer.Exit(max(f.failure.exit_code if f.failure else EXIT_FAILED for f in failed))
