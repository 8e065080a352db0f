"""What ``mcard sync`` records: a variant's outcome, a repo's run, the options, and the report folder.

A report folder holds ``variants/<key>.json`` (each variant's latest and last passing record,
read capped: it is a file anyone could have planted), ``report.json`` and ``report.md``; every
file is written redacted, atomically, never through a symlink out of the folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import McardError, UnusableInput
from ..core.pathguard import Target
from ..core.safetext import redact
from ..core.units import format_size
from ..core.untrusted import read_capped
from ..registry.entry import Entry, RegistryVariant
from .plan import MAX_MATRIX_JOBS

MAX_RECORD_BYTES = 4 * 1024 * 1024  # one variants/<key>.json record

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


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
    def from_dict(cls, data: Any) -> VariantRecord | None:
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


def entry_report_dir(options: SyncOptions, repo: str, one_of_many: bool) -> Path:
    """Where one entry's reports go: ``--report DIR`` (``DIR/<repo>`` when a registry folder is synced),
    else ``reports/<repo>/``."""
    if options.report_dir is None:
        return default_report_dir(repo)
    return options.report_dir / slug(repo) if one_of_many else options.report_dir


def chosen_variants(entry: Entry, options: SyncOptions, only: set[str] | None) -> list[RegistryVariant]:
    """The entry's variants this run syncs: ``--variant``, and those named in ``only`` (a plan's batch)."""
    return [v for v in entry.variants if options.variant in (None, v.key) and (only is None or v.key in only)]


class ReportStore:
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
        write_report_file(self.root, self._path(record.variant), json.dumps(data, indent=2, sort_keys=True) + "\n")

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
        write_report_file(self.root, self.root / "report.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
        write_report_file(self.root, self.root / "report.md", summary_markdown(entry.model.repo, records))


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



def write_report_file(root: Path, path: Path, text: str) -> None:
    """Write a report file under ``root``: redacted (no token reaches a report), atomically, never through a
    symlink out of the report folder (:class:`mcard.core.pathguard.Target`)."""
    Target(root).write_atomic(path, redact(text))
