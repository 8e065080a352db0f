"""``mcard validate`` and ``mcard size``: parse, call :mod:`mcard.core.validate` / :mod:`mcard.core.size`, print."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..core.errors import EXIT_FAILED, UnusableInput
from .errors import command_errors
from .options import JsonOpt, RevisionOpt

if TYPE_CHECKING:
    from ..formats import BadParam


def validate(
    path: str = typer.Argument(..., help="A variant folder or model file, or a Hub REPO[:BRANCH] or URL (checked remotely)."),
    revision: RevisionOpt = None,
    mirror: Path | None = typer.Option(None, "--mirror", help="Keep the sparse mirror of a Hub repo in this new folder."),
    as_json: JsonOpt = False,
) -> None:
    """Check a variant from its headers and configs: tensors, quant config, sizes, runtimes.

    A Hub repo is checked remotely, reading only headers and the small tensors validate needs.
    """
    from ..core.validate import inspect
    from . import output as _output

    with command_errors(as_json):
        if Path(path).exists():
            if revision is not None or mirror is not None:
                raise UnusableInput("--revision and --mirror apply to a Hub repo, not a local path", path)
            report = inspect(path)
        else:
            report = _inspect_remote(path, revision, mirror)
    if as_json:
        _output.print_json(report.to_dict())
    else:
        _output.print_report(report)
    raise typer.Exit(0 if report.ok else EXIT_FAILED)


def _inspect_remote(text: str, revision: str | None, mirror: Path | None):
    """``validate REPO[:BRANCH]``: a missing local path that names a Hub repo is validated on the Hub."""
    from ..core.errors import McardError
    from ..hub.refs import parse_repo_spec
    from ..hub.remote_validate import inspect_remote

    try:
        spec = parse_repo_spec(text, revision)
    except UnusableInput:
        if revision is not None or mirror is not None:
            raise
        raise UnusableInput("no such file or folder (nor a Hub REPO[:BRANCH])", text) from None
    try:
        return inspect_remote(spec, mirror=mirror)
    except McardError as exc:
        if "://" in text:  # a Hub URL is no local path: the Hub's answer alone
            raise
        # `org/name` is also a relative path: say both what is not here and what the Hub said
        said = exc.message if exc.path in (text, spec.repo_id) else str(exc)
        for prefix in (f"{text}: ", f"{spec.repo_id}: "):
            said = said.removeprefix(prefix)
        raise UnusableInput(f"no such file or folder; as a Hub repo: {said}", text) from None


# `mcard size` options -> the format parameters they set (mcard.formats.<module>.PARAMS).
SIZE_OPTIONS = {"bits": "--bits", "group_size": "--group-size", "desc_act": "--act-order", "type": "--type",
                "double_quant": "--double-quant", "r": "--rank", "target_modules": "--target-modules",
                "writer": "--writer", "split_max_size": "--split-max-size", "imatrix": "--imatrix"}


def _expected(fmt: str, key: str) -> str:
    """The valid values of a format's parameter, in words, from the format module's own PARAMS."""
    from .. import formats

    return formats.params_of(fmt)[key].expected


def _size_formats() -> str:
    from ..formats import aliases

    return ", ".join(aliases())


def _option_error(exc: BadParam, fmt: str) -> UnusableInput:
    """A parameter problem in the words of the command line: option names, not parameter names."""
    option = SIZE_OPTIONS.get(exc.key, exc.key)
    takes = ", ".join(SIZE_OPTIONS.get(k, k) for k in exc.takes) or "no options"
    if exc.reason == "not-applicable":
        return UnusableInput(f"{option} does not apply to --format {fmt} (it takes {takes})")
    return UnusableInput(f"{option}: {exc.problem}")


def size(
    config: Path = typer.Argument(..., help="A model's config.json (or its folder)."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"One of: {_size_formats()}."),
    bits: int | None = typer.Option(
        None, help=f"gptq: {_expected('gptq', 'bits')} (default 4); awq: {_expected('awq', 'bits')}."),
    group_size: int | None = typer.Option(
        None, "--group-size", "-g", help=f"gptq/awq group size: {_expected('gptq', 'group_size')} (default 128)."),
    act_order: bool | None = typer.Option(None, "--act-order/--no-act-order", help="gptq: desc_act (no size change)."),
    writer: str | None = typer.Option(
        None, "--writer", help=f"gptq: the writer whose layout to predict, {_expected('gptq', 'writer')} "
        "(default autogptq: a bias on every linear; gptqmodel writes none)."),
    qtype: str | None = typer.Option(
        None, "--type", "-t", help=f"gguf/ggml (required): the llama.cpp type; gguf: {_expected('gguf', 'type')}; "
        f"ggml: {_expected('ggml', 'type')}."),
    split_max_size: str | None = typer.Option(
        None, "--split-max-size",
        help=f"gguf: the shard sizes gguf-split writes for this size, {_expected('gguf', 'split_max_size')}."),
    imatrix: bool | None = typer.Option(
        None, "--imatrix/--no-imatrix", help="gguf: quantized with an importance matrix (a few tensor types differ)."),
    double_quant: bool | None = typer.Option(
        None, "--double-quant/--no-double-quant", help="nf4/fp4: nested absmax (default: on)."),
    rank: int | None = typer.Option(None, "--rank", help=f"lora: the rank r, {_expected('lora', 'r')} (default 64)."),
    target_modules: str | None = typer.Option(
        None, "--target-modules",
        help=f"lora: comma-separated, {_expected('lora', 'target_modules')} (default: all of them)."),
    per_tensor: bool = typer.Option(False, "--per-tensor", help="List every tensor."),
    as_json: JsonOpt = False,
) -> None:
    """Predict a variant's exact size from config.json and quant parameters, without weights.

    An option that does not apply to the format, or a value the format cannot represent, is refused (exit 2).
    """
    from ..core.size import predict_size
    from ..formats import BadParam
    from . import output as _output

    modules = None if target_modules is None else [m.strip() for m in target_modules.split(",") if m.strip()]
    params = {
        k: v
        for k, v in {
            "bits": bits, "group_size": group_size, "desc_act": act_order, "type": qtype, "double_quant": double_quant,
            "r": rank, "target_modules": modules, "writer": writer, "split_max_size": split_max_size, "imatrix": imatrix,
        }.items()
        if v is not None
    }
    with command_errors(as_json):
        try:
            est = predict_size(config, fmt, **params)
        except BadParam as exc:
            raise _option_error(exc, fmt) from None
    if as_json:
        _output.print_json(est.to_dict(per_tensor=per_tensor))
    else:
        _output.print_size(est, per_tensor=per_tensor)
