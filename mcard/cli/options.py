"""The options several commands share, declared once as typed aliases (``Annotated``).

A command takes ``as_json: JsonOpt = False`` and gets the same flag, the same help and the same
behaviour as every other command with ``--json``: one JSON object on stdout, a failure too
(``{"ok": false, "error", "exit_code"}``, :mod:`mcard.cli.errors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object on stdout (a failure too: {\"ok\": false, \"error\", \"exit_code\"}).")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", "-r", help="Hub branch, tag or commit.")]
EndpointOpt = Annotated[str | None, typer.Option(
    "--endpoint", help="Hub endpoint (default $HF_ENDPOINT, else huggingface.co).")]
RegistryRootOpt = Annotated[Path | None, typer.Option(
    "--registry-root", help="Files named in the entry may lie anywhere in this folder (default: the entry's folder).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where the smoke test runs: auto, cuda or cpu.")]
RepoOpt = Annotated[str | None, typer.Option("--repo", help="Publish to this repo instead of the entry's.")]
CreateOpt = Annotated[bool, typer.Option("--create", help="Create the repo when it does not exist.")]
PrivateOpt = Annotated[bool, typer.Option("--private", help="With --create: a private repo.")]
