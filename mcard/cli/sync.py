"""CLI for ``mcard sync``, ``mcard plan`` and ``mcard demo``: parse, call :mod:`mcard.pipeline.sync`, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..core.errors import EXIT_FAILED
from ..core.safetext import markup_safe as esc, plain
from ..pipeline.plan import MAX_MATRIX_JOBS
from .errors import command_errors
from .options import CreateOpt, DeviceOpt, EndpointOpt, JsonOpt, PrivateOpt, RegistryRootOpt, RepoOpt
from .output import print_json


def _print_summary(results: list) -> None:
    from rich.table import Table

    from ..core.units import format_size
    from ..pipeline.sync import FAILED
    from .output import console as make_console

    console = make_console()
    for res in results:
        table = Table(title=esc(f"{res.repo}  ({res.entry})"), box=None, header_style="bold", title_justify="left")
        for col in ("variant", "status", "commit", "measured", "predicted", "validate", "smoke", "max err", "time"):
            table.add_column(col, no_wrap=col == "variant")
        for r in res.records:
            style = "red" if r.status == FAILED else "green" if r.status == "passed" else "dim"
            table.add_row(
                esc(r.variant), f"[{style}]{esc(r.status)}[/]", esc((r.commit or "-")[:8]),
                format_size(r.measured_bytes), format_size(r.predicted_bytes), esc(r.validate), esc(r.smoke),
                "-" if r.smoke_max_error is None else f"{r.smoke_max_error:.1e}", f"{r.seconds:.1f}s",
            )
        console.print(table)
        for r in res.records:  # reasons below the table, where they have the whole width
            if r.reason:
                console.print(plain(f"  {r.variant}: " + (f"[{r.stage}] " if r.stage else "") + r.reason),
                              markup=False)
        console.print(f"report: {Path(res.report_dir) / 'report.md'}", markup=False)
        if res.card_path:
            console.print(f"card:   {res.card_path}", markup=False)
        console.print()


def sync(
    target: Path = typer.Argument(..., help="A registry entry (.toml) or a registry folder."),
    variant: str | None = typer.Option(None, "--variant", help="Only this variant (branch, or file for GGUF)."),
    no_smoke: bool = typer.Option(False, "--no-smoke", help="Skip the smoke test."),
    render: bool = typer.Option(False, "--render", help="Write the card (README.md) with measured sizes into the report folder."),
    report: Path | None = typer.Option(None, "--report", help="Report folder (default reports/<repo>/)."),
    force: bool = typer.Option(False, "--force", help="Run variants unchanged since their last passing report too."),
    device: DeviceOpt = "auto",
    batch: int | None = typer.Option(None, "--batch", help="Only job N of `mcard plan TARGET` (what a CI matrix job runs)."),
    max_jobs: int = typer.Option(MAX_MATRIX_JOBS, "--max-jobs", help="With --batch: the --max-jobs the plan was made with."),
    endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
    publish: bool = typer.Option(False, "--publish", help="Package -> validate -> smoke -> publish -> verify, from --from."),
    from_dir: Path | None = typer.Option(None, "--from",
                                         help="With --publish: the quantizer outputs (DIR/<branch>/, DIR/<file>)."),
    out: Path | None = typer.Option(None, "--out", help="With --publish: the package folder (default packages/<repo>)."),
    create: CreateOpt = False,
    private: PrivateOpt = False,
    repo: RepoOpt = None,
    registry_root: RegistryRootOpt = None,
) -> None:
    """Fetch, validate and smoke-test every variant of a registry entry; report, and render its card.

    With --publish: package the variants from --from, validate, smoke-test, publish and fetch them back.
    """
    from ..pipeline.sync import SyncOptions, sync as run_sync

    options = SyncOptions(variant=variant, smoke=not no_smoke, render=render, report_dir=report, force=force,
                          endpoint=endpoint, device=device, batch=batch, max_jobs=max_jobs,
                          publish=publish, from_dir=from_dir, package_dir=out,
                          create=create, private=private, repo=repo, registry_root=registry_root)
    progress = None
    if not as_json and sys.stderr.isatty():
        def progress(record) -> None:
            typer.echo(f"  {record.variant}: {record.status}", err=True)
    with command_errors(as_json):
        results = run_sync(target, options, progress=progress)
    ok = all(r.ok for r in results)
    if as_json:
        print_json({"ok": ok, "repos": [r.to_dict() for r in results]})
    else:
        _print_summary(results)
    raise typer.Exit(0 if ok else EXIT_FAILED)


def plan(
    target: Path = typer.Argument(..., help="A registry folder (or one entry)."),
    fmt: str = typer.Option("github-matrix", "--format", help="github-matrix (one line for $GITHUB_OUTPUT) or json."),
    max_jobs: int = typer.Option(MAX_MATRIX_JOBS, "--max-jobs",
                                 help="At most this many jobs (GitHub allows 256 a matrix); beyond, variants are batched."),
    registry_root: RegistryRootOpt = None,
) -> None:
    """Emit the CI jobs: one per variant (batches beyond --max-jobs), as a GitHub Actions matrix or a JSON list."""
    from ..core.errors import UnusableInput
    from ..pipeline.plan import plan_jobs

    with command_errors():
        if fmt not in ("github-matrix", "json"):
            raise UnusableInput(f"--format {fmt!r}: expected github-matrix or json")
        jobs = plan_jobs(target, max_jobs, registry_root=registry_root)
    if fmt == "github-matrix":
        typer.echo(json.dumps({"include": jobs}, separators=(",", ":")))
    else:
        typer.echo(json.dumps(jobs, indent=2))


def demo(
    out: Path = typer.Option(Path("mcard-demo"), "--out", help="Where the registry, reports, cards and cache go."),
    broken: bool = typer.Option(False, "--with-broken", help="Add three broken GPTQ branches to see them caught."),
    no_smoke: bool = typer.Option(False, "--no-smoke", help="Skip the smoke test."),
    serve: bool = typer.Option(False, "--serve", help="Keep the local Hub running afterwards (until Ctrl-C) to try "
                                                      "mcard on its repos."),
) -> None:
    """Build tiny repos, serve them on a local Hub-API server, and run sync --render end to end."""
    from ..pipeline.demo import run_demo

    def report(results: list, folder: Path) -> None:
        _print_summary(results)
        for again in republished:  # the publish step's rerun: nothing to send, no new commit
            typer.echo(f"republished {again.repo} unchanged: {again.uploaded_bytes} bytes sent, "
                       f"{sum(1 for b in again.branches if b.commit != b.head)} new commits, "
                       f"{'verified' if again.ok else 'NOT verified'}")
        typer.echo(f"Registry entries: {folder / 'registry'}")
        typer.echo(f"Reports and cards: {folder / 'reports'}/<repo>/ (report.md, report.json, README.md)")
        typer.echo(f"Downloaded variants: {folder / 'hf-cache'} (the Hugging Face cache layout; each variant's "
                   "folder is its local_path in report.json)")
        ok = all(r.ok for r in results)
        typer.echo("All variants passed." if ok else "Some variants failed: see the reasons above.")

    def while_serving(endpoint: str, results: list) -> None:
        report(results, out.resolve())
        _serve_until_interrupted(endpoint, [r.repo for r in results])

    typer.echo("mcard demo: building tiny GPTQ/AWQ/GGUF/QLoRA repos and serving them on 127.0.0.1 ...", err=True)
    republished: list = []
    with command_errors():
        results, folder = run_demo(out, broken=broken, smoke=not no_smoke, republished=republished,
                                   while_serving=while_serving if serve else None)
    if not serve:
        report(results, folder)
    raise typer.Exit(0 if all(r.ok for r in results) else EXIT_FAILED)


def _serve_until_interrupted(endpoint: str, repos: list[str]) -> None:
    """Print how to reach the local Hub and wait for Ctrl-C (or SIGTERM); then the demo stops its server."""
    import signal
    import threading

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    typer.echo(f"\nThe local Hub is serving the demo's repos. In another shell:\n\n  export HF_ENDPOINT={endpoint}")
    for repo in repos:
        typer.echo(f"  mcard branches {repo}")
    typer.echo(f"  mcard fetch {repos[0]}:main\n\nPress Ctrl-C to stop the server.")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo("Stopped the local Hub.")
