"""A small fault-injecting HTTP proxy to put in front of olah (loopback only, stdlib only).

Every request is forwarded to the upstream server. File downloads (paths
containing ``/resolve/`` by default) are read whole from upstream (and kept
in memory, keyed by path: commit-pinned URLs never change) and then served
by the proxy itself, which lets it:

* implement ``Range`` (``honour_range=True``: 206 + Content-Range), or answer
  200 to a Range request (the default, like olah);
* drop the connection after ``drop_after`` body bytes (``drop_times`` times);
* stall for ``stall_seconds`` after ``stall_after`` bytes (``stall_times`` times);
* flip the byte at file offset ``corrupt_offset``;
* sleep ``chunk_delay`` seconds per 64 KiB (a slow server);
* answer a range request with the bytes and ``Content-Range`` of the next
  range (``wrong_range_times`` times), or with ``extra_bytes`` more body
  bytes than the range holds (``extra_times`` times), or with ``200`` and the
  whole file when the range starts at ``ignore_range_from`` or later (a
  server that stops honouring Range mid-file);
* answer ``status`` (429, 503...) with ``Retry-After: retry_after`` the first
  ``status_times`` times;
* append ``tree_extra`` entries to tree listings (a hostile listing).

``proxy.log`` records every request (method, path, Range, status, body
bytes actually sent, Authorization header); ``proxy.bytes_sent(substr)`` sums
body bytes for matching paths. Faults can be swapped at any time with
``proxy.set_faults(Faults(...))``.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

CHUNK = 64 * 1024
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "content-encoding"}


@dataclass
class Faults:
    """What to do to matching requests (``match`` is a substring of the path)."""

    match: str = "/resolve/"
    honour_range: bool = False
    drop_after: int | None = None
    drop_times: int = 1
    stall_after: int | None = None
    stall_seconds: float = 0.0
    stall_times: int = 1
    corrupt_offset: int | None = None
    chunk_delay: float = 0.0
    status: int | None = None
    status_times: int = 0
    retry_after: str | None = None
    tree_extra: list[dict[str, Any]] = field(default_factory=list)
    wrong_range_times: int = 0
    extra_bytes: int = 0
    extra_times: int = 0
    ignore_range_from: int | None = None


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    status: int
    sent: int
    authorization: str | None
    # Set when the handler has written its last byte: the client can finish reading before the
    # handler thread gets back the GIL to count the bytes of its last write.
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = self.path
        entry = Logged(self.command, path, self.headers.get("Range"), 0, 0, self.headers.get("Authorization"))
        proxy._record(entry)
        try:
            self._answer(proxy, entry, path, body)
        finally:
            entry.done.set()

    def _answer(self, proxy: FaultProxy, entry: Logged, path: str, body: bytes | None) -> None:
        faults = proxy.faults
        matching = faults.match in urlparse(path).path
        if matching and proxy._take("status"):
            payload = json.dumps({"error": f"injected {faults.status}"}).encode()
            headers = {"Content-Type": "application/json"}
            if faults.retry_after is not None:
                headers["Retry-After"] = faults.retry_after
            self._send(entry, faults.status or 503, headers, payload)
            return
        try:
            status, headers, content = proxy._upstream(self.command, path, self.headers, body)
        except OSError as exc:
            self._send(entry, 502, {}, f"upstream error: {exc}".encode())
            return
        if "/tree/" in path and faults.tree_extra and status == 200:
            content = json.dumps(json.loads(content) + faults.tree_extra).encode()
        if self.command == "GET" and matching and status == 200:
            self._serve_file(entry, headers, content, faults)
        else:
            self._send(entry, status, headers, content)

    def _send(self, entry: Logged, status: int, headers: dict[str, str], content: bytes) -> None:
        entry.status = status
        self.send_response(status)
        headers = dict(headers)
        length = headers.pop("X-Proxy-Head-Length", None)  # a HEAD answer keeps the upstream length
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", length if length is not None else str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
            entry.sent = len(content)

    def _serve_file(self, entry: Logged, headers: dict[str, str], content: bytes, faults: Faults) -> None:
        proxy = self.server.proxy
        start, status = 0, 200
        m = re.match(r"^bytes=(\d+)-(\d*)$", (self.headers.get("Range") or "").strip())
        extra = 0
        if m and faults.ignore_range_from is not None and int(m.group(1)) >= faults.ignore_range_from:
            m = None
        if m and faults.honour_range:
            start = int(m.group(1))
            end = min(int(m.group(2)), len(content) - 1) if m.group(2) else len(content) - 1
            if start >= len(content):
                self._send(entry, 416, {"Content-Range": f"bytes */{len(content)}"}, b"")
                return
            if proxy._take("wrong_range"):  # the next range of the same length, labelled as such
                shift = min(end - start + 1, len(content) - 1 - end) or -start
                start, end = start + shift, end + shift
            elif proxy._take("extra"):
                extra = min(faults.extra_bytes, len(content) - 1 - end)
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(content)}"}
            content = content[: end + 1 + extra]
        body = memoryview(bytes(content[start:]))
        if faults.corrupt_offset is not None and start <= faults.corrupt_offset < len(content):
            mutable = bytearray(body)
            mutable[faults.corrupt_offset - start] ^= 0xFF
            body = memoryview(bytes(mutable))
        entry.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes" if faults.honour_range else "none")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drop = faults.drop_after if faults.drop_after is not None and proxy._take("drop") else None
        stall = faults.stall_after if faults.stall_after is not None and proxy._take("stall") else None
        pos = 0
        try:
            while pos < len(body):
                if drop is not None and pos >= drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if stall is not None and pos >= stall:
                    time.sleep(faults.stall_seconds)
                    stall = None
                step = CHUNK
                for limit in (drop, stall):
                    if limit is not None and pos < limit:
                        step = min(step, limit - pos)
                piece = body[pos:pos + step]
                self.wfile.write(piece)
                pos += len(piece)
                entry.sent = pos
                if faults.chunk_delay:
                    time.sleep(faults.chunk_delay)
        except OSError:
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy


class FaultProxy:
    """``with FaultProxy(upstream_endpoint) as proxy: ... proxy.endpoint ...``"""

    def __init__(self, upstream: str, faults: Faults | None = None, *, cache_bodies: bool = True,
                 cache_match: str = "/resolve/") -> None:
        url = urlparse(upstream)
        self._up_host, self._up_port = url.hostname or "127.0.0.1", url.port or 80
        self.cache_bodies = cache_bodies
        self.cache_match = cache_match  # GETs whose path holds this are read once, keyed by path without query
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._left: dict[str, int] = {}
        self._bodies: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self.faults = Faults()
        self.set_faults(faults or Faults())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = replace(faults)
            self._left = {"status": faults.status_times if faults.status else 0,
                          "drop": faults.drop_times, "stall": faults.stall_times,
                          "wrong_range": faults.wrong_range_times, "extra": faults.extra_times}

    def _take(self, kind: str) -> bool:
        with self._lock:
            if self._left.get(kind, 0) > 0:
                self._left[kind] -= 1
                return True
            return False

    def _record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def bytes_sent(self, substring: str = "/resolve/", timeout: float = 10.0) -> int:
        """Body bytes written to clients for GETs whose path contains ``substring``.

        Waits (up to ``timeout``) for those responses to finish, so a count taken right after
        the client has read the last byte includes it.
        """
        with self._lock:
            entries = [e for e in self.log if substring in e.path and e.method == "GET"]
        deadline = time.monotonic() + timeout
        for e in entries:
            e.done.wait(max(0.0, deadline - time.monotonic()))
        return sum(e.sent for e in entries)

    def requests(self, substring: str = "") -> list[Logged]:
        with self._lock:
            return [e for e in self.log if substring in e.path]

    def _upstream(self, method: str, path: str, headers: Any, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        key = f"{method} {urlparse(path).path}"
        cacheable = method == "GET" and self.cache_match in path and self.cache_bodies
        if cacheable:
            with self._lock:
                hit = self._bodies.get(key)
            if hit is not None:
                return hit
        send = {k: v for k, v in headers.items() if k.lower() not in _HOP and k.lower() not in ("host", "range")}
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=send)
            resp = conn.getresponse()
            content = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP}
            if method == "HEAD" and resp.getheader("Content-Length") is not None:
                out["X-Proxy-Head-Length"] = resp.getheader("Content-Length") or "0"
            for k, v in out.items():  # keep redirects (e.g. FastAPI's trailing-slash 307) on the proxy
                if k.lower() == "location":
                    out[k] = v.replace(f"http://{self._up_host}:{self._up_port}", self.endpoint)
            result = (resp.status, out, content)
        finally:
            conn.close()
        if cacheable and result[0] == 200:
            with self._lock:
                self._bodies[key] = result
        return result

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
