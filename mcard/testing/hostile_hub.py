"""A hostile Hugging Face Hub API on loopback, and a second host that records any token sent to it.

:class:`HostileHub` serves the read API mcard and huggingface_hub use
(``/api/models/{repo}/refs``, ``/api/models/{repo}/tree/{rev}``,
``/{repo}/resolve/{rev}/{path}``) from repos held in memory, answering like
the Hub (JSON shapes, LFS metadata, git blob ids, ``Range``) until told to
misbehave. Its :class:`Tricks` (swap them at any time with ``hub.tricks =
Tricks(...)``) cover what a hostile or broken server does:

* ``next_page``: a ``Link: <URL>; rel="next"`` header on tree pages (``"other"``
  points at the second host, ``"endless"`` at an ever-new page of this one);
* ``hang``: paths (substrings) that never get an answer;
* ``echo_token``: error answers (403) that echo the request's Authorization in
  ``X-Error-Message``, the reason phrase and the body; ``content_range_echo``
  puts it in a 206's Content-Range;
* ``endless_body`` / ``gzip_bomb``: paths answered with an endless chunked
  body, or with a small gzip body that decodes to ``gzip_bomb_bytes``;
* ``redirect_loop``: paths that redirect to themselves forever;
* ``redirect_other``: paths redirected to the second host (a CDN);
* ``range_total``: a wrong total in every 206 Content-Range;
* ``tree_extra`` / ``size_override``: extra or altered tree entries;
* ``refs_extra``: extra branches (names mcard must refuse or print safely).

:class:`TokenRecorder` is the second loopback host (``127.0.0.2`` where the
system routes it, else another port: either way another origin). It answers
every request (an empty tree page, or a few bytes) and keeps the
Authorization header of each in ``seen``. With ``forward=URL`` it is a
storage host in front of another server: it records each request, then
passes it on (method, path, headers, body) and returns that server's answer
(the loopback write Hub's LFS uploads, sent to another origin as the real
Hub's pre-signed storage URLs are).

Example::

    with HostileHub({"org/m": {"main": {"config.json": b"{}"}}}) as hub:
        hub.tricks = Tricks(next_page="other")
        ...  # run mcard with HF_ENDPOINT=hub.endpoint, HF_TOKEN=...
        assert hub.other.seen_tokens() == []
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".ggml", ".pt", ".pth", ".ckpt", ".pkl", ".zip")


@dataclass
class Tricks:
    """How the server misbehaves (the default: not at all)."""

    next_page: str | None = None  # "other", "endless" or None
    hang: tuple[str, ...] = ()
    echo_token: tuple[str, ...] = ()
    content_range_echo: bool = False
    endless_body: tuple[str, ...] = ()
    gzip_bomb: tuple[str, ...] = ()
    gzip_bomb_bytes: int = 64 << 20
    redirect_loop: tuple[str, ...] = ()
    redirect_other: tuple[str, ...] = ()
    range_total: int | None = None
    tree_extra: list[dict[str, Any]] = field(default_factory=list)
    size_override: dict[str, Any] = field(default_factory=dict)
    refs_extra: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sparse:
    """A huge file held as a few byte runs (zeros elsewhere): a 1 TiB GGML file, a 7 GB zip.

    The listing gives it ``size`` and a made-up sha256 (nothing downloads it whole).
    """

    size: int
    runs: tuple[tuple[int, bytes], ...] = ()
    fill: bytes = b""  # repeated from ``fill_from`` on, under the runs (zeros when empty)
    fill_from: int = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop = key.start or 0, min(key.stop if key.stop is not None else self.size, self.size)
        out = bytearray(max(0, stop - start))
        if self.fill and stop > self.fill_from:
            a = max(start, self.fill_from)
            phase = (a - self.fill_from) % len(self.fill)
            reps = (stop - a + phase) // len(self.fill) + 1
            out[a - start:] = (self.fill * reps)[phase:phase + stop - a]
        for offset, data in self.runs:
            a, b = max(start, offset), min(stop, offset + len(data))
            if a < b:
                out[a - start:b - start] = data[a - offset:b - offset]
        return bytes(out)


@functools.lru_cache(maxsize=4)
def _bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about 1000 times smaller)."""
    return gzip.compress(b"\0" * size, compresslevel=9)


def _commit(repo: str, branch: str) -> str:
    return hashlib.sha1(f"{repo}@{branch}".encode()).hexdigest()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _entry(path: str, data: bytes | Sparse) -> dict[str, Any]:
    if isinstance(data, Sparse):
        sha = hashlib.sha256(b"sparse %d" % data.size).hexdigest()
        return {"type": "file", "oid": hashlib.sha1(sha.encode()).hexdigest(), "size": data.size, "path": path,
                "lfs": {"oid": sha, "size": data.size, "pointerSize": 134}}
    if path.endswith(LFS_SUFFIXES):
        sha = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
        return {"type": "file", "oid": _blob_id(pointer), "size": len(data), "path": path,
                "lfs": {"oid": sha, "size": len(data), "pointerSize": len(pointer)}}
    return {"type": "file", "oid": _blob_id(data), "size": len(data), "path": path}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: Any = None  # the _Base that started it, for its handlers (self.server.owner)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is what these tests provoke


class _Base:
    """A threaded loopback HTTP server with ``.endpoint``; a context manager."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.httpd = _Server((host, 0), self.handler)
        self.httpd.owner = self
        self.endpoint = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.stopping = threading.Event()

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, reason: str | None = None) -> None:
        self.send_response(status, reason)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _RecorderHandler(_Quiet):
    def _handle(self) -> None:
        owner: TokenRecorder = cast(_Server, self.server).owner
        with owner.lock:
            owner.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if owner.forward is not None:
            self._forward(owner.forward)
        elif "/api/" in self.path:
            self._send(200, b"[]", {"Content-Type": "application/json"})
        else:
            self._send(200, owner.payload.get(self.path, b"{}"), {"Content-Type": "application/octet-stream"})

    do_GET = do_HEAD = do_PUT = do_POST = _handle

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out: list[bytes] = []
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(out)
            out.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _forward(self, target: str) -> None:
        import http.client

        body = self._body()
        parts = urlsplit(target)
        assert parts.hostname, target  # the target is the server this proxy was started for
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        skip = {"host", "connection", "transfer-encoding", "content-length", "keep-alive"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            kept = {k: v for k, v in answer.getheaders() if k.lower() not in skip}
        finally:
            conn.close()
        self._send(answer.status, data, kept)


class TokenRecorder(_Base):
    """The second host: records ``(method, path, Authorization)`` of every request in ``seen``."""

    handler = _RecorderHandler

    def __init__(self, forward: str | None = None) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.payload: dict[str, bytes] = {}  # path -> bytes served (what a CDN holds)
        self.forward = forward  # pass every request on to this server (``http://host:port``) and return its answer
        self.lock = threading.Lock()
        host = "127.0.0.2"
        try:
            with socket.socket() as probe:
                probe.bind((host, 0))
        except OSError:
            host = "127.0.0.1"  # another port is another origin too
        super().__init__(host)

    def seen_tokens(self) -> list[str]:
        with self.lock:
            return [auth for _m, _p, auth in self.seen if auth]


class _HubHandler(_Quiet):
    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        hub: HostileHub = cast(_Server, self.server).owner
        tricks = hub.tricks
        url = urlsplit(self.path)
        path = unquote(url.path)
        with hub.lock:
            hub.log.append((self.command, self.path, self.headers.get("Authorization")))
        if any(h in path for h in tricks.hang):
            hub.stopping.wait(600)
            return
        if any(h in path for h in tricks.echo_token):
            auth = self.headers.get("Authorization") or "no token"
            self._send(403, f"denied for {auth}".encode(), {"X-Error-Message": f"token {auth} is not allowed"},
                       reason=f"Forbidden {auth}")
            return
        if any(h in path for h in tricks.redirect_loop):
            self._send(302, b"", {"Location": self.path})
            return
        if any(h in path for h in tricks.redirect_other):
            parts = path.strip("/").split("/")
            files = hub.files("/".join(parts[:2]), parts[3]) if len(parts) > 4 else None
            if files is not None and "/".join(parts[4:]) in files:
                hub.other.payload[self.path] = bytes(files["/".join(parts[4:])])
            self._send(302, b"", {"Location": hub.other.endpoint + self.path})
            return
        if any(h in path for h in tricks.endless_body):
            self._endless()
            return
        if any(h in path for h in tricks.gzip_bomb):
            body = _bomb(tricks.gzip_bomb_bytes)
            self._send(200, body, {"Content-Encoding": "gzip", "Content-Type": "application/json"})
            return
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            self._api(hub, parts[2:], parse_qs(url.query))
        else:
            self._resolve(hub, parts)

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b" " * 65536
        try:
            while not cast(_Server, self.server).owner.stopping.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass

    def _json(self, value: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(value, default=str).encode()  # hostile values too (a date as a size)
        self._send(200, body, {"Content-Type": "application/json", **(headers or {})})

    def _api(self, hub: HostileHub, parts: list[str], query: dict[str, list[str]]) -> None:
        if len(parts) < 3:
            self._send(404, b"not found")
            return
        repo = "/".join(parts[:2])
        if repo not in hub.repos:
            self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            return
        if parts[2] == "refs":
            branches = [*hub.repos[repo], *hub.tricks.refs_extra]
            self._json({"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": _commit(repo, b)}
                                     for b in branches], "converts": [], "tags": []})
            return
        if parts[2] == "tree" and len(parts) >= 4:
            files = hub.files(repo, parts[3])
            if files is None:
                self._send(404, b'{"error": "Revision not found"}', {"X-Error-Code": "RevisionNotFound"})
                return
            page = int(query.get("page", ["0"])[0] or 0)
            entries = [] if page else [_entry(p, d) for p, d in sorted(files.items())] + list(hub.tricks.tree_extra)
            for e in entries:
                if isinstance(e, dict) and isinstance(e.get("path"), str) and e["path"] in hub.tricks.size_override:
                    e["size"] = hub.tricks.size_override[e["path"]]
                    if "lfs" in e:
                        e["lfs"]["size"] = e["size"]
            headers = {}
            if hub.tricks.next_page == "other":
                headers["Link"] = f'<{hub.other.endpoint}/api/models/{repo}/tree/{parts[3]}?page=1>; rel="next"'
            elif hub.tricks.next_page == "endless":
                headers["Link"] = f'<{hub.endpoint}/api/models/{repo}/tree/{parts[3]}?page={page + 1}>; rel="next"'
            self._json(entries, headers)
            return
        self._send(404, b"not found")

    def _resolve(self, hub: HostileHub, parts: list[str]) -> None:
        if len(parts) < 5 or parts[2] != "resolve":
            self._send(404, b"not found")
            return
        files = hub.files("/".join(parts[:2]), parts[3])
        name = "/".join(parts[4:])
        if files is None or name not in files:
            self._send(404, b"entry not found", {"X-Error-Code": "EntryNotFound"})
            return
        data = files[name]
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = min(int(last) if last else len(data) - 1, len(data) - 1)
            total = hub.tricks.range_total if hub.tricks.range_total is not None else len(data)
            crange = f"bytes {start}-{end}/{total}"
            if hub.tricks.content_range_echo:
                crange += f" {self.headers.get('Authorization')}"
            self._send(206, data[start:end + 1], {"Content-Range": crange, "Accept-Ranges": "bytes"})
            return
        if isinstance(data, Sparse):
            self._send(416, b"range required")
            return
        self._send(200, data, {"Accept-Ranges": "bytes", "ETag": f'"{_blob_id(data)}"'})


class HostileHub(_Base):
    """The Hub API of ``repos`` ({repo: {branch: {path: bytes}}}) plus :class:`Tricks`; ``.other`` is the recorder."""

    handler = _HubHandler

    def __init__(self, repos: dict[str, dict[str, dict[str, Any]]], tricks: Tricks | None = None) -> None:
        self.repos = repos
        self.tricks = tricks or Tricks()
        self.log: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.other = TokenRecorder()
        super().__init__()

    def __enter__(self) -> HostileHub:
        self.other.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.other.__exit__(*exc)

    def files(self, repo: str, rev: str) -> dict[str, Any] | None:
        """The files of ``rev`` (a branch or its commit id), or None."""
        for branch, files in self.repos.get(repo, {}).items():
            if rev in (branch, _commit(repo, branch)):
                return files
        return None

    def commit(self, repo: str, branch: str) -> str:
        return _commit(repo, branch)

    def requests(self, substring: str = "") -> list[tuple[str, str, str | None]]:
        with self.lock:
            return [r for r in self.log if substring in r[1]]

    def wait_idle(self, seconds: float = 0.05) -> None:
        time.sleep(seconds)
