"""Metadata from a Hub endpoint: refs, revision → commit, tree listings, small verified files.

Metadata goes through ``huggingface_hub.HfApi(endpoint=..., token=...)``;
every call is retried on transient errors and its failures become one-line
:class:`~mcard.core.errors.McardError` messages (``UnusableInput`` for an unknown
repo, revision or file). Bytes are fetched with httpx from
``{endpoint}/{repo}/resolve/{commit}/{path}``, always by commit, so a branch
that moves during a run cannot mix two commits.

Endpoint notes (olah 0.5, offline mirror): ``list_repo_refs`` of an unknown
repo answers 404 "refs are not cached" rather than 401; an unknown commit in
``list_repo_tree`` answers 404; both are reported as unknown repo / commit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ..core.errors import CheckFailed, McardError, UnusableInput
from ..net import NetLimits, open_session, stream
from .env import HubEnv
from .model import MAX_LISTED_SIZE, SHA1_RE, SHA256_RE, RemoteFile, Revision, check_listing, safe_relpath
from .refs import COMMIT_RE, RepoSpec
from .transfer import RetryPolicy, Transient, Verifier, check_status, parse_retry_after

T = TypeVar("T")
SMALL_FILE_LIMIT = 4 * 1024 * 1024


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _is_transport_error(exc: BaseException) -> bool:
    return any(cls.__name__ in ("TransportError", "TimeoutException") for cls in type(exc).__mro__)


class HubClient:
    """Metadata and small-file access for one endpoint and token (thread-safe)."""

    def __init__(self, env: HubEnv, *, policy: RetryPolicy | None = None, timeout: float | None = None,
                 max_connections: int = 16, limits: NetLimits | None = None) -> None:
        from huggingface_hub import HfApi

        self.env = env
        self.policy = policy or RetryPolicy()
        limits = limits or NetLimits.from_env()
        if timeout is not None:
            limits = replace(limits, read_timeout=min(limits.read_timeout, timeout),
                             connect_timeout=min(limits.connect_timeout, timeout))
        self._session = open_session(env.endpoint, env.token, limits, max_connections)
        self.net = self._session.__enter__()
        self.http = self.net.client  # every request goes through the guard (mcard.net)
        self.api = HfApi(endpoint=env.endpoint, token=env.token or False)
        self._refs: dict[str, Any] = {}

    def close(self) -> None:
        self._session.__exit__(None, None, None)

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- error handling -------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], *, on_missing: Callable[[], McardError]) -> T:
        """Run ``fn`` with retries; translate hub errors into one-line McardErrors."""
        failures = 0
        while True:
            try:
                return fn()
            except McardError as exc:  # the guard's refusals and deadline: one line, never retried
                raise type(exc)(self.env.scrub(exc.message), exc.path) from None
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line
                code = _status(exc)
                transient = code is not None and (code == 429 or code >= 500) or _is_transport_error(exc)
                # a refused connection is most likely a wrong endpoint; huggingface_hub has already retried
                # a dropped or timed-out listing five times, with backoff
                budget = min(self.policy.max_retries, 2 if type(exc).__name__ == "ConnectError" else 1) \
                    if _is_transport_error(exc) else self.policy.max_retries
                if transient and failures < budget:
                    failures += 1
                    response = getattr(exc, "response", None)
                    after = response.headers.get("retry-after") if response is not None else None
                    time.sleep(self.policy.delay(failures, parse_retry_after(after)))
                    continue
                raise self._translate(exc, what, code, on_missing) from None

    def _translate(self, exc: Exception, what: str, code: int | None,
                   on_missing: Callable[[], McardError]) -> McardError:
        name = type(exc).__name__
        if name == "GatedRepoError":
            return UnusableInput(f"{what}: the repo is gated; accept its terms on the Hub and set HF_TOKEN")
        if code in (401, 404) or name in ("RepositoryNotFoundError", "RevisionNotFoundError",
                                          "RemoteEntryNotFoundError", "EntryNotFoundError"):
            return on_missing()
        if code == 403:
            return UnusableInput(f"{what}: access denied (HTTP 403); check HF_TOKEN's permissions")
        if _is_transport_error(exc):
            return McardError(f"{what}: cannot reach {self.env.endpoint}: {self.env.scrub(str(exc)) or name}")
        if name == "OfflineModeIsEnabled":
            return McardError(f"{what}: huggingface_hub was imported with HF_HUB_OFFLINE set; "
                              "unset it in the environment of this process")
        first = self.env.scrub(str(exc)).strip().splitlines()
        detail = f"{name}: {first[0][:200] if first else ''}".rstrip(": ")
        if code is None and isinstance(exc, (KeyError, TypeError, ValueError, AttributeError, IndexError)):
            # huggingface_hub could not read the answer (a tree entry without "path", a size that is a string)
            return UnusableInput(f"{what}: the server's answer is not a Hub API answer ({detail})")
        return McardError(f"{what}: {detail}")

    def _no_repo(self, repo_id: str) -> Callable[[], McardError]:
        return lambda: UnusableInput(
            f"{repo_id}: repo not found on {self.env.endpoint} (private or gated repos need HF_TOKEN)")

    # -- metadata ---------------------------------------------------------------------------
    def refs(self, repo_id: str) -> Any:
        """``GitRefs`` of the repo (branches, tags), fetched once per client."""
        if repo_id not in self._refs:
            self._refs[repo_id] = self._call(repo_id, lambda: self.api.list_repo_refs(repo_id),
                                             on_missing=self._no_repo(repo_id))
        return self._refs[repo_id]

    def branch_names(self, repo_id: str) -> list[str]:
        return [b.name for b in self.refs(repo_id).branches]

    def resolve(self, spec: RepoSpec) -> Revision:
        """Pin ``spec`` to a commit: a branch or tag name from the refs, or a full commit id."""
        refs = self.refs(spec.repo_id)
        branches = {b.name: b.target_commit for b in refs.branches}
        tags = {t.name: t.target_commit for t in refs.tags}
        wanted = spec.revision
        if wanted is None:
            if "main" in branches or len(branches) != 1:
                wanted = "main"
            else:
                wanted = next(iter(branches))
        if wanted in branches:
            kind, commit = "branch", branches[wanted]
        elif wanted in tags:
            kind, commit = "tag", tags[wanted]
        elif COMMIT_RE.match(wanted.lower()):
            kind, commit = "commit", wanted.lower()
        else:
            shown = ", ".join(sorted(branches)) or "none"
            extra = f"; tags: {', '.join(sorted(tags))}" if tags else ""
            raise UnusableInput(f"{spec.repo_id}: no branch, tag or commit {wanted!r}; branches: {shown}{extra}")
        if not COMMIT_RE.match(str(commit)):
            raise UnusableInput(f"{spec.repo_id}: server gave an invalid commit id {commit!r} for {wanted!r}")
        return Revision(spec.repo_id, wanted, kind, commit)

    def list_files(self, rev: Revision) -> list[RemoteFile]:
        """Every file of the commit, recursively, checked for safe paths and well-formed hashes."""
        where = f"{rev.repo_id}@{rev.commit[:10]}"

        def missing() -> McardError:
            return UnusableInput(f"{rev.repo_id}: no commit {rev.commit} (revision {rev.name!r})")

        cap = self.net.session.limits.max_entries
        entries = self._call(where, lambda: list(itertools.islice(
            self.api.list_repo_tree(rev.repo_id, revision=rev.commit, recursive=True), cap + 1)), on_missing=missing)
        if len(entries) > cap:
            raise UnusableInput(f"the tree listing has more than {cap} entries; refused", where)
        files: dict[str, RemoteFile] = {}
        for entry in entries:
            if not hasattr(entry, "blob_id"):
                continue  # a folder
            rf = _remote_file(entry, where)
            files[rf.path] = rf
        return check_listing(sorted(files.values(), key=lambda f: f.path), where)

    def file_url(self, repo_id: str, commit: str, path: str) -> str:
        return f"{self.env.endpoint}/{repo_id}/resolve/{commit}/{quote(path, safe='/')}"

    def get_small(self, rev: Revision, rf: RemoteFile, limit: int = SMALL_FILE_LIMIT) -> bytes:
        """Download a small file into memory, verified like any other download."""
        if rf.size > limit:
            raise McardError(f"{rf.size} bytes is too large to read in memory (limit {limit})", rf.path)
        url = self.file_url(rev.repo_id, rev.commit, rf.path)
        failures = 0
        while True:
            try:
                with stream(self.http, url, cap=rf.size, what=rf.path) as response:
                    check_status(response, rf.path)
                    data = response.read()
                break
            except (Transient, httpx.TransportError) as exc:
                failures += 1
                if failures > self.policy.max_retries:
                    raise McardError(f"download failed: {self.env.scrub(str(exc)) or type(exc).__name__}",
                                     rf.path) from None
                time.sleep(self.policy.delay(failures, getattr(exc, "retry_after", None)))
        verifier = Verifier(rf)
        verifier.update(data)
        problem = verifier.mismatch()
        if problem:
            raise CheckFailed(problem, rf.path)
        return data


def _remote_file(entry: Any, where: str) -> RemoteFile:
    if not isinstance(entry.path, str):
        raise UnusableInput(f"server listing gives an entry a path that is not a string: {str(entry.path)[:80]}", where)
    path = safe_relpath(entry.path, where)
    blob_id = str(entry.blob_id or "").lower()
    size = entry.size
    lfs = getattr(entry, "lfs", None)
    sha256 = str(lfs.sha256).lower() if lfs is not None and getattr(lfs, "sha256", None) else None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_LISTED_SIZE:
        raise UnusableInput(f"server listing gives {path!r} an invalid size {str(size)[:40]}"
                            + (f" (limit {MAX_LISTED_SIZE})" if isinstance(size, int) and size > 0 else ""), where)
    if not SHA1_RE.match(blob_id):
        raise UnusableInput(f"server listing gives {path!r} an invalid blob id {blob_id!r}", where)
    if lfs is not None and (sha256 is None or not SHA256_RE.match(sha256)):
        raise UnusableInput(f"server listing gives {path!r} an invalid LFS sha256 {sha256!r}", where)
    if lfs is not None and getattr(lfs, "size", size) != size:
        raise UnusableInput(f"server listing gives {path!r} two sizes ({size} and {lfs.size})", where)
    return RemoteFile(path=path, size=size, blob_id=blob_id, sha256=sha256)
