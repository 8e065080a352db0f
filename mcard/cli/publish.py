"""CLI for ``mcard package`` and ``mcard publish``: parse, call :mod:`mcard.pipeline.package` /
:mod:`mcard.pipeline.publish`, print.

Errors are one line on stderr (with ``--json``, also ``{"ok": false, "error",
"exit_code"}`` on stdout) and the shared exit codes: 0 ok, 1 a check failed
(validate, a rejected token, a repo that is not yours, an unrelated branch,
a verification mismatch, a network failure or a full disk), 2 unusable input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..core.errors import EXIT_FAILED, McardError
from ..core.units import format_size as _size
from .errors import guarded
from .options import CreateOpt, EndpointOpt, JsonOpt, PrivateOpt, RegistryRootOpt, RepoOpt
from .output import print_json

INTERRUPTED = "interrupted; run the same command again to continue"


def _size_option(text: str) -> int:
    from ..registry.schema import parse_size

    try:
        return parse_size(int(text) if text.strip().isdigit() else text, "--max-shard-size")
    except McardError as exc:
        raise typer.BadParameter(exc.message) from None


def package(
    entry: Annotated[Path, typer.Argument(help="The registry entry (.toml) of the repo to package.")],
    from_dir: Annotated[Path | None, typer.Option("--from", help="Quantizer outputs: DIR/<branch>/ or DIR/<file>.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Package folder (default packages/<repo>).")] = None,
    base: Annotated[Path | None, typer.Option("--base", help="The base model's folder (config, tokenizer).")] = None,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Shard safetensors bigger than this.")] = "5GB",
    allow_failing: Annotated[bool, typer.Option("--allow-failing", help="Package variants that fail validate.")] = False,
    registry_root: RegistryRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Assemble each branch of the entry's repo (weights, configs, tokenizer, card) into a checked folder.

    With --json: the plan, per branch each file's size, sha256 and source.
    """
    from ..pipeline.package import package as build

    shard = _size_option(max_shard_size)
    pkg = guarded(as_json, lambda: build(entry, from_dir, out, base_dir=base, max_shard_size=shard,
                                         allow_failing=allow_failing, registry_root=registry_root), INTERRUPTED)
    if as_json:
        print_json(pkg.to_dict())
        return
    for b in pkg.branches:
        typer.echo(f"{b.branch}  ({', '.join(b.variants)})")
        for f in b.files:
            typer.echo(f"  {f.path:<40} {_size(f.size):>10}  {'LFS' if f.lfs else 'git'}  {f.source}")
        for path, why in b.ignored:
            typer.echo(f"  not packaged: {path} ({why})")
    for c in pkg.checks:
        if not c.ok:
            typer.echo(f"validate failed (packaged with --allow-failing): {c.variant}: "
                       f"{(c.source_errors or c.package_errors or [''])[0]}", err=True)
    n = len(pkg.branches)
    typer.echo(f"package: {pkg.root} ({n} branch{'es' if n != 1 else ''}, "
               f"{_size(sum(f.size for b in pkg.branches for f in b.files))})")


def _print_publish(result: Any, dry_run: bool) -> None:
    for b in result.branches:
        counts = ", ".join(f"{b.count(s)} {s}" for s in ("added", "updated", "deleted", "unchanged", "kept")
                           if b.count(s))
        commit = (b.commit or b.head or "-")[:10]
        state = "verified" if b.verified else ("dry run" if dry_run else "NOT verified")
        verb = "to send" if dry_run else "sent"
        typer.echo(f"{b.branch:<36} {commit:<10}  {counts}  {_size(b.uploaded_bytes)} {verb}  {state}")
        if dry_run:
            for f in b.files:
                if f.status != "unchanged":
                    typer.echo(f"  {f.status:<9} {f.path:<40} {_size(f.size):>10}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    what = "would send" if dry_run else "sent"
    typer.echo(f"{result.repo} on {result.endpoint}: {what} {_size(result.uploaded_bytes)}"
               + ("" if dry_run else (", every branch verified" if result.ok else ", NOT verified")))


def publish(
    entry: Annotated[Path, typer.Argument(help="The registry entry (.toml) of the repo.")],
    from_dir: Annotated[Path | None, typer.Option("--from", help="Package from these quantizer outputs first.")] = None,
    packaged: Annotated[Path | None,
                        typer.Option("--packaged", help="Publish this package folder (mcard package --out).")] = None,
    out: Annotated[Path | None,
                   typer.Option("--out", help="With --from: where the package goes (default packages/<repo>).")] = None,
    branch: Annotated[list[str] | None, typer.Option("--branch", help="Only this branch (repeatable).")] = None,
    repo: RepoOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print per branch what would be added, updated, deleted.")] = False,
    create: CreateOpt = False,
    private: PrivateOpt = False,
    delete_extra: Annotated[bool, typer.Option("--delete-extra", help="Delete branch files the package does not have.")] = False,
    endpoint: EndpointOpt = None,
    xet: Annotated[bool, typer.Option("--xet", help="Let huggingface_hub upload through Xet storage (hf_xet).")] = False,
    registry_root: RegistryRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Push the packaged branches to the Hub: one commit per changed branch, nothing resent, read back and verified."""
    from ..pipeline.package import load_package, package as build
    from ..pipeline.publish import publish as push
    from ..registry.entry import load_entry

    def run() -> Any:
        if (from_dir is None) == (packaged is None):
            from ..core.errors import UnusableInput

            raise UnusableInput("give exactly one of --from DIR (package, then publish) and --packaged OUT")
        the_entry = load_entry(entry, registry_root)
        if packaged is not None:
            pkg = load_package(packaged)
            if pkg.repo != the_entry.model.repo:
                from ..core.errors import UnusableInput

                raise UnusableInput(f"the package is for {pkg.repo}, the entry for {the_entry.model.repo}", packaged)
        else:
            pkg = build(entry, from_dir, out, registry_root=registry_root)
        from ..hub.progress import RichReporter

        reporter = RichReporter() if sys.stderr.isatty() and not as_json and not dry_run else None
        return push(pkg, repo=repo, endpoint=endpoint, branches=branch, dry_run=dry_run, create=create,
                    private=private, delete_extra=delete_extra, reporter=reporter, xet=xet)

    result = guarded(as_json, run, INTERRUPTED)
    if as_json:
        print_json(result.to_dict())
    else:
        _print_publish(result, dry_run)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)
