"""``mcard smoke``: parses options, calls :func:`mcard.smoke.run.run`, prints. No logic here."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import EXIT_FAILED
from .options import DeviceOpt, JsonOpt


def smoke(
    path: Path = typer.Argument(..., help="A variant folder or a single model file."),
    device: DeviceOpt = "auto",
    layers: str = typer.Option("4", "--layers", help="How many quantized linears (spread over the depth), or 'all'."),
    batch: str = typer.Option("1,16", "--batch", help="Comma-separated batch sizes, each 1..32."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random fp16 activations."),
    require_gpu: bool = typer.Option(False, "--require-gpu", help="Exit 3 when no GPU can run the kernels."),
    as_json: JsonOpt = False,
) -> None:
    """Run quantized layers through the int4 CUDA kernels and compare with a float32 reference."""
    from .errors import command_errors

    with command_errors(as_json):
        from ..smoke.run import run

        result = run(path, device=device, layers=layers, batches=batch, seed=seed, require_gpu=require_gpu)
    if as_json:
        from .output import print_json

        print_json(result.to_dict())
    else:
        _print(result)
    raise typer.Exit(0 if result.ok else EXIT_FAILED)


def _print(result) -> None:
    from rich.table import Table

    from .output import console

    out = console()
    out.print(f"[bold]{result.path}[/]: format [bold]{result.format}[/], device {result.device}")
    out.print(result.message if result.kernels_run else f"[yellow]{result.message}[/]")
    table = Table(box=None, show_header=True, header_style="bold")
    for col in ("layer", "kind", "N x K", "batch", "engine", "rel err", "limit", "time", "GB/s", ""):
        table.add_column(col, overflow="fold")
    for r in result.layers:
        table.add_row(
            r.name, r.kind, f"{r.shape[0]}x{r.shape[1]}", str(r.batch), r.engine,
            "-" if r.rel_error is None else f"{r.rel_error:.2e}", f"{r.threshold:.0e}",
            "-" if r.time_us is None else f"{r.time_us:.1f} us", "-" if r.gbps is None else f"{r.gbps:.0f}",
            "[green]ok[/]" if r.ok else f"[bold red]FAIL[/] {r.note}",
        )
    out.print(table)
    failed = sum(not r.ok for r in result.layers)
    out.print("[bold green]OK[/]" if result.ok else f"[bold red]FAILED[/]: {failed} of {len(result.layers)} checks")
