"""``mcard fetch`` as a library call: pin a revision, plan, download in parallel, verify, place.

:func:`fetch` resolves the revision to one commit, lists its files, applies
the selection rules (:mod:`mcard.hub.selection`), then downloads what is not
already present with a thread pool. A small file streams through
:func:`mcard.hub.transfer.download_verified` (hash while streaming, resume,
retries); a big one is fetched over several connections in ranges by
:func:`mcard.hub.parallel.download_parallel` (see :func:`mcard.hub.pieces.plan_ranges`),
and both write into the HF cache (:class:`~mcard.hub.cache.CacheLayout`) or a
plain folder (:class:`~mcard.hub.cache.LocalDirLayout`). Per-file failures
do not stop the other files; they are reported in the :class:`FetchResult`
and :meth:`FetchResult.raise_for_failures` turns them into an error.

With ``HF_HUB_OFFLINE`` set, the revision and its files come from the cache
alone (:func:`mcard.hub.cache.cached_revision`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import CheckFailed, McardError, UnusableInput
from ..core.pathguard import Target
from . import journal
from .cache import CacheLayout, LocalDirLayout, cached_revision, prepare_final
from .env import resolve_env
from .model import RemoteFile
from .parallel import download_parallel
from .pieces import AUTO_MAX_CONNECTIONS, plan_ranges
from .progress import NullReporter, Reporter
from .ratelimit import RateLimit
from .refs import parse_repo_spec
from .remote import HubClient
from .selection import select_files
from .transfer import Outcome, RetryPolicy, download_verified

Layout = CacheLayout | LocalDirLayout


@dataclass
class FileResult:
    """One file of the run: ``status`` is downloaded, resumed, cached, download (dry run) or failed."""

    path: str
    size: int
    status: str
    local_path: str
    sha256: str | None = None
    blob_id: str | None = None
    lfs: bool = False
    resumed_from: int = 0
    received: int = 0
    error: str | None = None
    failure: McardError | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "size": self.size, "sha256": self.sha256, "blob_id": self.blob_id or None,
               "lfs": self.lfs, "status": self.status, "local_path": self.local_path}
        if self.resumed_from:
            out["resumed_from"] = self.resumed_from
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class FetchResult:
    """The outcome of :func:`fetch`, serialisable with :meth:`to_dict` (the ``--json`` summary)."""

    repo_id: str
    revision: str
    kind: str
    commit: str
    target: str
    layout: str
    files: list[FileResult]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False
    offline: bool = False

    @property
    def ok(self) -> bool:
        return not any(f.status == "failed" for f in self.files)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def to_download(self) -> int:
        return sum(f.size for f in self.files if f.status in ("download", "downloaded", "resumed", "failed"))

    def failures(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    def raise_for_failures(self) -> None:
        """Raise CheckFailed/McardError naming the first failed file (others are in ``files``)."""
        failed = self.failures()
        if not failed:
            return
        first = failed[0]
        more = f" (and {len(failed) - 1} more failed files)" if len(failed) > 1 else ""
        cls = CheckFailed if isinstance(first.failure, CheckFailed) else McardError
        raise cls(f"{first.error}{more}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id, "revision": self.revision, "kind": self.kind, "commit": self.commit,
            "target": self.target, "layout": self.layout, "dry_run": self.dry_run, "offline": self.offline,
            "ok": self.ok, "total_size": self.total_size, "files": [f.to_dict() for f in self.files],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cached_result(layout: Layout, rf: RemoteFile, local: Path) -> FileResult:
    sha = rf.sha256 or (_file_sha256(local) if local.exists() else None)
    return FileResult(rf.path, rf.size, "cached", str(local), sha, rf.blob_id, rf.lfs)


@dataclass(frozen=True)
class _Transfer:
    """How files travel: connections per file (None: from the size), piece size, the run's rate cap."""

    connections: int | None = None
    piece: int | None = None
    limit: RateLimit | None = None


def _download(client: HubClient, layout: Layout, rf: RemoteFile, final: Path, policy: RetryPolicy,
              reporter: Reporter, cancel: threading.Event, how: _Transfer) -> Outcome:
    """One file over one connection, or in ranges over several (a big file, or a journal from such a run)."""
    url = client.file_url(layout.rev.repo_id, layout.rev.commit, rf.path)
    partial = layout.partial_path(rf)
    plan = plan_ranges(rf.size, how.connections, how.piece)
    reset = lambda pos: reporter.file_position(rf.path, pos)  # noqa: E731
    if plan.connections > 1 or os.path.lexists(journal.journal_path(journal.ranged_path(partial))):
        return download_parallel(client.http, url, rf, partial, final, plan=plan, policy=policy,
                                 advance=lambda n: reporter.advance(rf.path, n), reset=reset, cancel=cancel,
                                 target=layout.target, limit=how.limit)
    limit = how.limit

    def advance(n: int) -> None:
        reporter.advance(rf.path, n)
        if limit is not None:
            limit.take(n)

    return download_verified(client.http, url, rf, partial, final, policy=policy, advance=advance, reset=reset,
                             cancel=cancel, target=layout.target)


def _one_file(client: HubClient, layout: Layout, rf: RemoteFile, policy: RetryPolicy, reporter: Reporter,
              cancel: threading.Event, how: _Transfer) -> FileResult:
    """Fetch one file under its lock; never raises for per-file problems."""
    try:
        final = prepare_final(layout, rf)
        with layout.target.lock(layout.lock_path(rf)):
            if layout.is_cached(rf):
                return _cached_result(layout, rf, layout.finish(rf))
            reporter.file_started(rf.path, rf.size)
            try:
                outcome = _download(client, layout, rf, final, policy, reporter, cancel, how)
            finally:
                reporter.file_done(rf.path, "done")
            local = layout.finish(rf)
        status = "resumed" if outcome.resumed_from and not outcome.restarts else "downloaded"
        return FileResult(rf.path, rf.size, status, str(local), outcome.sha256, rf.blob_id, rf.lfs,
                          resumed_from=outcome.resumed_from if status == "resumed" else 0, received=outcome.received)
    except McardError as exc:
        exc = type(exc)(client.env.scrub(exc.message), exc.path or rf.path)
        return FileResult(rf.path, rf.size, "failed", str(layout.user_path(rf)), rf.sha256, rf.blob_id, rf.lfs,
                          error=str(exc), failure=exc)
    except OSError as exc:
        err = McardError(f"cannot write: {exc.strerror or exc}", rf.path)
        return FileResult(rf.path, rf.size, "failed", str(layout.user_path(rf)), rf.sha256, rf.blob_id, rf.lfs,
                          error=str(err), failure=err)


def _run_downloads(client: HubClient, layout: Layout, todo: list[RemoteFile], workers: int, policy: RetryPolicy,
                   reporter: Reporter, cancel: threading.Event, how: _Transfer) -> dict[str, FileResult]:
    results: dict[str, FileResult] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mcard-fetch")
    try:
        futures = {pool.submit(_one_file, client, layout, rf, policy, reporter, cancel, how): rf
                   for rf in sorted(todo, key=lambda f: -f.size)}
        for future in as_completed(futures):
            result = future.result()
            results[result.path] = result
    except BaseException:
        cancel.set()  # workers stop at their next chunk; partial files stay for the next run
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def fetch(repo: str, files: Sequence[str] = (), *, revision: str | None = None, include: Sequence[str] = (),
          exclude: Sequence[str] = (), local_dir: str | Path | None = None, dry_run: bool = False,
          allow_pickle: bool = False, workers: int = 8, endpoint: str | None = None, token: str | None = None,
          cache_dir: str | Path | None = None, offline: bool | None = None, policy: RetryPolicy | None = None,
          timeout: float = 60.0, reporter: Reporter | None = None, cancel: threading.Event | None = None,
          connections: int | None = None, max_rate: float | None = None,
          piece_size: int | None = None) -> FetchResult:
    """Fetch ``repo`` (``org/name``, ``org/name:branch`` or a Hub URL) at one pinned commit.

    Up to ``workers`` files download at once. A file is fetched in ranges over
    ``connections`` connections (None: chosen from its size, one below 32 MiB,
    up to 8; see :func:`mcard.hub.pieces.plan_ranges`; ``piece_size`` overrides
    the bytes per range request). ``max_rate`` caps the bytes per second of the
    whole run, all connections together.

    Raises :class:`~mcard.core.errors.UnusableInput` for bad input (unknown repo,
    revision or file, unsafe listing, pickle-only without ``allow_pickle``)
    and :class:`~mcard.core.errors.McardError` when the server cannot be used;
    per-file failures are in the returned result (see ``raise_for_failures``).
    """
    env = resolve_env(endpoint, token, cache_dir, offline)
    spec = parse_repo_spec(repo, revision)
    policy = policy or RetryPolicy()
    reporter = reporter or NullReporter()
    if connections is not None and connections < 1:
        raise UnusableInput(f"connections must be at least 1, not {connections}")
    if max_rate is not None and not max_rate > 0:
        raise UnusableInput(f"max_rate must be a positive number of bytes per second, not {max_rate}")
    how = _Transfer(connections, piece_size, RateLimit(max_rate) if max_rate else None)
    if env.offline:
        return _fetch_offline(env.cache_dir, spec, files, include, exclude, local_dir, dry_run, allow_pickle)
    per_file = connections or AUTO_MAX_CONNECTIONS
    with HubClient(env, policy=policy, timeout=timeout, max_connections=max(workers, 4) * per_file) as client:
        rev = client.resolve(spec)
        listing = client.list_files(rev)
        selection = select_files(listing, str(rev), names=files, include=include, exclude=exclude,
                                 allow_pickle=allow_pickle)
        layout: Layout = LocalDirLayout(Path(local_dir), rev) if local_dir is not None \
            else CacheLayout(env.cache_dir, rev)
        for rf in selection.files:  # refuse a hostile listing before writing anything
            layout.check(rf)
        skipped = [(f.path, why) for f, why in selection.skipped]
        result = FetchResult(rev.repo_id, rev.name, rev.kind, rev.commit, str(layout.root), layout.kind, [],
                             skipped, dry_run=dry_run)
        if dry_run:
            result.files = [_planned(layout, rf) for rf in selection.files]
            return result
        layout.prepare()
        todo = [rf for rf in selection.files if not layout.is_cached(rf)]
        reporter.begin(sum(rf.size for rf in todo), len(todo))
        try:
            done = _run_downloads(client, layout, todo, workers, policy, reporter, cancel or threading.Event(), how)
        finally:
            reporter.end()
        for rf in selection.files:
            if rf.path not in done:
                done[rf.path] = _cached_result(layout, rf, layout.finish(rf))
        result.files = [done[rf.path] for rf in selection.files]
        if result.ok:
            layout.complete()
        return result


def _planned(layout: Layout, rf: RemoteFile) -> FileResult:
    cached = layout.is_cached(rf)
    resume = 0 if cached else journal.done_bytes(layout.partial_path(rf), rf)
    return FileResult(rf.path, rf.size, "cached" if cached else "download", str(layout.user_path(rf)),
                      rf.sha256, rf.blob_id, rf.lfs, resumed_from=min(resume, rf.size))


def _fetch_offline(cache_dir: Path, spec: Any, names: Sequence[str], include: Sequence[str],
                   exclude: Sequence[str], local_dir: str | Path | None, dry_run: bool,
                   allow_pickle: bool) -> FetchResult:
    """Serve the request from the HF cache only (``HF_HUB_OFFLINE``); copy into ``local_dir`` if given."""
    rev, cached = cached_revision(cache_dir, spec)
    where = f"{rev} (offline, from the cache)"
    by_path = {rf.path: (rf, path) for rf, path in cached}
    selection = select_files([rf for rf, _ in cached], where, names=names, include=include, exclude=exclude,
                             allow_pickle=allow_pickle)
    target = Path(local_dir) if local_dir is not None else CacheLayout(cache_dir, rev).snapshot
    result = FetchResult(rev.repo_id, rev.name, rev.kind, rev.commit, str(target),
                         "local_dir" if local_dir is not None else "cache", [],
                         [(f.path, why) for f, why in selection.skipped], dry_run=dry_run, offline=True)
    if local_dir is not None:
        for rf in selection.files:
            LocalDirLayout(Path(local_dir), rev).check(rf)
    for rf in selection.files:
        source = by_path[rf.path][1]
        local = source
        if local_dir is not None and not dry_run:
            guard = Target(Path(local_dir))
            dest = guard.child(rf.path)
            guard.mkdirs(dest.parent)
            tmp = dest.with_name(dest.name + ".incomplete")
            with open(source, "rb") as src, guard.open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dest)
            local = dest
        sha = rf.sha256 or _file_sha256(source)
        result.files.append(FileResult(rf.path, rf.size, "cached", str(local), sha, rf.blob_id or None, rf.lfs))
    return result
