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

import dataclasses
import hashlib
import json
import math
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..core.errors import McardError, UnusableInput
from ..registry.entry import Entry, RegistryVariant, load_entry
from ..core.pathguard import Target
from ..core.safetext import redact
from ..core.untrusted import read_capped

from ..core.units import format_size
from .package_configs import registry_mismatches

MAX_RECORD_BYTES = 4 * 1024 * 1024  # one variants/<key>.json record

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
# GitHub Actions runs at most 256 jobs from one matrix: beyond that `plan` batches variants per job.
MAX_MATRIX_JOBS = 256


@dataclass
class VariantRecord:
    """The outcome of one variant in one run (the rows of the summary table)."""

    repo: str
    variant: str
    format: str
    revision: str
    status: str = FAILED
    stage: str = ""  # the stage that failed: registry, fetch, validate, smoke
    reason: str = ""
    commit: str | None = None
    measured_bytes: int | None = None
    predicted_bytes: int | None = None
    published_bytes: int | None = None
    validate: str = "-"  # ok, failed, -
    validate_errors: list[str] = field(default_factory=list)
    smoke: str = "-"  # passed, failed, reference-only, skipped, n/a, -
    smoke_max_error: float | None = None
    kernels_run: bool = False
    local_path: str | None = None
    seconds: float = 0.0
    tool_version: str = __version__
    stages: list[str] = field(default_factory=list)  # what this run covered: fetch, validate, smoke
    registry_digest: str | None = None  # variant_digest() of the registry entry it ran against
    publish: str = "-"  # sync --publish: published, unchanged, failed, -
    uploaded_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "VariantRecord | None":
        """A record from its JSON form; None when it is not one (a field of the wrong type, missing keys)."""
        if not isinstance(data, dict):
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for name in ("repo", "variant", "format", "revision"):
            if not isinstance(values.get(name), str):
                return None
        for name, value in values.items():
            if not _fits(str(fields[name].type), value):
                return None
        return cls(**values)


@dataclass
class RepoSync:
    """The outcome of one registry entry."""

    entry: str
    repo: str
    report_dir: str
    records: list[VariantRecord] = field(default_factory=list)
    card_path: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.status != FAILED for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry, "repo": self.repo, "ok": self.ok, "report_dir": self.report_dir,
            "card": self.card_path, "variants": [r.to_dict() for r in self.records],
        }


@dataclass
class SyncOptions:
    variant: str | None = None
    smoke: bool = True
    render: bool = False
    report_dir: Path | None = None
    force: bool = False
    endpoint: str | None = None
    token: str | None = None
    cache_dir: Path | None = None
    smoke_layers: int = 2
    smoke_batches: tuple[int, ...] = (1,)
    device: str = "auto"
    registry_root: Path | None = None  # files named in entries may lie anywhere inside it
    batch: int | None = None  # run only job `batch` (1-based) of `mcard plan TARGET --max-jobs max_jobs`
    max_jobs: int = MAX_MATRIX_JOBS
    publish: bool = False  # package -> validate -> smoke -> publish -> verify (mcard.pipeline.sync_publish)
    from_dir: Path | None = None
    package_dir: Path | None = None
    create: bool = False
    private: bool = False
    repo: str | None = None


def entry_paths(target: str | Path) -> list[Path]:
    """A registry entry, or every ``*.toml`` directly inside a registry folder (sorted)."""
    target = Path(target)
    if target.is_dir():
        found = sorted(target.glob("*.toml"))
        if not found:
            raise UnusableInput("no *.toml registry entries in this folder", target)
        return found
    if not target.is_file():
        raise UnusableInput("no such registry entry or folder", target)
    return [target]


def _fits(kind: str, value: Any) -> bool:
    """Whether a stored value has the field's declared type (``str | None``, ``float``, ``list[str]``...)."""
    for k in (part.strip() for part in kind.split("|")):
        if (k == "None" and value is None or k == "str" and isinstance(value, str)
                or k == "bool" and isinstance(value, bool)
                or k == "int" and isinstance(value, int) and not isinstance(value, bool)
                or k == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)
                or k == "list[str]" and isinstance(value, list) and all(isinstance(x, str) for x in value)):
            return True
    return False


def slug(text: str) -> str:
    """A file-system-safe name for a repo id or variant key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text).strip("-") or "_"


def default_report_dir(repo: str) -> Path:
    return Path("reports") / slug(repo)


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
    if options.report_dir is None:
        report_dir = default_report_dir(entry.model.repo)
    else:
        report_dir = options.report_dir / slug(entry.model.repo) if one_of_many else options.report_dir
    store = _Store(Path(report_dir))
    result = RepoSync(str(path), entry.model.repo, str(report_dir))
    chosen = [v for v in entry.variants if options.variant in (None, v.key) and (only is None or v.key in only)]
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


def _sync_variant(entry: Entry, v: RegistryVariant, options: SyncOptions, store: "_Store") -> VariantRecord:
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


def _run_stages(entry: Entry, v: RegistryVariant, options: SyncOptions, store: "_Store",
                record: VariantRecord) -> None:
    from ..hub.download import fetch
    from ..core.validate import inspect

    hub = {"endpoint": options.endpoint, "token": options.token, "cache_dir": options.cache_dir}
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


def _skippable(store: "_Store", record: VariantRecord) -> VariantRecord | None:
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
    from ..smoke.run import run
    from .. import formats

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


class _Store:
    """Per-variant records under ``<dir>/variants``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.variants = root / "variants"

    def _path(self, key: str) -> Path:
        return self.variants / f"{slug(key)}.json"

    def _load(self, key: str) -> dict[str, Any]:
        path = self._path(key)
        if not path.is_file():
            return {}
        try:
            data = json.loads(read_capped(path, MAX_RECORD_BYTES).decode("utf-8"))
        except (McardError, OSError, ValueError, RecursionError):
            raise UnusableInput("unreadable sync record; move it away to start this variant afresh", path) from None
        return data if isinstance(data, dict) else {}

    def last_pass(self, key: str) -> VariantRecord | None:
        data = self._load(key).get("last_pass")
        return VariantRecord.from_dict(data) if isinstance(data, dict) else None

    def latest(self, key: str) -> VariantRecord | None:
        data = self._load(key).get("latest")
        return VariantRecord.from_dict(data) if isinstance(data, dict) else None

    def save(self, record: VariantRecord) -> None:
        """Record a run: ``latest`` always, ``last_pass`` when it passed; a skip writes nothing."""
        if record.status == SKIPPED:
            return
        data = self._load(record.variant)
        data["latest"] = record.to_dict()
        if record.status == PASSED:
            data["last_pass"] = record.to_dict()
        _atomic_write(self.root, self._path(record.variant), json.dumps(data, indent=2, sort_keys=True) + "\n")

    def latest_all(self) -> list[VariantRecord]:
        """The latest record of every variant in the folder; a corrupt neighbour is left out, not fatal."""
        if not self.variants.is_dir():
            return []
        out = []
        for path in sorted(self.variants.glob("*.json")):
            try:
                data = json.loads(read_capped(path, MAX_RECORD_BYTES).decode("utf-8"))
            except (McardError, ValueError, RecursionError):
                continue
            record = VariantRecord.from_dict(data.get("latest")) if isinstance(data, dict) else None
            if record is not None:
                out.append(record)
        return out

    def write_summary(self, entry: Entry, records: list[VariantRecord]) -> None:
        order = {v.key: i for i, v in enumerate(entry.variants)}
        records = sorted(records, key=lambda r: (order.get(r.variant, len(order)), r.variant))
        doc = {
            "repo": entry.model.repo, "entry": str(entry.path), "mcard": __version__,
            "ok": all(r.status != FAILED for r in records if r.variant in order),
            "variants": [r.to_dict() for r in records],
        }
        _atomic_write(self.root, self.root / "report.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
        _atomic_write(self.root, self.root / "report.md", summary_markdown(entry.model.repo, records))


def summary_markdown(repo: str, records: list[VariantRecord]) -> str:
    lines = [f"# mcard sync report: {repo}", "", f"mcard {__version__}", "",
             "| Variant | Status | Commit | Size measured | Size predicted | Validate | Smoke | Max rel. error | Time | Reason |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append("| " + " | ".join([
            r.variant, r.status, (r.commit or "-")[:12], format_size(r.measured_bytes), format_size(r.predicted_bytes),
            r.validate, r.smoke, f"{r.smoke_max_error:.2e}" if r.smoke_max_error is not None else "-",
            f"{r.seconds:.1f} s", r.reason.replace("|", "\\|") or "-",
        ]) + " |")
    return "\n".join(lines) + "\n"


def _render(entry: Entry, store: _Store, records: list[VariantRecord], local_paths: dict[str, Path],
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
    _atomic_write(store.root, out, text)
    return out


def _atomic_write(root: Path, path: Path, text: str) -> None:
    """Write a report file under ``root``: redacted (no token reaches a report), atomically, never through a
    symlink out of the report folder (:class:`mcard.core.pathguard.Target`)."""
    Target(root).write_atomic(path, redact(text))


# -- CI plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedVariant:
    """One variant of a plan: its entry, and whether smoke would run a CUDA kernel for it."""

    entry: str
    repo: str
    variant: str
    format: str
    gpu: bool


def planned_variants(target: str | Path, registry_root: str | Path | None = None) -> list[PlannedVariant]:
    """Every variant of ``target``, GPU ones first, then in registry order."""
    out = []
    for path in entry_paths(target):
        entry = load_entry(path, registry_root)
        arch = None if entry.architecture is None else json.dumps(entry.architecture, sort_keys=True)
        for v in entry.variants:
            out.append(PlannedVariant(path.as_posix(), entry.model.repo, v.key, v.format, needs_gpu(v, arch)))
    return sorted(out, key=lambda p: not p.gpu)  # stable: registry order within each group


def needs_gpu(v: RegistryVariant, architecture: str | None = None) -> bool:
    """Whether ``mcard smoke`` would run a CUDA kernel for this variant (asked of the kernel facts).

    ``architecture``: the entry's ``[architecture]`` as sorted JSON; it decides a GGUF mix's types.
    """
    return v.spec.kernel_runs(v, architecture)


def plan_batches(target: str | Path, max_jobs: int = MAX_MATRIX_JOBS,
                 registry_root: str | Path | None = None) -> list[list[PlannedVariant]]:
    """The variants of ``target`` in at most ``max_jobs`` jobs: one variant a job when they fit, else
    batches of equal size, each all-GPU or all-CPU. Deterministic: ``sync --batch I`` recomputes it."""
    if max_jobs < 1:
        raise UnusableInput(f"--max-jobs {max_jobs}: must be at least 1")
    variants = planned_variants(target, registry_root)
    if len(variants) <= max_jobs:
        return [[p] for p in variants]
    groups = [[p for p in variants if p.gpu], [p for p in variants if not p.gpu]]
    groups = [g for g in groups if g]
    if len(groups) > max_jobs:
        raise UnusableInput(f"--max-jobs {max_jobs}: GPU and CPU variants need at least {len(groups)} jobs")
    size = math.ceil(len(variants) / (max_jobs - len(groups) + 1))
    return [g[i:i + size] for g in groups for i in range(0, len(g), size)]


def batch_selection(target: str | Path, batch: int, max_jobs: int = MAX_MATRIX_JOBS,
                    registry_root: str | Path | None = None) -> dict[Path, set[str]]:
    """Entry path -> variant keys of job ``batch`` (1-based) of :func:`plan_batches`."""
    batches = plan_batches(target, max_jobs, registry_root)
    if not 1 <= batch <= len(batches):
        raise UnusableInput(f"--batch {batch}: the plan has jobs 1 to {len(batches)} (--max-jobs {max_jobs})", target)
    out: dict[Path, set[str]] = {}
    for p in batches[batch - 1]:
        out.setdefault(Path(p.entry), set()).add(p.variant)
    return out


def plan_jobs(target: str | Path, max_jobs: int = MAX_MATRIX_JOBS,
              registry_root: str | Path | None = None) -> list[dict[str, Any]]:
    """The CI jobs for ``target``: what a matrix runs with ``mcard sync TARGET --batch N``.

    Each job has ``batch`` (its number), ``gpu`` (a CUDA kernel would run: send it to a GPU runner),
    ``count`` and ``command``; a job of one variant also has ``entry``, ``repo``, ``variant`` and
    ``format``, and its command names them. Beyond ``max_jobs`` variants, jobs hold batches.
    """
    target_text = Path(target).as_posix()
    jobs = []
    batches = plan_batches(target, max_jobs, registry_root)
    limit = "" if max_jobs == MAX_MATRIX_JOBS else f" --max-jobs {max_jobs}"
    if registry_root is not None:
        limit += f" --registry-root {shlex.quote(Path(registry_root).as_posix())}"
    single = all(len(b) == 1 for b in batches)
    for i, batch in enumerate(batches, 1):
        job: dict[str, Any] = {"batch": i, "gpu": batch[0].gpu, "count": len(batch)}
        if single:
            p = batch[0]
            job.update(entry=p.entry, repo=p.repo, variant=p.variant, format=p.format,
                       command=f"mcard sync {shlex.quote(p.entry)} --variant {shlex.quote(p.variant)}{limit}")
        else:
            job["command"] = f"mcard sync {shlex.quote(target_text)} --batch {i}{limit}"
        jobs.append(job)
    return jobs
