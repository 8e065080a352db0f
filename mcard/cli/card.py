"""``mcard card render`` and ``check``: parse, call :mod:`mcard.card.render` or :mod:`mcard.card.check`, print."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..core.errors import EXIT_FAILED, UnusableInput
from .errors import command_errors
from .options import JsonOpt, RegistryRootOpt

card = typer.Typer(
    help="Model cards from the registry: render them, check them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@card.command("render")
def render(
    entry: Path = typer.Argument(..., help="A registry entry, registry/NAME.toml."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the card here (default: stdout)."),
    variants: Path | None = typer.Option(
        None, "--variants", help="Folder with one subfolder per branch (or the GGUF/GGML files): sizes are measured."
    ),
    template: str | None = typer.Option(None, "--template", help="A template file (or a name in templates/)."),
    registry_root: RegistryRootOpt = None,
) -> None:
    """Render README.md for a repo from its registry entry (deterministic: same inputs, same bytes)."""
    from ..card.render import render_card

    with command_errors():
        text = render_card(entry, variants_dir=variants, template=template, registry_root=registry_root)
        if output is None:
            sys.stdout.write(text)
            return
        try:
            output.write_text(text, encoding="utf-8", newline="\n")
        except OSError as exc:
            raise UnusableInput(f"cannot write: {exc.strerror or exc}", output) from None
    typer.echo(f"wrote {output}", err=True)


@card.command("check")
def check(
    card_path: Path = typer.Argument(..., metavar="README.md", help="A model card (README.md)."),
    registry: Path | None = typer.Option(None, "--registry", help="Its registry entry: rows and sizes must agree."),
    as_json: JsonOpt = False,
    registry_root: RegistryRootOpt = None,
) -> None:
    """Check a card: metadata, model-index round trip and, with --registry, its provided-files table."""
    from ..card.check import check_card
    from . import output as _output

    with command_errors(as_json):
        report = check_card(card_path, registry_path=registry, registry_root=registry_root)
    if as_json:
        _output.print_json(report.to_dict())
    else:
        _output.print_report(report)
    raise typer.Exit(0 if report.ok else EXIT_FAILED)
