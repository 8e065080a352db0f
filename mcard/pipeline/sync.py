"""``mcard sync``: fetch -> validate -> smoke -> record, for every variant of registry entries.

One variant's failure never stops the others. Each variant's outcome is kept
in ``<report dir>/variants/<key>.json`` as ``{"latest": ..., "last_pass": ...}``:
a failed run updates ``latest`` only, so nothing already reported as passing
is lost. A variant is skipped (``--force`` runs it anyway) only when its latest
run passed and its last passing record has the same commit, the same mcard
version, the same registry content for the variant (:func:`variant_digest`)
and covered every stage now requested; a skip never writes ``latest``. So
re-running after an interruption continues where it stopped, and a variant
that failed stays failed until a run passes. ``report.json`` and
``report.md`` summarise the latest state of every variant of the repo.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import McardError, UnusableInput
from ..registry.entry import Entry, RegistryVariant, load_entry
from .package_configs import registry_mismatches
from .plan import batch_selection, entry_paths
from .sync_report import (
    FAILED,
    PASSED,
    SKIPPED,
    ReportStore,
    RepoSync,
    SyncOptions,
    VariantRecord,
    chosen_variants,
    entry_report_dir,
    write_report_file,
)


def sync(target: str | Path, options: SyncOptions | None = None,
         progress: Callable[[VariantRecord], None] | None = None) -> list[RepoSync]:
    """Sync every entry named by ``target``; returns one :class:`RepoSync` per entry."""
    options = options or SyncOptions()
    paths = entry_paths(target)
    one_of_many = len(paths) > 1
    only: dict[Path, set[str]] | None = None
    if options.batch is not None:
        only = batch_selection(target, options.batch, options.max_jobs, options.registry_root)
        paths = [p for p in paths if p in only]
    if options.variant is not None:
        _check_variant_exists(paths, options.variant, target, options.registry_root)
    results = []
    for path in paths:
        results.append(sync_entry(path, options, progress, one_of_many=one_of_many,
                                  only=None if only is None else only[path]))
    return results



def _check_variant_exists(paths: list[Path], key: str, target: str | Path,
                          registry_root: Path | None = None) -> None:
    """``--variant`` names no variant: bad usage (exit 2), with the variants there are."""
    keys: list[str] = []
    for path in paths:
        keys += [v.key for v in load_entry(path, registry_root).variants]
    if key in keys:
        return
    keys = list(dict.fromkeys(keys))
    shown = ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "")
    where = paths[0].name if len(paths) == 1 else "any entry"
    raise UnusableInput(f"--variant {key!r}: no such variant in {where}; variants: {shown}", target)


def sync_entry(path: Path, options: SyncOptions, progress: Callable[[VariantRecord], None] | None = None,
               one_of_many: bool = False, only: set[str] | None = None) -> RepoSync:
    """Sync one entry (its variants named in ``only``, when given).

    With ``--report DIR`` and a registry folder, each repo gets ``DIR/<repo>``.
    """
    if options.publish:
        from .sync_publish import publish_entry

        return publish_entry(path, options, progress, one_of_many, only)
    entry = load_entry(path, options.registry_root)
    report_dir = entry_report_dir(options, entry.model.repo, one_of_many)
    store = ReportStore(report_dir)
    result = RepoSync(str(path), entry.model.repo, str(report_dir))
    chosen = chosen_variants(entry, options, only)
    local_paths: dict[str, Path] = {}
    for v in chosen:
        record = _sync_variant(entry, v, options, store)
        store.save(record)
        result.records.append(record)
        if record.local_path and record.status != FAILED:
            local_paths[v.key] = Path(record.local_path)
        if progress is not None:
            progress(record)
    all_records = store.latest_all()
    store.write_summary(entry, all_records)
    if options.render:
        result.card_path = str(_render(entry, store, all_records, local_paths, options.registry_root))
    return result


# -- one variant ---------------------------------------------------------------------


def variant_digest(entry: Entry, v: RegistryVariant) -> str:
    """sha256 of what the registry says about one variant: its table, the repo and the architecture."""
    doc = {"repo": entry.model.repo, "variant": asdict(v), "architecture": entry.architecture}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def requested_stages(options: SyncOptions) -> list[str]:
    return ["fetch", "validate"] + (["smoke"] if options.smoke else [])


def _sync_variant(entry: Entry, v: RegistryVariant, options: SyncOptions, store: ReportStore) -> VariantRecord:
    from ..card.rows import predict

    started = time.monotonic()
    record = VariantRecord(entry.model.repo, v.key, v.format, v.branch, published_bytes=v.size,
                           stages=requested_stages(options), registry_digest=variant_digest(entry, v))
    try:
        record.predicted_bytes = predict(entry, v)[0]
    except McardError:
        record.predicted_bytes = None
    try:
        _run_stages(entry, v, options, store, record)
    except McardError as exc:
        record.status, record.reason = FAILED, exc.message if exc.path is None else str(exc)
    record.seconds = round(time.monotonic() - started, 3)
    return record


def _run_stages(entry: Entry, v: RegistryVariant, options: SyncOptions, store: ReportStore,
                record: VariantRecord) -> None:
    from ..core.validate import inspect
    from ..hub.download import fetch

    hub: dict[str, Any] = {"endpoint": options.endpoint, "token": options.token, "cache_dir": options.cache_dir}
    files = [v.file] if v.file else []
    # Resolve the commit first (metadata only) to skip unchanged, passing variants.
    record.stage = "fetch"
    plan = fetch(entry.model.repo, files, revision=v.branch, dry_run=True, **hub)
    record.commit = plan.commit
    last = None if options.force else _skippable(store, record)
    if last is not None:
        _copy_measurements(last, record)
        record.stages = list(last.stages)
        record.status, record.stage = SKIPPED, ""
        record.reason = (f"unchanged since the last passing run (commit {plan.commit[:12]}, mcard {__version__}, "
                         f"same registry entry, covered {'+'.join(last.stages)})")
        return

    fetched = fetch(entry.model.repo, files, revision=plan.commit, **hub)
    fetched.raise_for_failures()
    local = Path(fetched.target) / v.file if v.file else Path(fetched.target)
    record.local_path = str(local)

    record.stage = "validate"
    report = inspect(local)
    errors = [f for f in report.all_findings() if f.severity.value == "error"]
    record.validate_errors = [f"{f.code}: {f.file} {f.where} {f.message}".replace("  ", " ") for f in errors]
    record.measured_bytes = report.actual_bytes
    if report.predicted_bytes is not None:  # validate's prediction knows the file's own header: one per variant
        record.predicted_bytes = report.predicted_bytes
    mismatches = registry_mismatches(v, report.params)
    record.validate_errors.extend(mismatches)
    record.validate = "ok" if not record.validate_errors else "failed"
    if record.validate_errors:
        raise McardError(record.validate_errors[0] + (
            f" (+{len(record.validate_errors) - 1} more)" if len(record.validate_errors) > 1 else ""))

    record.stage = "smoke"
    if not options.smoke:
        record.smoke = "skipped"
    else:
        _smoke(local, options, record)
    record.status, record.stage, record.reason = PASSED, "", record.reason or ""


def _skippable(store: ReportStore, record: VariantRecord) -> VariantRecord | None:
    """The last passing record when this run may be skipped, else None.

    Skipped only when the latest run did not fail and the last pass ran on the same commit,
    mcard version and registry content, covered every stage requested now, and its files
    are still there.
    """
    latest, last = store.latest(record.variant), store.last_pass(record.variant)
    if latest is None or latest.status == FAILED or last is None:
        return None
    same = (last.commit == record.commit and last.tool_version == __version__
            and last.registry_digest is not None and last.registry_digest == record.registry_digest)
    covered = set(record.stages) <= set(last.stages)
    if same and covered and last.local_path and Path(last.local_path).exists():
        return last
    return None


def _smoke(local: Path, options: SyncOptions, record: VariantRecord) -> None:
    from .. import formats
    from ..smoke.run import run

    if formats.by_alias(record.format).kernel_tolerance is None:  # the format has no smoke layers
        record.smoke = "n/a"
        return
    try:
        result = run(local, device=options.device, layers=options.smoke_layers,
                     batches=list(options.smoke_batches), seed=0)
    except UnusableInput as exc:
        # A format or tensor type without kernel or reference: recorded, not a failure.
        record.smoke, record.reason = "n/a", f"smoke: {exc.message}"
        return
    errors = [r.rel_error for r in result.layers if r.rel_error is not None]
    record.smoke_max_error = max(errors) if errors else None
    record.kernels_run = result.kernels_run
    if not result.ok:
        bad = next(r for r in result.layers if not r.ok)
        record.smoke = "failed"
        raise McardError(f"smoke: layer {bad.name} batch {bad.batch} relative error {bad.rel_error} "
                         f"over {bad.threshold} ({'kernel' if result.kernels_run else 'reference'})")
    record.smoke = "passed" if result.kernels_run else "reference-only"


def _copy_measurements(last: VariantRecord, record: VariantRecord) -> None:
    for name in ("measured_bytes", "predicted_bytes", "validate", "smoke", "smoke_max_error", "kernels_run",
                 "local_path"):
        setattr(record, name, getattr(last, name))


# -- reports ---------------------------------------------------------------------------


def _render(entry: Entry, store: ReportStore, records: list[VariantRecord], local_paths: dict[str, Path],
            registry_root: Path | None = None) -> Path:
    """The card of what passed: a variant gets a row (sized and rated from its measured files) only when it
    passed in this run (``local_paths``) or its latest run passed against the registry content of today;
    the others are named under the table."""
    from ..card.render import render_card

    latest = {r.variant: r for r in records}
    paths: dict[str, Path] = {}
    left_out: dict[str, str] = {}
    for v in entry.variants:
        r = latest.get(v.key)
        if v.key in local_paths and local_paths[v.key].exists():  # passed (or was skipped as unchanged) this run
            paths[v.key] = local_paths[v.key]
            continue
        path = Path(r.local_path) if r is not None and r.local_path else None
        if r is None:
            left_out[v.key] = "not checked yet"
        elif r.status == FAILED:
            reason = r.reason if len(r.reason) <= 200 else r.reason[:197] + "..."
            left_out[v.key] = f"failed at {r.stage or 'sync'}: {reason}"
        elif r.registry_digest != variant_digest(entry, v):
            left_out[v.key] = "its registry entry changed since it passed; sync it again"
        elif path is None or not path.exists():
            left_out[v.key] = "its files are no longer where it passed; sync it again"
        else:
            paths[v.key] = path
    text = render_card(entry.path, variant_paths=paths, listed=set(paths), left_out=left_out,
                       registry_root=registry_root)
    out = store.root / "README.md"
    write_report_file(store.root, out, text)
    return out
