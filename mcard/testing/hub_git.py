"""The storage behind the loopback Hub write API: the git repos and LFS objects olah serves.

A repo is an ordinary git repository at ``<mirrors>/models/<org>/<name>``
(the layout :class:`~mcard.testing.hubserver.OlahServer` reads), with its LFS
objects under ``.git/lfs/objects/aa/bb/<sha256>`` and a small
``.git/mcard-hub.json`` (owner namespace, private flag).

Every change is made so that a reader never sees half of it:

* an LFS object is streamed into ``.git/lfs/tmp/``, hashed as it arrives and
  moved into place only when its size and sha256 match its oid;
* a commit builds its tree in a private index file and moves the branch with
  ``git update-ref <ref> <new> <old>``, an atomic compare-and-swap: a crash
  or a dropped connection before that leaves the branch where it was, and a
  branch that moved meanwhile makes the commit fail instead of losing work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..hub.rules import (
    DEFAULT_LFS_PATTERNS,
    check_branch,
    check_path,
    check_repo_id,
    gitattributes_text,
    lfs_patterns,
)
from .hub_http import HubError
from .hubserver import lfs_pointer

ZERO = "0" * 40
_POINTER = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n$")
_OID = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{5,40}$")


@dataclass(frozen=True)
class TreeEntry:
    path: str
    mode: str
    blob: str  # git blob id (of the pointer for LFS files)
    size: int  # the file's size (the LFS object's for LFS files)
    lfs_oid: str | None = None


@dataclass
class FileOp:
    """One line of a commit: ``kind`` is file (regular content), lfsFile, deletedFile or deletedFolder."""

    kind: str
    path: str
    content: Path | None = None  # regular files: a temporary file holding the decoded bytes
    oid: str | None = None
    size: int | None = None


def _git(repo: Path | None, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
         check: bool = True) -> str:
    cmd = ["git", "-c", "core.autocrlf=false", "-c", "init.defaultBranch=main"]
    if repo is not None:
        cmd += ["-C", str(repo)]
    full_env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    proc = subprocess.run([*cmd, *args], input=stdin, capture_output=True, env=full_env, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode()


class GitStore:
    """Repos under ``<mirrors>/models``: create, resolve, list, store LFS objects, commit, branch."""

    def __init__(self, mirrors_dir: str | Path) -> None:
        self.mirrors = Path(mirrors_dir).resolve()
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -- repos --------------------------------------------------------------------------------
    def path(self, repo_id: str) -> Path:
        try:
            check_repo_id(repo_id)
        except Exception:  # noqa: BLE001 - any refusal of a client's name (a non-string one too) is its 404
            raise HubError(404, "Repository not found", "RepoNotFound") from None
        return self.mirrors / "models" / repo_id

    def lock(self, repo_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(repo_id, threading.Lock())

    def exists(self, repo_id: str) -> bool:
        try:
            return (self.path(repo_id) / ".git").is_dir()
        except HubError:
            return False

    def meta(self, repo_id: str) -> dict:
        try:
            return json.loads((self.path(repo_id) / ".git" / "mcard-hub.json").read_text())
        except (OSError, ValueError):
            return {"private": False}

    def create(self, repo_id: str, author: str, private: bool) -> str:
        """A new repo with the Hub's first commit (``.gitattributes``) on main; returns that commit."""
        repo = self.path(repo_id)
        with self.lock(repo_id):
            if (repo / ".git").exists():
                raise HubError(409, "You already created this model repo")
            repo.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=repo.parent))  # not a valid repo name
            _git(None, "init", "--quiet", str(staging))
            (staging / ".git" / "mcard-hub.json").write_text(json.dumps({"private": private, "owner": author}))
            blob = _git(staging, "hash-object", "-w", "--stdin", stdin=gitattributes_text().encode()).strip()
            tree = _git(staging, "mktree", stdin=f"100644 blob {blob}\t.gitattributes\n".encode()).strip()
            commit = _git(staging, "commit-tree", tree, "-m", "initial commit", env=_ident(author)).strip()
            _git(staging, "update-ref", "refs/heads/main", commit, ZERO)
            _git(staging, "symbolic-ref", "HEAD", "refs/heads/main")
            os.replace(staging, repo)  # the repo appears whole, with its first commit
            return commit

    def delete(self, repo_id: str) -> None:
        repo = self.path(repo_id)
        with self.lock(repo_id):
            if not (repo / ".git").is_dir():
                raise HubError(404, "Repository not found", "RepoNotFound")
            trash = repo.with_name(f".deleting-{repo.name}-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(repo, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # -- refs and trees -------------------------------------------------------------------------
    def branches(self, repo_id: str) -> dict[str, str]:
        out = _git(self.path(repo_id), "for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/heads")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def resolve(self, repo_id: str, revision: str) -> str:
        """A branch, tag or (abbreviated) commit id -> commit id; 404 RevisionNotFound when unknown."""
        repo = self.path(repo_id)
        if revision.startswith("-") or not revision:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        for ref in (f"refs/heads/{revision}", f"refs/tags/{revision}"):
            sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
            if sha:
                return sha
        if _COMMIT.match(revision):
            sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False).strip()
            if sha:
                return sha
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def tree(self, repo_id: str, commit: str) -> dict[str, TreeEntry]:
        """Every file of ``commit``: path -> :class:`TreeEntry` (LFS pointers decoded)."""
        repo = self.path(repo_id)
        raw = _git(repo, "ls-tree", "-r", "-z", "--long", commit)
        entries: dict[str, TreeEntry] = {}
        small: list[tuple[str, str, str, int]] = []
        for item in raw.split("\0"):
            if not item:
                continue
            meta, path = item.split("\t", 1)
            mode, _kind, blob, size_text = meta.split()
            small.append((path, mode, blob, int(size_text)))
        pointers = [s for s in small if 100 <= s[3] <= 200]
        decoded: dict[str, bytes] = {}
        if pointers:
            out = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch"], capture_output=True, check=True,
                                 input="".join(f"{s[2]}\n" for s in pointers).encode()).stdout
            pos = 0
            for s in pointers:
                header_end = out.index(b"\n", pos)
                length = int(out[pos:header_end].split()[2])
                decoded[s[2]] = out[header_end + 1:header_end + 1 + length]
                pos = header_end + 1 + length + 1
        for path, mode, blob, size in small:
            found = _POINTER.match(decoded.get(blob, b""))
            if found:
                entries[path] = TreeEntry(path, mode, blob, int(found.group(2)), found.group(1).decode())
            else:
                entries[path] = TreeEntry(path, mode, blob, size)
        return entries

    def log(self, repo_id: str, commit: str) -> list[dict]:
        """Commits reachable from ``commit``, newest first, as the Hub lists them."""
        raw = _git(self.path(repo_id), "log", "--format=%H%x00%an%x00%cd%x00%B%x1e", "--date=format-local:%Y-%m-%dT%H:%M:%S.000Z",
                   commit, env={"TZ": "UTC"})
        out = []
        for record in raw.split("\x1e"):
            record = record.strip("\n")
            if not record:
                continue
            sha, author, date, body = record.split("\0", 3)
            title, _, message = body.partition("\n")
            out.append({"id": sha, "title": title, "message": message.strip("\n"), "date": date,
                        "authors": [{"user": author, "avatar": None}]})
        return out

    def lfs_patterns_at(self, repo_id: str, commit: str) -> list[str]:
        text = _git(self.path(repo_id), "cat-file", "-p", f"{commit}:.gitattributes", check=False)
        return lfs_patterns(text) if text else list(DEFAULT_LFS_PATTERNS)

    def is_ancestor(self, repo_id: str, older: str, newer: str) -> bool:
        proc = subprocess.run(["git", "-C", str(self.path(repo_id)), "merge-base", "--is-ancestor", older, newer],
                              capture_output=True, check=False)
        return proc.returncode == 0

    # -- LFS objects ---------------------------------------------------------------------------
    def object_path(self, repo_id: str, oid: str) -> Path:
        if not _OID.match(oid):
            raise HubError(422, f"invalid LFS oid {oid!r}")
        return self.path(repo_id) / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def has_object(self, repo_id: str, oid: str, size: int) -> bool:
        obj = self.object_path(repo_id, oid)
        return obj.is_file() and obj.stat().st_size == size

    def store_object(self, repo_id: str, oid: str, size: int, read: Callable[[int], bytes],
                     on_bytes: Callable[[int], None] | None = None) -> None:
        """Stream ``size`` bytes from ``read`` into the object store, checked against ``oid`` as they arrive."""
        final = self.object_path(repo_id, oid)
        tmp_dir = self.path(repo_id) / ".git" / "lfs" / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{oid[:16]}-", dir=tmp_dir)
        tmp = Path(tmp_name)
        try:
            digest, received = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                while received < size:
                    chunk = read(min(1 << 20, size - received))
                    if not chunk:
                        raise HubError(400, f"upload of {oid} ended after {received} of {size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            if digest.hexdigest() != oid:
                raise HubError(400, f"uploaded bytes do not match oid {oid} (sha256 {digest.hexdigest()})")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    # -- writes -----------------------------------------------------------------------------------
    def create_branch(self, repo_id: str, branch: str, start: str) -> None:
        try:
            check_branch(branch)
        except Exception as exc:  # noqa: BLE001 - any refusal of a client's name (a non-string one too) is its 400
            raise HubError(400, str(exc)) from None
        repo = self.path(repo_id)
        with self.lock(repo_id):
            if branch in self.branches(repo_id):
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            _git(repo, "update-ref", f"refs/heads/{branch}", start, ZERO)

    def delete_branch(self, repo_id: str, branch: str) -> None:
        repo = self.path(repo_id)
        with self.lock(repo_id):
            if branch == "main":
                raise HubError(403, "Cannot delete the main branch")
            old = self.branches(repo_id).get(branch)
            if old is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            _git(repo, "update-ref", "-d", f"refs/heads/{branch}", old)

    def commit(self, repo_id: str, branch: str, ops: list[FileOp], message: str, author: str,
               parent: str | None = None, before_ref_update: Callable[[], None] | None = None) -> str:
        """Apply ``ops`` on top of ``branch`` as one commit and move the branch to it; returns the commit id.

        ``parent``: the commit the caller based its changes on (412 when the
        branch has moved since). ``before_ref_update`` runs after every object
        is written and before the branch moves (a fault hook for tests).
        """
        repo = self.path(repo_id)
        with self.lock(repo_id):
            head = self.branches(repo_id).get(branch)
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent is not None and not head.startswith(parent.lower()):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = self.tree(repo_id, head)
            index_lines, seen = [], set(files)
            regular = [op for op in ops if op.kind == "file"]
            blobs = []
            if regular:
                blobs = _git(repo, "hash-object", "-w", "--stdin-paths",
                             stdin="".join(f"{op.content}\n" for op in regular).encode()).split()
            blob_of = {id(op): b for op, b in zip(regular, blobs, strict=True)}
            for op in ops:
                try:
                    check_path(op.path)
                except Exception as exc:  # noqa: BLE001 - any refusal of a client's path (a non-string one too) is its 400
                    raise HubError(400, str(exc)) from None
                if op.kind == "file":
                    index_lines.append(f"100644 {blob_of[id(op)]}\t{op.path}")
                    seen.add(op.path)
                elif op.kind == "lfsFile":
                    obj = self.object_path(repo_id, op.oid or "")
                    if not obj.is_file() or (op.size is not None and obj.stat().st_size != op.size):
                        raise HubError(422, f"Your push was rejected because an LFS pointer points to a file "
                                            f"that does not exist: {op.path} (oid {op.oid})")
                    pointer = lfs_pointer(op.oid or "", obj.stat().st_size)
                    blob = _git(repo, "hash-object", "-w", "--stdin", stdin=pointer).strip()
                    index_lines.append(f"100644 {blob}\t{op.path}")
                    seen.add(op.path)
                elif op.kind == "deletedFile":
                    if op.path not in seen:
                        raise HubError(404, f"A file with this name doesn't exist: {op.path}", "EntryNotFound")
                    index_lines.append(f"0 {ZERO}\t{op.path}")
                    seen.discard(op.path)
                elif op.kind == "deletedFolder":
                    prefix = op.path.rstrip("/") + "/"
                    gone = [p for p in seen if p.startswith(prefix)]
                    if not gone:
                        raise HubError(404, f"A folder with this name doesn't exist: {op.path}", "EntryNotFound")
                    index_lines += [f"0 {ZERO}\t{p}" for p in gone]
                    seen.difference_update(gone)
                else:
                    raise HubError(400, f"unknown commit operation {op.kind!r}")
            with tempfile.TemporaryDirectory(prefix="mcard-hub-index-") as tmp:
                env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
                _git(repo, "read-tree", head, env=env)
                if index_lines:
                    _git(repo, "update-index", "--index-info", stdin=("\n".join(index_lines) + "\n").encode(), env=env)
                tree = _git(repo, "write-tree", env=env).strip()
            commit = _git(repo, "commit-tree", tree, "-p", head, "-m", message, env=_ident(author)).strip()
            if before_ref_update is not None:
                before_ref_update()
            _git(repo, "update-ref", f"refs/heads/{branch}", commit, head)
            return commit


def _ident(name: str) -> dict[str, str]:
    email = f"{re.sub(r'[^A-Za-z0-9._-]', '-', name)}@users.noreply.mcard.invalid"
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}

