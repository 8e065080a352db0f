"""``mcard sync ENTRY --publish --from DIR``: package -> validate -> smoke -> publish -> verify, per variant.

The whole entry is packaged once (:func:`mcard.pipeline.package.package`, failing
variants kept out of the publish rather than stopping the others); each
variant is recorded at the stage where it stopped, in the same per-variant
records and summary as ``mcard sync``. A branch is published only when every
variant on it passed validate and smoke. ``verify`` fetches each published
branch back through the normal verified fetch (:func:`mcard.hub.download.fetch`,
pinned to the new commit) and compares every file's sha256 with the package.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..core.errors import CheckFailed, McardError
from ..registry.entry import Entry, load_entry
from .package import Package
from .sync import _render, _smoke
from .sync_report import (
    FAILED,
    PASSED,
    ReportStore,
    RepoSync,
    SyncOptions,
    VariantRecord,
    chosen_variants,
    entry_report_dir,
)


def _fail(record: VariantRecord, stage: str, reason: str) -> None:
    record.status, record.stage, record.reason = FAILED, stage, reason


def publish_entry(path: Path, options: SyncOptions, progress: Callable[[VariantRecord], None] | None = None,
                  one_of_many: bool = False, only: set[str] | None = None) -> RepoSync:
    from ..card.rows import predict
    from .package import package
    from .publish import publish

    started = time.monotonic()
    entry = load_entry(path, options.registry_root)
    report_dir = entry_report_dir(options, entry.model.repo, one_of_many)
    store = ReportStore(report_dir)
    repo = options.repo or entry.model.repo
    result = RepoSync(str(path), repo, str(report_dir))
    chosen = chosen_variants(entry, options, only)
    records = {v.key: VariantRecord(repo, v.key, v.format, v.branch, published_bytes=v.size, stage="package")
               for v in chosen}
    for v in chosen:
        try:
            records[v.key].predicted_bytes = predict(entry, v)[0]
        except McardError:
            pass

    pkg = None
    try:
        pkg = package(path, options.from_dir, options.package_dir, allow_failing=True,
                      registry_root=options.registry_root)
    except McardError as exc:
        for r in records.values():
            _fail(r, "package", str(exc))
    published: dict[str, tuple[str, int, bool]] = {}
    checked: set[str] = set()  # variants that passed validate and smoke
    if pkg is not None:
        checks = {c.variant: c for c in pkg.checks}
        for v in chosen:
            r, c = records[v.key], checks[v.key]
            errors = c.source_errors or c.package_errors or []
            r.validate = "failed" if errors else "ok"
            r.validate_errors = list(errors)
            local = pkg.root / pkg.branch(v.branch).folder
            local = local / v.file if v.spec.files_are_variants and v.file else local
            r.measured_bytes = sum(f.size for f in pkg.branch(v.branch).files
                                   if (f.path == v.file if v.spec.files_are_variants else f.path.endswith(".safetensors")))
            if errors:
                _fail(r, "validate", errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
                continue
            r.stage = "smoke"
            if not options.smoke:
                r.smoke = "skipped"
            else:
                try:
                    _smoke(local, options, r)
                except McardError as exc:
                    _fail(r, "smoke", exc.message)
                    continue
            r.stage = "publish"
            checked.add(v.key)
        ready = [b.branch for b in pkg.branches
                 if any(k in records for k in b.variants) and all(k in checked for k in b.variants if k in records)]
        blocked = {b.branch for b in pkg.branches} - set(ready)
        for b in pkg.branches:
            if b.branch in blocked:
                for k in b.variants:
                    if k in checked:
                        _fail(records[k], "publish", f"not published: another variant on branch {b.branch} failed")
        if ready:
            try:
                res = publish(pkg, repo=options.repo, endpoint=options.endpoint, token=options.token, branches=ready,
                              create=options.create, private=options.private)
                published = {b.branch: (b.commit or "", b.uploaded_bytes, b.commit != b.head) for b in res.branches}
            except McardError as exc:
                for name in ready:
                    for k in pkg.branch(name).variants:
                        if k in records:
                            _fail(records[k], "publish", str(exc))
                            records[k].publish = "failed"
        for branch, (commit, sent, changed) in published.items():
            _verify_branch(entry, pkg, repo, branch, (commit, sent, changed), records, options)
    for r in records.values():
        r.seconds = round(time.monotonic() - started, 3)
        store.save(r)
        result.records.append(r)
        if progress is not None:
            progress(r)
    all_records = store.latest_all()
    store.write_summary(entry, all_records)
    if options.render:
        paths = {r.variant: Path(r.local_path) for r in result.records if r.local_path and r.status == PASSED}
        result.card_path = str(_render(entry, store, all_records, paths, options.registry_root))
    return result


def _verify_branch(entry: Entry, pkg: Package, repo: str, branch: str, outcome: tuple[str, int, bool],
                   records: dict[str, VariantRecord], options: SyncOptions) -> None:
    """Fetch ``branch`` at its new commit through the verified fetch and compare every file with the package."""
    from ..hub.download import fetch

    commit, sent, changed = outcome
    b = pkg.branch(branch)
    mine = [records[k] for k in b.variants if k in records]
    for r in mine:
        r.commit, r.uploaded_bytes, r.stage = commit, sent, "verify"
        r.publish = "published" if changed else "unchanged"
    try:
        fetched = fetch(repo, revision=commit, endpoint=options.endpoint, token=options.token,
                        cache_dir=options.cache_dir)
        fetched.raise_for_failures()
        got = {f.path: f.sha256 for f in fetched.files}
        for f in b.files:
            if got.get(f.path) != f.sha256:
                raise CheckFailed(f"fetched back {f.path} at {commit[:12]}: sha256 {got.get(f.path)} "
                                  f"differs from the package's {f.sha256}")
        extra = sorted(set(got) - {f.path for f in b.files})
    except McardError as exc:
        for r in mine:
            _fail(r, "verify", str(exc))
        return
    for r in mine:
        v_file = next((v.file for v in entry.variants if v.key == r.variant and v.spec.files_are_variants), None)
        r.local_path = str(Path(fetched.target) / v_file) if v_file else fetched.target
        r.status, r.stage = PASSED, ""
        if extra:
            r.reason = f"the branch also holds {len(extra)} file(s) not in the package (kept): {', '.join(extra[:3])}"
