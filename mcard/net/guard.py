"""One bounded HTTP layer: every request of a session passes this guard, whichever client sends it.

A :class:`NetSession` is one command run against one Hub endpoint. Its
transport (:func:`guarded_transport`) sits under mcard's own ``httpx`` client
*and* under the client huggingface_hub uses for mcard (``httpx2`` in
huggingface_hub 2.x, ``httpx`` in 1.x: the transport is built for either
module), and applies to every request, every redirect hop and every page of a
listing:

* **the token rule**: ``Authorization`` goes only to the origin (scheme, host,
  port) of the endpoint; it is removed from any request to another origin
  (a redirect to a CDN, a next-page link, an LFS URL). mcard's own requests
  never carry the token themselves: the guard adds it for the endpoint.
  Outside an mcard run (``strict=False``: huggingface_hub used directly in a
  process that also uses mcard) the guard does not know the endpoint, and
  removes the token from what it can tell is foreign: a next-page link that
  points to another origin than the page that announced it (redirects to
  another origin already lose it in the client);
* **time**: connect and read timeouts on every request (a caller's longer or
  missing timeout is clamped), a whole-response limit for metadata, and a
  session deadline past which no request starts and no read waits;
* **bytes**: ``Accept-Encoding: identity`` is asked for; a body is capped
  (the caller's per-request cap, else the metadata cap) *after* decoding; a
  gzip or deflate body is decoded here under that cap, any other encoding is
  refused;
* **counts**: requests per session, pages per paginated listing (a
  ``Link: <...>; rel="next"`` chain);
* **schemes**: only ``http`` and ``https`` requests leave (a redirect to
  ``ftp:``, ``file:`` or any other scheme is refused at that hop).

A refusal raises :class:`NetRefused` (exit 2: the server's answer is not
usable); the deadline raises :class:`DeadlineExceeded` (exit 1).
"""

from __future__ import annotations

import functools
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from ..core.errors import McardError, UnusableInput
from .limits import NetLimits

CAP_KEY = "mcard.cap"  # request extension: the byte cap of this response's body
MAX_FILE_BYTES = 1 << 41  # as mcard.hub.model.MAX_LISTED_SIZE: no Hub file is larger
_DEFAULT_PORTS = {"http": 80, "https": 443}


class NetRefused(UnusableInput):
    """The server's answer breaks a limit or a rule (too large, wrong encoding, endless pages)."""


class DeadlineExceeded(McardError):
    """The session's time is up."""


def origin(url: Any) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a URL (a string or an httpx URL), the unit the token rule compares."""
    parts = urlsplit(str(url))
    scheme = (parts.scheme or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def _where(url: Any) -> str:
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path[:200]}"


class NetSession:
    """Counters, deadline and the token rule of one run against one endpoint (thread-safe)."""

    def __init__(self, endpoint: str, token: str | None = None, limits: NetLimits | None = None,
                 strict: bool = True) -> None:
        self.endpoint = endpoint
        self.strict = strict
        self.origin = origin(endpoint)
        self.token = token or None
        self.limits = limits or NetLimits.from_env()
        self.started = time.monotonic()
        self.requests = 0
        self._pages: dict[str, tuple[int, tuple[str, str, int]]] = {}  # next URL -> (page, announcing origin)
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the token
        return f"NetSession({self.endpoint!r}, requests={self.requests})"

    def remaining(self) -> float:
        return self.limits.deadline - (time.monotonic() - self.started)

    # -- before sending ---------------------------------------------------------------------
    def admit(self, request: Any) -> None:
        """Check and adjust one outgoing request (or redirect hop) in place."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"the run passed its deadline of {self.limits.deadline:g} s "
                                   "(MCARD_DEADLINE); no further request is made")
        url = str(request.url)
        scheme = request.url.scheme.lower()
        if scheme not in ("http", "https"):  # a redirect to ftp:, file:, data: ... is refused, not retried
            raise NetRefused(f"{_where(url)[:200]}: refused a request to a {scheme[:20]!r} URL; "
                             "only http and https are followed")
        with self._lock:
            self.requests += 1
            if self.requests > self.limits.max_requests:
                raise NetRefused(f"more than {self.limits.max_requests} requests in one run; stopping")
            page, announcer = self._pages.pop(url, (1, None))
        if page > self.limits.max_pages:
            raise NetRefused(f"{_where(url)}: the listing goes on past {self.limits.max_pages} pages; refused")
        request.extensions = {**request.extensions, "mcard.page": page}
        here = origin(url)
        if here == self.origin and self.strict:
            if self.token and "authorization" not in request.headers:
                request.headers["Authorization"] = f"Bearer {self.token}"
        elif self.strict or (announcer is not None and announcer != here):
            for name in ("authorization", "cookie"):
                if name in request.headers:
                    del request.headers[name]
        request.headers["Accept-Encoding"] = "identity"
        request.extensions["timeout"] = self._timeouts(request.extensions.get("timeout") or {}, left)

    def _timeouts(self, given: dict[str, Any], left: float) -> dict[str, float]:
        lim = self.limits

        def clamp(key: str, ours: float) -> float:
            value = given.get(key)
            value = ours if value is None else min(float(value), ours)
            return max(min(value, left), 0.001)

        return {"connect": clamp("connect", lim.connect_timeout), "read": clamp("read", lim.read_timeout),
                "write": clamp("write", lim.read_timeout), "pool": clamp("pool", lim.read_timeout)}

    # -- after the headers arrive -------------------------------------------------------------
    def note_next_page(self, request: Any, response: Any) -> None:
        link = response.headers.get("link")
        if not link or 'rel="next"' not in link and "rel=next" not in link:
            return
        try:
            target = response.links.get("next", {}).get("url")
            nxt = str(request.url.join(target)) if target else None
        except Exception:  # noqa: BLE001 - a malformed Link header: the client will not follow it either
            return
        if nxt:
            with self._lock:
                if len(self._pages) < 10_000:
                    self._pages[nxt] = (int(request.extensions.get("mcard.page", 1)) + 1, origin(request.url))

    def body_limits(self, request: Any, status: int) -> tuple[int, float | None]:
        """(byte cap, whole-response seconds or None) of this response.

        A request that names its cap gets it; a file download huggingface_hub makes
        (a ``/resolve/`` URL) gets the largest file size a listing may state (it
        verifies size and hash itself); any other request gets the metadata cap
        and time limit.
        """
        cap = request.extensions.get(CAP_KEY)
        if cap is None and status < 400 and "/resolve/" in request.url.path:
            return MAX_FILE_BYTES, None
        if cap is None or status >= 400:
            return self.limits.api_body_bytes if cap is None else min(int(cap), self.limits.api_body_bytes), \
                self.limits.response_seconds
        return int(cap), None


def _decoder(encoding: str) -> Callable[[bytes, int], bytes] | None:
    if encoding in ("gzip", "x-gzip"):
        obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        obj = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header
    else:
        return None

    def decode(data: bytes, room: int) -> bytes:
        out = obj.decompress(data, room)
        if obj.unconsumed_tail:  # more output than there is room for
            return out + b"\0"
        return out

    return decode


@functools.cache
def _classes(module: ModuleType) -> tuple[type, type]:
    """The capped stream and the transport, built on ``module``'s base classes (httpx or httpx2)."""

    class CappedStream(module.SyncByteStream):  # type: ignore[name-defined]  # httpx or httpx2, chosen at run time
        def __init__(self, inner: Any, session: NetSession, where: str, cap: int, seconds: float | None,
                     decode: Callable[[bytes, int], bytes] | None) -> None:
            self.inner, self.session, self.where = inner, session, where
            self.cap, self.decode = cap, decode
            self.until = None if seconds is None else time.monotonic() + seconds

        def __iter__(self) -> Iterator[bytes]:
            got = 0
            for chunk in self.inner:
                if self.until is not None and time.monotonic() > self.until:
                    raise NetRefused(f"{self.where}: the response took longer than "
                                     f"{self.session.limits.response_seconds:g} s; refused")
                if self.session.remaining() <= 0:
                    raise DeadlineExceeded(f"{self.where}: the run passed its deadline of "
                                           f"{self.session.limits.deadline:g} s (MCARD_DEADLINE)")
                if self.decode is not None:
                    chunk = self.decode(chunk, self.cap - got + 1)
                got += len(chunk)
                if got > self.cap:
                    raise NetRefused(f"{self.where}: the response is larger than {self.cap} bytes"
                                     + (" after decoding" if self.decode is not None else "") + "; refused")
                if chunk:
                    yield chunk

        def close(self) -> None:
            self.inner.close()

    class GuardedTransport(module.BaseTransport):  # type: ignore[name-defined]  # as above
        def __init__(self, inner: Any, session_of: Callable[[], NetSession]) -> None:
            self.inner, self.session_of = inner, session_of

        def handle_request(self, request: Any) -> Any:
            session = self.session_of()
            session.admit(request)
            response = self.inner.handle_request(request)
            try:
                return self._bounded(session, request, response)
            except BaseException:
                response.close()
                raise

        def _bounded(self, session: NetSession, request: Any, response: Any) -> Any:
            where = _where(request.url)
            session.note_next_page(request, response)
            cap, seconds = session.body_limits(request, response.status_code)
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            decode = None
            headers = list(response.headers.multi_items())
            if encoding not in ("", "identity"):
                decode = _decoder(encoding)
                if decode is None:
                    raise NetRefused(f"{where}: the server sent Content-Encoding {encoding[:40]!r}, "
                                     "which mcard does not accept (it asks for identity)")
                headers = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length")]
            else:
                length = response.headers.get("content-length", "").strip()
                if length.isdigit() and int(length) > cap:
                    raise NetRefused(f"{where}: the response announces {length} bytes, more than the "
                                     f"{cap} allowed; refused")
            stream = CappedStream(response.stream, session, where, cap, seconds, decode)
            return module.Response(response.status_code, headers=headers, stream=stream,
                                   extensions=response.extensions)

        def close(self) -> None:
            self.inner.close()

    return CappedStream, GuardedTransport


def guarded_transport(module: ModuleType, session_of: Callable[[], NetSession], inner: Any = None) -> Any:
    """A transport of ``module`` (httpx or httpx2) that applies the session's rules to every request."""
    transport_cls = _classes(module)[1]
    return transport_cls(inner if inner is not None else module.HTTPTransport(), session_of)
