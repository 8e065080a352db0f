"""The Hub's write API on loopback, for the unmodified ``huggingface_hub`` client.

(Over 400 lines: one request handler answering the ten endpoints of the table below, each in the
Hub's own shapes and status codes; split, the handler's shared state and checks would cross modules.
The git side is :mod:`.hub_git`, the HTTP plumbing :mod:`.hub_http`.)

What the client sends (``huggingface_hub`` 2.x ``hf_api.py``, ``_commit_api.py``,
``lfs.py``) and what this server answers, in the Hub's own shapes:

=====================================================  ===========================================
``GET  /api/whoami-v2``                                the token's user and orgs; 401 for a bad token
``POST /api/repos/create`` / ``DELETE /api/repos/delete``  a repo whose first commit holds the Hub's
                                                       ``.gitattributes``; 409 when it exists, 403
                                                       outside the token's namespaces
``GET  /api/models/<repo>/auth-check[/write]``         200, 403 (not yours) or 404
``POST|DELETE /api/models/<repo>/branch/<branch>``     ``{"startingPoint": rev}``; 409 when it exists
``POST /api/models/<repo>/preupload/<rev>``            per file ``uploadMode`` (lfs / regular),
                                                       ``shouldIgnore``, the ``oid`` on the revision
``POST /<repo>.git/info/lfs/objects/batch``            git-lfs batch API, basic transfer: no
                                                       ``actions`` for an object already stored, else
                                                       signed ``upload`` and ``verify`` URLs
``PUT  /lfs/upload/<repo>/<oid>?…&sig=…``              the object's bytes, hashed as they arrive
``POST /lfs/verify/<repo>/<oid>``                      200 when the object is stored whole
``POST /api/models/<repo>/commit/<rev>``               the NDJSON commit: ``header``, ``file``
                                                       (base64), ``lfsFile``, ``deletedFile``,
                                                       ``deletedFolder``; ``parentCommit`` checked
``POST /api/validate-yaml``                            the card's YAML front matter
=====================================================  ===========================================

Everything else (listings, refs, commits, file downloads) is passed to olah,
which reads the same git repos (:class:`~mcard.testing.hubserver.OlahServer`),
after a privacy check for private repos. Writes need ``Authorization: Bearer
<token>`` of a known :class:`Account`; upload URLs carry an HMAC signature
instead, as the Hub's pre-signed storage URLs do (the client sends no token
there). Tokens are never logged: :attr:`HubWriteServer.log` keeps method,
path and status only.

:class:`WriteFaults` injects server-side failures for tests: an upload that
stalls part way (to kill the client mid-upload), a connection dropped in the
middle of a commit before or after the branch moves, a file stored with other
bytes than were sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..hub.rules import MAX_FILE_BYTES, REGULAR_FILE_LIMIT, upload_mode
from .hub_git import FileOp, GitStore
from .hub_http import HubError, HubHandler, LoopbackServer

_BAD_TOKEN = "Invalid credentials in Authorization header"
URL_TTL = 3600


@dataclass(frozen=True)
class Account:
    """A token's user: ``namespaces`` it may write to (``"*"``: any)."""

    name: str
    namespaces: tuple[str, ...] = ("*",)

    def can_write(self, repo_id: str) -> bool:
        namespace = repo_id.split("/", 1)[0]
        return "*" in self.namespaces or namespace == self.name or namespace in self.namespaces


@dataclass
class WriteFaults:
    """Server-side failures to inject (all off by default)."""

    stall_upload_after: int | None = None  # an LFS upload waits after this many bytes ...
    stall_oid: str | None = None  # ... of this object only (None: any object)
    stalled: threading.Event = field(default_factory=threading.Event)  # set when an upload is waiting
    release: threading.Event = field(default_factory=threading.Event)  # set to let it continue
    drop_commit: str | None = None  # "before-ref" or "after-ref": drop the connection mid-commit
    drop_commit_times: int = 1
    alter_file: str | None = None  # a regular file commits store with other bytes (a Hub that loses data)
    # LFS batch answers whose upload / verify URLs point at another host (``http://host:port``) with the same
    # paths, as the real Hub's pre-signed storage URLs do (e.g. hostile_hub.TokenRecorder(forward=endpoint))
    upload_host: str | None = None
    verify_host: str | None = None


@dataclass
class WriteStats:
    """What the server received: LFS bytes per object, stored objects, commits, requests."""

    lfs_bytes: dict[str, int] = field(default_factory=dict)
    objects_stored: list[str] = field(default_factory=list)
    commits: list[tuple[str, str, str]] = field(default_factory=list)  # (repo, branch, commit)
    commit_body_bytes: int = 0
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    errors: list[str] = field(default_factory=list)  # tracebacks of requests that failed unexpectedly
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_lfs(self, oid: str, n: int) -> None:
        with self.lock:
            self.lfs_bytes[oid] = self.lfs_bytes.get(oid, 0) + n

    @property
    def lfs_total(self) -> int:
        with self.lock:
            return sum(self.lfs_bytes.values())

    def clear(self) -> None:
        with self.lock:
            self.lfs_bytes.clear()
            self.objects_stored.clear()
            self.commits.clear()
            self.commit_body_bytes = 0
            self.log.clear()
            self.errors.clear()


class _Dropped(Exception):
    """Abort the request by closing the connection without an answer (a network failure)."""


class HubWriteServer(LoopbackServer):
    """The write API on ``host:port`` (0: a free port), passing reads to ``upstream`` (olah)."""

    thread_name = "mcard-hub-write"

    def __init__(self, mirrors_dir: str | Path, tokens: dict[str, Account], *, upstream: str | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.store = GitStore(mirrors_dir)
        self.tokens = dict(tokens)
        self.upstream = upstream
        self.faults = WriteFaults()
        self.stats = WriteStats()
        self._secret = os.urandom(32)

    def stop(self) -> None:
        self.faults.release.set()  # a held upload lets go first
        super().stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Keep an unexpected handler failure (with its traceback) in ``stats.errors`` instead of printing it."""
        import traceback

        with self.stats.lock:
            self.stats.errors.append(traceback.format_exc())

    def sign(self, repo_id: str, oid: str, size: int, expires: int) -> str:
        msg = f"{repo_id}\n{oid}\n{size}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()


class _Handler(HubHandler):
    server: HubWriteServer

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        self._status = 0
        self._remaining: list[int] | None = None  # set once the body is being read
        try:
            route = self._route(method, segs)
            if route is None:
                self._proxy(method, segs)
            else:
                route(segs, parse_qs(url.query))
        except HubError as exc:
            self._drain()
            self._error(exc.status, exc.message, exc.code)
        except _Dropped:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        with self.server.stats.lock:
            self.server.stats.log.append((method, url.path, self._status))

    def _route(self, method: str, s: list[str]) -> Callable[[list[str], dict[str, list[str]]], None] | None:
        n = len(s)
        if s[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami
        if s[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml
        if s[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo
        if s[:3] == ["api", "repos", "delete"] and method == "DELETE":
            return self._delete_repo
        if n >= 5 and s[:2] == ["api", "models"]:
            action = s[4]
            if action == "auth-check" and method == "GET":
                return self._auth_check
            if action == "preupload" and method == "POST" and n == 6:
                return self._preupload
            if action == "commit" and method == "POST" and n == 6:
                return self._commit
            if action == "branch" and method in ("POST", "DELETE") and n == 6:
                return self._branch
            if action == "commits" and method == "GET" and n == 6:
                return self._commits
        if n == 6 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"] and method == "POST":
            return self._lfs_batch
        if n == 4 and s[0] == "lfs" and s[1] == "upload" and method == "PUT":
            return self._lfs_upload
        if n == 4 and s[0] == "lfs" and s[1] == "verify" and method == "POST":
            return self._lfs_verify
        return None

    # -- auth ------------------------------------------------------------------------------------
    def _account(self, required: bool = True) -> Account | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            if required:
                raise HubError(401, "Invalid username or password.")
            return None
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        account = self.server.tokens.get(token) if token else None
        if account is None:
            raise HubError(401, _BAD_TOKEN)
        return account

    def _writable(self, repo_id: str) -> Account:
        account = self._account()
        assert account is not None
        store = self.server.store
        if not store.exists(repo_id):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if not account.can_write(repo_id):
            if store.meta(repo_id).get("private"):
                raise HubError(404, "Repository not found", "RepoNotFound")
            raise HubError(403, f"You don't have the rights to write to {repo_id}: it belongs to another namespace")
        return account

    def _readable(self, repo_id: str) -> None:
        store = self.server.store
        if not store.exists(repo_id):  # the Hub answers 401 for a repo it does not have
            raise HubError(401, "Repository not found", "RepoNotFound")
        if store.meta(repo_id).get("private"):
            account = self._account(required=False) if self.headers.get("Authorization") else None
            if account is None or not account.can_write(repo_id):
                raise HubError(401, "Repository not found", "RepoNotFound")

    # -- routes -----------------------------------------------------------------------------------
    def _whoami(self, s: list[str], q: dict[str, list[str]]) -> None:
        account = self._account()
        assert account is not None
        orgs = [{"type": "org", "name": ns, "roleInOrg": "write"} for ns in account.namespaces
                if ns not in ("*", account.name)]
        self._json(200, {"type": "user", "id": hashlib.sha1(account.name.encode()).hexdigest()[:24],
                         "name": account.name, "fullname": account.name, "email": None, "orgs": orgs,
                         "auth": {"type": "access_token", "accessToken": {"displayName": "mcard test hub",
                                                                          "role": "write"}}})

    def _validate_yaml(self, s: list[str], q: dict[str, list[str]]) -> None:
        doc = self._json_body()
        content = doc.get("content", "") if isinstance(doc, dict) else ""
        found = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if found:
            try:
                import yaml

                yaml.safe_load(found.group(1))
            except ImportError:
                pass
            except Exception as exc:  # noqa: BLE001 - any YAML error is the card's problem
                self._json(400, {"errors": [{"message": f"Invalid YAML in README.md metadata: {exc}"}],
                                 "warnings": []})
                return
        self._json(200, {"errors": [], "warnings": []})

    def _create_repo(self, s: list[str], q: dict[str, list[str]]) -> None:
        account = self._account()
        assert account is not None
        doc = self._json_body()
        if doc.get("type") not in (None, "model"):
            raise HubError(400, f"the test hub stores model repos only, not {doc.get('type')!r}")
        namespace = doc.get("organization") or account.name
        repo_id = f"{namespace}/{doc.get('name', '')}"
        try:
            from ..hub.rules import check_repo_id

            check_repo_id(repo_id)
        except Exception as exc:  # noqa: BLE001 - the rule's message is the answer
            raise HubError(400, str(exc)) from None
        if not account.can_write(repo_id):
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        private = doc.get("visibility") == "private" or bool(doc.get("private"))
        if self.server.store.exists(repo_id):
            self._send(409, json.dumps({"error": "You already created this model repo",
                                        "url": f"{self.server.endpoint}/{repo_id}"}).encode(),
                       headers={"X-Error-Message": "You already created this model repo"})
            return
        self.server.store.create(repo_id, account.name, private)
        self._json(200, {"url": f"{self.server.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _delete_repo(self, s: list[str], q: dict[str, list[str]]) -> None:
        account = self._account()
        assert account is not None
        doc = self._json_body()
        repo_id = f"{doc.get('organization') or account.name}/{doc.get('name', '')}"
        self._writable(repo_id)
        self.server.store.delete(repo_id)
        self._json(200, {})

    def _auth_check(self, s: list[str], q: dict[str, list[str]]) -> None:
        repo_id = f"{s[2]}/{s[3]}"
        if s[5:] == ["write"]:
            self._writable(repo_id)
        else:
            self._readable(repo_id)
        self._json(200, {})

    def _branch(self, s: list[str], q: dict[str, list[str]]) -> None:
        repo_id, branch = f"{s[2]}/{s[3]}", s[5]
        self._writable(repo_id)
        store = self.server.store
        if self.command == "DELETE":
            store.delete_branch(repo_id, branch)
        else:
            doc = self._json_body()
            start = store.resolve(repo_id, doc.get("startingPoint") or "main")
            store.create_branch(repo_id, branch, start)
        self._json(200, {})

    def _commits(self, s: list[str], q: dict[str, list[str]]) -> None:
        """The whole history, in the Hub's shape (olah's listing lacks the authors' ``user`` and stops at 50)."""
        repo_id = f"{s[2]}/{s[3]}"
        self._readable(repo_id)
        store = self.server.store
        self._json(200, store.log(repo_id, store.resolve(repo_id, s[5])))

    def _preupload(self, s: list[str], q: dict[str, list[str]]) -> None:
        repo_id, revision = f"{s[2]}/{s[3]}", s[5]
        self._writable(repo_id)
        doc = self._json_body()
        store = self.server.store
        commit = store.resolve(repo_id, revision)
        files = store.tree(repo_id, commit)
        patterns = store.lfs_patterns_at(repo_id, commit)
        out = []
        for f in doc.get("files", []):
            path, size = f.get("path", ""), int(f.get("size", 0))
            try:
                sample = base64.b64decode(f.get("sample", ""), validate=False)
            except (binascii.Error, ValueError):
                sample = b""
            mode = upload_mode(path, size, sample, patterns)
            remote = files.get(path)
            oid = None if remote is None else (remote.lfs_oid or remote.blob)
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": commit})

    def _lfs_batch(self, s: list[str], q: dict[str, list[str]]) -> None:
        repo_id = f"{s[0]}/{s[1][:-4]}"
        self._writable(repo_id)
        doc = self._json_body()
        if doc.get("operation") != "upload":
            raise HubError(400, "the test hub's LFS batch API serves uploads only (downloads go through /resolve)")
        store, objects = self.server.store, []
        expires = int(time.time()) + URL_TTL
        for obj in doc.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "invalid oid or size"}})
            elif size > MAX_FILE_BYTES:
                objects.append({"oid": oid, "size": size, "error": {
                    "code": 422, "message": f"{size} bytes is over the Hub's limit of {MAX_FILE_BYTES} bytes per file"}})
            elif store.has_object(repo_id, oid, size):
                objects.append({"oid": oid, "size": size, "authenticated": True})
            else:
                sig = self.server.sign(repo_id, oid, size, expires)
                faults, repo_q = self.server.faults, quote(repo_id, safe="")
                up, verify = (f"{host or self.server.endpoint}/lfs" for host in (faults.upload_host, faults.verify_host))
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{up}/upload/{repo_q}/{oid}?size={size}&expires={expires}&sig={sig}",
                               "header": {}, "expires_in": URL_TTL},
                    "verify": {"href": f"{verify}/verify/{repo_q}/{oid}", "header": {}, "expires_in": URL_TTL},
                }})
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, s: list[str], q: dict[str, list[str]]) -> None:
        repo_id, oid = s[2], s[3]
        try:
            size, expires, sig = int(q["size"][0]), int(q["expires"][0]), q["sig"][0]
        except (KeyError, ValueError, IndexError):
            raise HubError(403, "upload URL is not signed") from None
        if not hmac.compare_digest(sig, self.server.sign(repo_id, oid, size, expires)) or expires < time.time():
            raise HubError(403, "upload URL signature is invalid or expired")
        read = self._reader()
        declared = self.headers.get("Content-Length")
        if declared is not None and int(declared) != size:
            raise HubError(400, f"Content-Length {declared} differs from the object's size {size}")
        faults, stats = self.server.faults, self.server.stats
        sent = [0]

        def on_bytes(n: int) -> None:
            stats.add_lfs(oid, n)
            sent[0] += n
            limit = faults.stall_upload_after
            if limit is not None and faults.stall_oid in (None, oid) and sent[0] >= limit and not faults.release.is_set():
                faults.stalled.set()
                faults.release.wait(timeout=120)

        self.server.store.store_object(repo_id, oid, size, read, on_bytes)
        with stats.lock:
            stats.objects_stored.append(oid)
        self._send(200, b"", headers={"ETag": f'"{oid}"'})

    def _lfs_verify(self, s: list[str], q: dict[str, list[str]]) -> None:
        repo_id, oid = s[2], s[3]
        self._account()
        doc = self._json_body()
        if not self.server.store.has_object(repo_id, oid, int(doc.get("size", -1))):
            raise HubError(404, f"LFS object {oid} is not stored (or has another size)")
        self._json(200, {})

    def _commit(self, s: list[str], q: dict[str, list[str]]) -> None:
        repo_id, branch = f"{s[2]}/{s[3]}", s[5]
        account = self._writable(repo_id)
        if q.get("create_pr", ["0"])[0] not in ("0", ""):
            raise HubError(400, "the test hub does not support pull requests")
        read = self._reader()
        faults = self.server.faults
        with tempfile.TemporaryDirectory(prefix="mcard-hub-commit-") as tmp:
            header: dict[str, Any] = {}
            ops: list[Any] = []
            total = 0
            with tempfile.TemporaryFile() as body:
                while chunk := read(1 << 20):
                    body.write(chunk)
                    total += len(chunk)
                body.seek(0)
                for i, line in enumerate(body):
                    header, op = self._commit_line(line, i, header, Path(tmp))
                    if op is not None:
                        ops.append(op)
            with self.server.stats.lock:
                self.server.stats.commit_body_bytes += total
            summary = str(header.get("summary") or "").strip()
            if not summary:
                raise HubError(400, "commit summary is empty")
            message = summary + ("\n\n" + header["description"] if header.get("description") else "")

            def before_ref() -> None:
                if faults.drop_commit == "before-ref" and faults.drop_commit_times > 0:
                    faults.drop_commit_times -= 1
                    raise _Dropped()

            commit = self.server.store.commit(repo_id, branch, ops, message, account.name,
                                              parent=header.get("parentCommit"), before_ref_update=before_ref)
        with self.server.stats.lock:
            self.server.stats.commits.append((repo_id, branch, commit))
        if faults.drop_commit == "after-ref" and faults.drop_commit_times > 0:
            faults.drop_commit_times -= 1
            raise _Dropped()
        self._json(200, {"success": True, "commitOid": commit, "commitUrl": f"{self.server.endpoint}/{repo_id}/commit/"
                         f"{commit}", "hookOutput": "", "pullRequestUrl": None})

    def _commit_line(self, line: bytes, i: int, header: dict[str, Any], tmp: Path) -> tuple[dict[str, Any], FileOp | None]:
        if not line.strip():
            return header, None
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError):
            raise HubError(400, f"commit payload line {i + 1} is not a valid operation") from None
        if key == "header":
            return value, None
        path = value.get("path", "")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"unsupported encoding for {path}")
            data = base64.b64decode(value.get("content", ""))
            if path == self.server.faults.alter_file:
                data += b"\n"
            if len(data) >= REGULAR_FILE_LIMIT:
                raise HubError(400, f"{path}: files of {REGULAR_FILE_LIMIT} bytes or more must go through LFS")
            content = tmp / f"{i}.bin"
            content.write_bytes(data)
            return header, FileOp("file", path, content=content)
        if key == "lfsFile":
            return header, FileOp("lfsFile", path, oid=value.get("oid"), size=value.get("size"))
        if key in ("deletedFile", "deletedFolder"):
            return header, FileOp(key, path)
        raise HubError(400, f"unknown commit operation {key!r}")

    # -- reads: olah -------------------------------------------------------------------------------
    def _proxy(self, method: str, s: list[str]) -> None:
        revision = None
        if len(s) >= 4 and s[0] == "api" and s[1] == "models":
            repo_id = f"{s[2]}/{s[3]}"
            self._readable(repo_id)
            if len(s) >= 6 and s[4] in ("revision", "tree", "paths-info"):
                revision = s[5]
        elif len(s) >= 4 and s[2] in ("resolve", "raw", "blob"):
            repo_id, revision = f"{s[0]}/{s[1]}", s[3]
            self._readable(repo_id)
        if revision is not None:  # the Hub: 404 RevisionNotFound (olah answers 401 RepoNotFound)
            self.server.store.resolve(repo_id, revision)
        if self.server.upstream is None:
            raise HubError(502, "no read server behind this write API")
        self._forward(method, self.server.upstream, self.server.endpoint)
