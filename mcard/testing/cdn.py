"""The Hub's download path on loopback: ``/resolve/`` of an LFS file answers 302 to a CDN, as huggingface.co does.

huggingface.co does not serve the bytes of an LFS file itself: ``GET`` or
``HEAD /<repo>/resolve/<rev>/<path>`` answers ``302 Found`` with a signed,
expiring ``Location`` on a CDN host that honours ``Range``, and headers that
describe the file: ``X-Repo-Commit`` (the commit the revision resolved to),
``X-Linked-Etag`` (the LFS sha256, quoted), ``X-Linked-Size`` (its size) and
``ETag`` (the git blob id of the pointer file). Plain git files are served
directly. :class:`CdnFront` answers exactly that for the repos under a
mirrors folder and passes every other request (the API, plain files) to a
read server (olah); the CDN is a real static server, nginx
(:class:`~mcard.testing.nginx.NginxCdn`), serving the LFS object store.

:class:`CdnHub` starts all three (olah, nginx, the front)::

    with CdnHub(mirrors, limit_rate=25_000_000) as hub:   # 25 MB/s per connection, like a CDN edge
        fetch("org/model", endpoint=hub.endpoint)         # HF_ENDPOINT=hub.endpoint
        hub.cdn.requests()                                # what nginx served, one record per request
        hub.front.log                                     # what the front answered

``python -m mcard.testing.cdn --root DIR [--limit-rate 25MB]`` serves
``DIR/models/<org>/<name>`` this way and prints the endpoint as its first
line (stop it with SIGTERM or Ctrl-C). The front serves reads only: publish
to :class:`~mcard.testing.hub.LocalHub`'s own endpoint.

:class:`FrontFaults` makes the front misbehave for tests: redirects whose
signature has already expired (the CDN answers 410), a ``Location`` with
another scheme, a redirect loop, an ``X-Linked-Size`` that contradicts the
listing.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .hub_git import GitStore, TreeEntry
from .hub_http import HubError, HubHandler, LoopbackServer
from .hubserver import OlahServer
from .nginx import NginxCdn


@dataclass
class FrontFaults:
    """What the front does wrong (all off by default)."""

    expired: int = 0  # the next ``expired`` redirects carry a signature that has already expired
    location: str | None = None  # redirect LFS files here instead of the CDN (e.g. another scheme)
    loop: bool = False  # redirect LFS files to themselves, forever
    linked_size: int | None = None  # claim this X-Linked-Size


@dataclass
class FrontLog:
    """One request the front answered: ``authorization`` is the header as received ("" when none)."""

    method: str
    path: str
    status: int
    authorization: str


class CdnFront(LoopbackServer):
    """``/resolve/`` of LFS files: 302 to ``cdn``; everything else: forwarded to ``upstream``."""

    thread_name = "mcard-cdn-front"

    def __init__(self, mirrors_dir: str | Path, upstream: str, cdn: NginxCdn, *, host: str = "127.0.0.1",
                 port: int = 0, ttl: float = 3600.0) -> None:
        super().__init__((host, port), _FrontHandler)
        self.store = GitStore(mirrors_dir)
        self.upstream, self.cdn, self.ttl = upstream, cdn, ttl
        self.cdn_base: str | None = None  # another base URL for the CDN (e.g. a fault proxy in front of nginx)
        self.cdn_rate: int | None = None  # the CDN's rate per connection for the URLs given out (None: nginx's)
        self.faults = FrontFaults()
        self.log: list[FrontLog] = []
        self.lock = threading.Lock()
        self._trees: dict[tuple[str, str], dict[str, TreeEntry]] = {}

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer; never print (headers hold tokens)

    def lfs_entry(self, repo_id: str, revision: str, path: str) -> tuple[str, TreeEntry] | None:
        """(commit, entry) when ``path`` is an LFS file of a public repo at ``revision``; None otherwise."""
        store = self.store
        if not store.exists(repo_id) or store.meta(repo_id).get("private"):
            return None
        try:
            commit = store.resolve(repo_id, revision)
        except HubError:
            return None
        key = (repo_id, commit)
        with self.lock:
            tree = self._trees.get(key)
        if tree is None:
            tree = store.tree(repo_id, commit)  # a commit's tree never changes
            with self.lock:
                self._trees[key] = tree
        entry = tree.get(path)
        return (commit, entry) if entry is not None and entry.lfs_oid else None

    def location(self, repo_id: str, oid: str, request_url: str) -> str:
        faults = self.faults
        if faults.loop:
            return request_url
        if faults.location is not None:
            return faults.location
        ttl = self.ttl
        with self.lock:
            if faults.expired > 0:
                faults.expired -= 1
                ttl = -60.0
        signed = self.cdn.sign(self.cdn.object_path(repo_id, oid), int(time.time() + ttl), self.cdn_rate)
        return (self.cdn_base or self.cdn.endpoint) + signed


class _FrontHandler(HubHandler):
    server: CdnFront

    def _dispatch(self, method: str) -> None:
        self._status = 0
        try:
            if not self._redirect(method):
                self._forward(method, self.server.upstream, self.server.endpoint)
        except HubError as exc:
            self._error(exc.status, exc.message, exc.code)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        with self.server.lock:
            self.server.log.append(FrontLog(method, self.path, self._status, self.headers.get("Authorization", "")))

    def _redirect(self, method: str) -> bool:
        """Answer a 302 for an LFS file's ``/resolve/`` (GET or HEAD); False when the request is not one."""
        if method not in ("GET", "HEAD"):
            return False
        segs = [unquote(s) for s in urlsplit(self.path).path.split("/")[1:]]
        if len(segs) < 5 or segs[2] != "resolve":
            return False
        repo_id, revision, path = f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:])
        found = self.server.lfs_entry(repo_id, revision, path)
        if found is None:
            return False
        commit, entry = found
        assert entry.lfs_oid is not None
        location = self.server.location(repo_id, entry.lfs_oid, self.server.endpoint + self.path)
        size = self.server.faults.linked_size
        body = f"Found. Redirecting to {location}".encode()
        self._send(302, body, "text/plain; charset=utf-8", headers={
            "Location": location, "X-Repo-Commit": commit, "ETag": f'"{entry.blob}"',
            "X-Linked-Etag": f'"{entry.lfs_oid}"', "X-Linked-Size": str(entry.size if size is None else size),
            "Accept-Ranges": "bytes"})
        return True


class CdnHub:
    """olah (the API and plain files), nginx (the CDN) and the front (the endpoint), over one mirrors folder.

    ``limit_rate``: the CDN's bytes per second per connection (0: unlimited);
    ``ttl``: seconds a redirect's signed URL stays valid; ``upstream``: an
    already running read server to use instead of starting olah.
    """

    def __init__(self, mirrors_dir: str | Path, *, limit_rate: int = 0, ttl: float = 3600.0,
                 upstream: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.mirrors_dir = Path(mirrors_dir)
        self.limit_rate, self.ttl, self.upstream = limit_rate, ttl, upstream
        self.host, self.port = host, port
        self.olah: OlahServer | None = None
        self.cdn_server: NginxCdn | None = None
        self.front_server: CdnFront | None = None

    @property
    def endpoint(self) -> str:
        return self.front.endpoint

    @property
    def front(self) -> CdnFront:
        if self.front_server is None:
            raise RuntimeError("CdnHub is not running")
        return self.front_server

    @property
    def cdn(self) -> NginxCdn:
        if self.cdn_server is None:
            raise RuntimeError("CdnHub is not running")
        return self.cdn_server

    def start(self) -> CdnHub:
        if self.front_server is not None:
            return self
        try:
            self.cdn_server = NginxCdn(self.mirrors_dir, limit_rate=self.limit_rate, host=self.host).start()
            upstream = self.upstream
            if upstream is None:
                self.olah = OlahServer(self.mirrors_dir, host=self.host).start()
                upstream = self.olah.endpoint
            self.front_server = CdnFront(self.mirrors_dir, upstream, self.cdn_server, host=self.host,
                                         port=self.port, ttl=self.ttl).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.front_server is not None:
            self.front_server.stop()
            self.front_server = None
        if self.olah is not None:
            self.olah.stop()
            self.olah = None
        if self.cdn_server is not None:
            self.cdn_server.stop()
            self.cdn_server = None

    def __enter__(self) -> CdnHub:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def resolve_url(self, repo_id: str, revision: str, path: str) -> str:
        """The ``/resolve/`` URL of a file on this hub (what ``hf download`` asks first)."""
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path, safe='/')}"


def _rate(text: str) -> int:
    from ..registry.schema import parse_size

    text = text.strip().removesuffix("/s")
    return parse_size(int(text) if text.isdigit() else text, "--limit-rate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcard.testing.cdn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="folder of repos (DIR/models/<org>/<name>)")
    parser.add_argument("--limit-rate", default="0", help="the CDN's rate per connection, e.g. 25MB (0: unlimited)")
    parser.add_argument("--port", type=int, default=0, help="the front's port (0: a free one)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        hub = CdnHub(args.root, limit_rate=_rate(args.limit_rate), port=args.port).start()
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        print(f"mcard.testing.cdn: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        print(hub.endpoint, flush=True)
        print(f"serving {args.root.resolve()}: API and plain files from olah, LFS files by 302 to nginx at "
              f"{hub.cdn.endpoint}; stop with SIGTERM", file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
