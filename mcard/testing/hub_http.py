"""HTTP plumbing for the loopback Hub's write API: request bodies, JSON answers, Hub-style errors, forwarding.

:class:`HubHandler` reads request bodies with ``Content-Length`` or chunked
transfer encoding, answers JSON, answers errors the way the Hub does (a JSON
``{"error": ...}`` body plus ``X-Error-Message`` and, where the client
branches on it, ``X-Error-Code``), drains refused bodies so keep-alive
connections stay usable, and forwards a request to another server (olah)
streaming the answer back. It never logs: request headers carry tokens.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
        "proxy-authenticate", "authorization", "host"}


def endpoint_of(server: ThreadingHTTPServer) -> str:
    """``http://host:port`` of a server bound to an IPv4 loopback address."""
    host, port = server.server_address[:2]
    assert isinstance(host, str)  # an AF_INET server: the address it was bound to
    return f"http://{host}:{port}"


_S = TypeVar("_S", bound="LoopbackServer")


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server on loopback, served from a daemon thread: ``start()``, ``stop()``, ``endpoint``."""

    daemon_threads = True
    allow_reuse_address = True
    thread_name = "mcard-loopback"
    _thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return endpoint_of(self)

    def start(self: _S) -> _S:
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()


class HubError(Exception):
    """An answer the Hub gives as an HTTP error: status, message, optional ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubHandler(BaseHTTPRequestHandler):
    """Every method goes to ``_dispatch(method)`` (subclasses route); helpers for bodies and answers."""

    protocol_version = "HTTP/1.1"
    _status = 0
    _remaining: list[int] | None = None  # bytes of the body left to read, once reading started

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def _reader(self) -> Callable[[int], bytes]:
        """``read(n)`` over the request body, Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            state = {"left": 0, "done": False}

            def read_chunked(n: int) -> bytes:
                if state["done"]:
                    return b""
                if state["left"] == 0:
                    line = self.rfile.readline(1024)
                    if not line:
                        raise ConnectionError("client went away")
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        state["done"] = True
                        return b""
                    state["left"] = size
                data = self.rfile.read(min(n, state["left"]))
                if not data:
                    raise ConnectionError("client went away")
                state["left"] -= len(data)
                if state["left"] == 0:
                    self.rfile.readline(16)
                return data

            self._remaining = [1]  # unknown: a refused chunked body closes the connection
            return read_chunked
        remaining = [int(self.headers.get("Content-Length") or 0)]

        def read_fixed(n: int) -> bytes:
            if remaining[0] <= 0:
                return b""
            data = self.rfile.read(min(n, remaining[0]))
            if not data:
                raise ConnectionError("client went away")
            remaining[0] -= len(data)
            return data

        self._remaining = remaining
        return read_fixed

    def _body(self, limit: int = 64 << 20) -> bytes:
        read, parts, total = self._reader(), [], 0
        while chunk := read(1 << 20):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise HubError(413, "Payload Too Large")
        return b"".join(parts)

    def _drain(self) -> None:
        """Read what is left of a body we refuse, so the connection can be reused (or close it)."""
        if self._remaining is None:  # not read at all
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self.close_connection = True
                return
            self._remaining = [int(self.headers.get("Content-Length") or 0)]
        if 0 < self._remaining[0] <= 64 << 20:
            self.rfile.read(self._remaining[0])
            self._remaining[0] = 0
        elif self._remaining[0] > 0 or self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except ValueError:
            raise HubError(400, "request body is not valid JSON") from None

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, content_type: str = "application/json") -> None:
        self._send(status, json.dumps(doc).encode(), content_type)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message.encode("ascii", "replace").decode()[:500]}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers=headers)

    def _forward(self, method: str, upstream: str, endpoint: str) -> None:
        """Send this request to ``upstream`` (no Authorization) and stream its answer back."""
        body = self._body() if method in ("POST", "PUT") else None
        up = urlsplit(upstream)
        assert up.hostname, upstream  # the upstream is the olah server this hub started
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=600)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"content-length"}}
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self._status = resp.status
            self.send_response(resp.status)
            length = resp.getheader("Content-Length")
            for k, v in resp.getheaders():
                if k.lower() in _HOP or k.lower() == "content-length":
                    continue
                if k.lower() == "location":
                    v = v.replace(upstream, endpoint)
                self.send_header(k, v)
            no_body = method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            if length is not None:
                self.send_header("Content-Length", length)
            elif not no_body:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if no_body:
                return
            while chunk := resp.read(1 << 20) if length is not None else resp.read1(1 << 20):
                if length is not None:
                    self.wfile.write(chunk)
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if length is None:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()

