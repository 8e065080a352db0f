"""The ``mcard`` command line: parses arguments, calls the library, prints (``from mcard.cli import app, main``).

One module per command group (:mod:`.validate`, :mod:`.hub`, :mod:`.card`, :mod:`.smoke`,
:mod:`.sync`, :mod:`.publish`), wired explicitly below; the options they share are
:mod:`.options`; how every command fails is :mod:`.errors` (one table: 0 ok, 1 the check
failed, 2 unusable input, bad usage or an internal error, 3 no GPU where one was required,
130 interrupted); what they print goes through :mod:`.output` (one console, one size format).
"""

from __future__ import annotations

import sys

import typer

from .. import __version__
from . import card as _card, hub as _hub, publish as _publish, smoke as _smoke, sync as _sync, validate as _validate
from .errors import run_app

app = typer.Typer(
    help="Fetch, validate, size, smoke-test and document quantized LLM variants.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mcard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print mcard's version (from the installed package) and exit."),
) -> None:
    """Fetch, validate, size, smoke-test and document quantized LLM variants."""
    from ..core.safetext import redact_process_output

    # everything a command prints passes the one redaction step (mcard.core.safetext), whoever built the text
    ctx.call_on_close(redact_process_output())


def version() -> None:
    """Print mcard's version."""
    typer.echo(__version__)


# Explicit wiring: each command group is a module of this package.
app.command("validate")(_validate.validate)
app.command("size")(_validate.size)
app.command("version")(version)

app.command("branches")(_hub.branches)
app.command("fetch")(_hub.fetch)
app.add_typer(_card.card, name="card")
app.command("smoke")(_smoke.smoke)
app.command("sync")(_sync.sync)
app.command("plan")(_sync.plan)
app.command("demo")(_sync.demo)
app.command("package")(_publish.package)
app.command("publish")(_publish.publish)


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
