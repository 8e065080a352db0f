"""``mcard publish``: push a package's branches to the Hub through ``huggingface_hub``, idempotent and verified.

Per branch, in order (main first):

1. Plan, for every branch before anything is written: the remote branch's
   listing (``list_repo_tree``) against the package; each file is added,
   updated, unchanged (same sha256 for LFS files, same git blob id for the
   others), deleted (on the branch, not in the package: only with
   ``delete_extra``) or kept. A branch that exists but does not descend from
   main's first commit is refused (mcard never force-moves a branch).
2. Create the branch from main's first commit when missing (as TheBloke's
   repos do), then one ``create_commit`` with the added, updated and deleted
   files, ``parent_commit`` set to the head that was planned against. A branch
   with nothing to change gets no commit. The LFS batch API is asked first
   which objects the Hub already holds: those are not sent again (a rerun
   after an interrupted upload sends only what is missing), and the rest are
   counted in ``uploaded_bytes``.
3. Verify: the new commit's listing is read back and every file's size and
   sha256 (or git blob id) compared with the package.

The token comes from ``HF_TOKEN`` / the saved login and is never printed; a
missing token is exit 2, a rejected one exit 1, both before anything is sent.
Every request ``huggingface_hub`` makes for a publish runs inside one
:func:`mcard.net.open_session` for the endpoint: the token goes to the
endpoint's origin only (an LFS upload or verify URL on another host, a
redirect, gets none; the Hub's storage URLs are pre-signed and need none),
with the same timeouts, caps and run deadline as every other command.
Uploads use the LFS protocol (``xet=True`` lets ``huggingface_hub`` use Xet
storage when ``hf_xet`` is installed; the loopback test Hub speaks LFS only).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import CheckFailed, McardError, UnusableInput
from ..hub.env import HubEnv, resolve_env
from ..hub.progress import Reporter
from ..hub.rules import MAX_FILE_BYTES, check_repo_id
from ..net import open_session, origin
from .package import Package, PackagedBranch, PackagedFile, load_package

ADDED, UPDATED, UNCHANGED, DELETED, KEPT = "added", "updated", "unchanged", "deleted", "kept"


@dataclass
class FileStatus:
    path: str
    size: int
    sha256: str | None
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "status": self.status}


@dataclass
class BranchResult:
    branch: str
    files: list[FileStatus]
    head: str | None  # the branch's commit before publishing (None: the branch does not exist yet)
    commit: str | None = None  # after publishing (dry run: None)
    uploaded_bytes: int = 0  # bytes of file content sent (dry run: that would be sent)
    verified: bool = False
    message: str = ""

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def changed(self) -> bool:
        return any(f.status in (ADDED, UPDATED, DELETED) for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"branch": self.branch, "commit": self.commit, "previous_commit": self.head,
                "uploaded_bytes": self.uploaded_bytes, "verified": self.verified,
                "files": [f.to_dict() for f in self.files]}


@dataclass
class PublishResult:
    repo: str
    endpoint: str
    dry_run: bool
    repo_created: bool = False
    branches: list[BranchResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.dry_run or all(b.verified for b in self.branches)

    @property
    def uploaded_bytes(self) -> int:
        return sum(b.uploaded_bytes for b in self.branches)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "repo": self.repo, "endpoint": self.endpoint, "dry_run": self.dry_run,
                "repo_created": self.repo_created, "uploaded_bytes": self.uploaded_bytes, "notes": self.notes,
                "branches": [b.to_dict() for b in self.branches]}


# -- huggingface_hub errors as one line --------------------------------------------------------------


def _token_source() -> str:
    if os.environ.get("HF_TOKEN", "").strip():
        return "HF_TOKEN"
    if os.environ.get("HUGGING_FACE_HUB_TOKEN", "").strip():
        return "HUGGING_FACE_HUB_TOKEN"
    return "the saved login"


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, (RuntimeError, ValueError)) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


@contextlib.contextmanager
def _hub(env: HubEnv, what: str) -> Iterator[None]:
    """Turn what ``huggingface_hub`` raises into one line naming the step (token scrubbed)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except McardError:
        raise
    except (HfHubHTTPError, httpx2.HTTPError, OSError, RuntimeError, ValueError) as exc:
        # Each refusal below is raised `from None`: the line says it all, and the chained cause's text is unscrubbed.
        cause = _root_cause(exc)
        if isinstance(cause, McardError):  # the net guard's refusal or deadline, raised inside an upload thread
            raise type(cause)(env.scrub(f"{what}: {cause.message}"), cause.path) from None
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            detail = (cause.server_message or str(cause).split("\n")[0]).strip().split("\n")[0]
            url = getattr(getattr(cause.response, "request", None), "url", None)
            if status == 401 and url is not None and origin(url) != origin(env.endpoint):
                raise CheckFailed(env.scrub(f"{what}: {origin(url)[1]}:{origin(url)[2]} asked for a token (401), "
                                            f"which goes to {env.endpoint} only: {detail}")) from None
            if status == 401:
                raise CheckFailed(env.scrub(f"{what}: the Hub rejected the token from {_token_source()} (401): "
                                            f"{detail}")) from None
            if status == 403:
                raise CheckFailed(env.scrub(f"{what}: not allowed (403): {detail}")) from None
            if status == 412:
                raise CheckFailed(f"{what}: the branch moved while publishing (412); run publish again") from None
            raise CheckFailed(env.scrub(f"{what}: the Hub answered {status}: {detail}")) from None
        if isinstance(cause, (httpx2.HTTPError, OSError)):
            raise McardError(env.scrub(f"{what}: network failure ({type(cause).__name__}: {cause}); nothing was "
                                       "committed by this step, run publish again to continue (objects already "
                                       "uploaded are not sent again)")) from None
        raise McardError(env.scrub(f"{what}: {type(cause).__name__}: {cause}")) from None


@contextlib.contextmanager
def _client_settings(xet: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars off (mcard draws its own: :mod:`.publish_progress`), and LFS
    (not Xet) transfers unless asked, for the duration of a publish."""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_off, xet_was_off = are_progress_bars_disabled(), constants.HF_HUB_DISABLE_XET
    disable_progress_bars()
    constants.HF_HUB_DISABLE_XET = xet_was_off or not xet  # read by is_xet_available() at upload time
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = xet_was_off
        (disable_progress_bars if bars_were_off else enable_progress_bars)()


# -- planning -------------------------------------------------------------------------------------------


def _listing(api: Any, repo: str, commit: str | None) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    if commit is None:
        return {}
    return {f.path: f for f in api.list_repo_tree(repo, revision=commit, recursive=True) if isinstance(f, RepoFile)}


def _same(local: PackagedFile, remote: Any) -> bool:
    if remote is None or remote.size != local.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return local.git_sha1 is not None and remote.blob_id == local.git_sha1


def _plan_branch(b: PackagedBranch, remote: dict[str, Any], delete_extra: bool) -> list[FileStatus]:
    out = []
    for f in b.files:
        r = remote.get(f.path)
        status = ADDED if r is None else UNCHANGED if _same(f, r) else UPDATED
        out.append(FileStatus(f.path, f.size, f.sha256, status))
    for path, r in sorted(remote.items()):
        if path not in {f.path for f in b.files}:
            sha = r.lfs.sha256 if r.lfs is not None else None
            out.append(FileStatus(path, r.size, sha, DELETED if delete_extra else KEPT))
    return out


def _missing_objects(api: Any, env: HubEnv, repo: str, branch: str, files: list[PackagedFile]) -> set[str]:
    """sha256 of the LFS files the Hub does not hold yet (asked through the client's LFS batch call)."""
    from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info

    if not files:
        return set()
    infos = [UploadInfo(size=f.size, sample=b"", sha256=bytes.fromhex(f.sha256)) for f in files]
    missing: set[str] = set()
    for i in range(0, len(infos), 256):
        actions, errors, _ = post_lfs_batch_info(upload_infos=infos[i:i + 256], token=env.token, repo_type="model",
                                                 repo_id=repo, revision=branch, endpoint=env.endpoint)
        if errors:
            raise CheckFailed(f"the Hub refuses {errors[0].get('oid')}: {errors[0].get('error', {}).get('message')}")
        missing |= {a["oid"] for a in actions if a.get("actions")}
    return missing


def _verify(b: PackagedBranch, plan: list[FileStatus], remote: dict[str, Any], commit: str) -> None:
    for f in b.files:
        r = remote.get(f.path)
        if not _same(f, r):
            got = "missing" if r is None else f"{r.size} bytes, sha256 {r.lfs.sha256 if r.lfs else r.blob_id}"
            raise CheckFailed(f"branch {b.branch} at {commit[:12]}: the Hub lists {got}, the package has "
                              f"{f.size} bytes, sha256 {f.sha256}", f.path)
    for p in plan:
        if p.status == DELETED and p.path in remote:
            raise CheckFailed(f"branch {b.branch} at {commit[:12]}: still holds a file that was deleted", p.path)


# -- publishing -------------------------------------------------------------------------------------------


def publish(package: Package | str | Path, *, repo: str | None = None, endpoint: str | None = None,
            token: str | None = None, branches: list[str] | None = None, dry_run: bool = False,
            create: bool = False, private: bool = False, delete_extra: bool = False,
            reporter: Reporter | None = None, xet: bool = False, num_threads: int = 5) -> PublishResult:
    """Publish the package's branches to ``repo`` (default: the entry's); see the module doc for the steps.

    ``reporter`` (e.g. :class:`mcard.hub.progress.RichReporter`) is told the bytes of each LFS object
    as huggingface_hub reads them for the upload: a bar per file and one per branch's total.
    """
    pkg = package if isinstance(package, Package) else load_package(package)
    repo_id = check_repo_id(repo or pkg.repo)
    pkg.verify()
    chosen = [pkg.branch(name) for name in branches] if branches else list(pkg.branches)
    for b in chosen:
        for f in b.files:
            if f.size > MAX_FILE_BYTES:
                raise UnusableInput(f"{f.size:,} bytes is over the Hub's limit of {MAX_FILE_BYTES:,} bytes per file",
                                    pkg.root / b.folder / f.path)
    env = resolve_env(endpoint, token)
    if not env.token and not dry_run:
        raise UnusableInput("no Hub token: set HF_TOKEN or log in with `hf auth login` (a write token)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from .. import __version__

    api = HfApi(endpoint=env.endpoint, token=env.token or False, library_name="mcard", library_version=__version__)
    result = PublishResult(repo_id, env.endpoint, dry_run)
    with open_session(env.endpoint, env.token), _client_settings(xet):
        if env.token:
            with _hub(env, "checking the token"):
                api.whoami()
        with _hub(env, f"reading {repo_id}"):
            try:
                refs, exists = {r.name: r.target_commit for r in api.list_repo_refs(repo_id).branches}, True
            except RepositoryNotFoundError:
                refs, exists = {}, False
        if exists and env.token:
            with _hub(env, f"checking write access to {repo_id}"):
                api.auth_check(repo_id, write=True)
        if not exists:
            if dry_run:
                result.notes.append(f"{repo_id} does not exist on {env.endpoint}; publish --create would create it")
            elif not create:
                raise UnusableInput(f"{repo_id} does not exist on {env.endpoint}; pass --create to create it")
            else:
                with _hub(env, f"creating {repo_id}"):
                    api.create_repo(repo_id, private=private, exist_ok=False)
                    refs = {r.name: r.target_commit for r in api.list_repo_refs(repo_id).branches}
                result.repo_created = True
        root = None
        if "main" in refs:
            with _hub(env, f"reading the history of {repo_id}@main"):
                root = api.list_repo_commits(repo_id, revision=refs["main"])[-1].commit_id
        plans = []
        for b in chosen:  # every branch is planned, and refused if need be, before anything is sent
            head = refs.get(b.branch)
            if head is not None and b.branch != "main" and root is not None:
                with _hub(env, f"reading the history of {repo_id}@{b.branch}"):
                    ids = {c.commit_id for c in api.list_repo_commits(repo_id, revision=head)}
                if root not in ids:
                    raise CheckFailed(f"branch {b.branch} of {repo_id} exists with unrelated history: it does not "
                                      f"descend from main's first commit {root[:12]}; mcard never force-moves a "
                                      "branch (delete it on the Hub, or publish under another branch name)")
            with _hub(env, f"listing {repo_id}@{b.branch}"):
                remote = _listing(api, repo_id, head if head is not None else root)
            plans.append((b, head, _plan_branch(b, remote, delete_extra)))
        for b, head, plan in plans:
            result.branches.append(_publish_branch(api, env, pkg, repo_id, b, head, root, plan, dry_run, num_threads,
                                                   reporter))
    return result


def _publish_branch(api: Any, env: HubEnv, pkg: Package, repo_id: str, b: PackagedBranch, head: str | None,
                    root: str | None, plan: list[FileStatus], dry_run: bool, num_threads: int,
                    reporter: Reporter | None = None) -> BranchResult:
    from huggingface_hub import CommitOperationDelete

    from .publish_progress import ReportedAdd

    res = BranchResult(b.branch, plan, head, message=b.message)
    by_path = {f.path: f for f in b.files}
    sending = [by_path[p.path] for p in plan if p.status in (ADDED, UPDATED)]
    lfs = [f for f in sending if f.lfs]
    where = f"{repo_id}@{b.branch}"
    if env.token and (head is not None or root is not None):
        with _hub(env, f"asking which objects {where} already has"):
            missing = _missing_objects(api, env, repo_id, b.branch if head is not None else "main", lfs)
    else:
        missing = {f.sha256 for f in lfs}
    res.uploaded_bytes = sum(f.size for f in sending if not f.lfs or f.sha256 in missing)
    if dry_run:
        return res
    if head is None:
        if root is None:
            raise CheckFailed(f"{repo_id} has no main branch to create {b.branch} from")
        with _hub(env, f"creating branch {where} from main's first commit"):
            api.create_branch(repo_id, branch=b.branch, revision=root)
        head = root
    commit = head
    if res.changed:
        ops: list[Any] = []
        for f in sending:
            op = ReportedAdd(path_in_repo=f.path, path_or_fileobj=str(pkg.root / b.folder / f.path))
            op.upload_info.sha256 = bytes.fromhex(f.sha256)  # verified against the package; no second read
            op.reporter = reporter
            ops.append(op)
        ops += [CommitOperationDelete(path_in_repo=p.path) for p in plan if p.status == DELETED]
        description = "Files: " + ", ".join(f"{p.path} ({p.status})" for p in plan if p.status != UNCHANGED)
        uploads = [f for f in lfs if f.sha256 in missing]
        if reporter is not None:
            reporter.begin(sum(f.size for f in uploads), len(uploads))
        try:
            with _hub(env, f"committing to {where}"):
                commit = api.create_commit(repo_id, ops, commit_message=b.message, commit_description=description,
                                           revision=b.branch, parent_commit=head, num_threads=num_threads).oid
        finally:
            if reporter is not None:
                reporter.end()
    with _hub(env, f"reading back {where}@{commit[:12]}"):
        remote = _listing(api, repo_id, commit)
    _verify(b, plan, remote, commit)
    res.commit, res.verified = commit, True
    return res
