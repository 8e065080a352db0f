"""One big file over several connections: ranged requests, bytes written at their offsets, hashed in order.

:func:`download_parallel` is :func:`mcard.hub.transfer.download_verified` for
big files. The file is cut into pieces (:mod:`mcard.hub.pieces`); each of up
to ``plan.connections`` threads takes the lowest piece left and asks for it
with ``Range: bytes=a-b``, writes what arrives at its offset in the partial
file, appends the range to the journal (:mod:`mcard.hub.journal`) and takes
the next. A thread hashes the contiguous prefix as it grows, so the sha256
(and, for plain git files, the blob id) is known when the last range lands.
The partial file reaches its final path only when both match the listing.

The Hub answers ``/resolve/`` for an LFS file with a redirect to a CDN. The
first request goes through ``/resolve/``: the redirect's ``X-Linked-Size``
and ``X-Linked-Etag`` must agree with the listing, and later requests go
straight to the CDN URL (one round trip less per piece). When the CDN
refuses that URL (401/403/404/410: a signed URL that expired) the next
request goes through ``/resolve/`` again. Every request and redirect hop
passes :mod:`mcard.net`'s guard (the token goes to the endpoint only;
loops and other schemes are refused) and is capped at the file's size.

Every answer is checked: a ``206`` must carry exactly the ``Content-Range``
asked for (and a matching ``Content-Length``); a body that ends early,
stalls past the read timeout, or fails with a 5xx/429 is retried from where
it stopped, with backoff, up to ``policy.max_retries`` times per range; more
bytes than asked are never read. A ``200`` (the server ignores Range) makes
the file start over on one connection (:func:`download_verified`). When a
range gives up, the data file and its journal (:mod:`mcard.hub.journal`) stay
for the next run.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..core.errors import CheckFailed, McardError
from ..core.pathguard import Target
from ..net import origin, stream
from . import journal
from .model import RemoteFile
from .pieces import Pieces, PrefixHasher, RangePlan, Slot
from .ratelimit import RateLimit
from .transfer import Outcome, RetryPolicy, Transient, Verifier, check_status, download_verified

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_REFUSED_URL = (401, 403, 404, 410)  # a CDN refusing a signed URL (expired, revoked): resolve again


class _IgnoredRange(Exception):
    """The server answered 200 to a range request: it does not serve ranges."""


@dataclass
class _Hooks:
    advance: Callable[[int], None]
    reset: Callable[[int], None]
    limit: RateLimit | None


class _Source:
    """Where the bytes come from: ``/resolve/`` on the endpoint, then the CDN URL it redirected to."""

    def __init__(self, resolve_url: str, rf: RemoteFile) -> None:
        self.resolve_url, self.rf = resolve_url, rf
        self.direct: str | None = None
        self._lock = threading.Lock()

    def url(self) -> str:
        with self._lock:
            return self.direct or self.resolve_url

    def learn(self, resp: httpx.Response) -> None:
        """Check the Hub's redirect against the listing; remember where it led."""
        if not resp.history:
            return
        hop = resp.history[0]
        if str(hop.request.url) == self.resolve_url:
            _check_linked(hop, self.rf)
        with self._lock:
            self.direct = str(resp.url)

    def forget(self, url: str) -> bool:
        """Stop using ``url`` directly; True when it was the CDN URL (so resolving again may help)."""
        with self._lock:
            if self.direct == url:
                self.direct = None
                return True
            return False


def _check_linked(hop: httpx.Response, rf: RemoteFile) -> None:
    size = hop.headers.get("x-linked-size", "").strip()
    if size and size != str(rf.size):
        raise McardError(f"the Hub's redirect says the file has {size[:40]} bytes, the listing {rf.size}", rf.path)
    etag = hop.headers.get("x-linked-etag", "").strip().removeprefix("W/").strip('"')
    if etag and rf.sha256 and etag.lower() != rf.sha256:
        raise McardError(f"the Hub's redirect names sha256 {etag[:64]!r}, the listing {rf.sha256}", rf.path)


class _Download:
    """One parallel download (see the module docstring); :meth:`run` returns the bytes fetched."""

    def __init__(self, client: httpx.Client, source: _Source, rf: RemoteFile, fd: int, pieces: Pieces,
                 log: journal.Journal, policy: RetryPolicy, hooks: _Hooks, cancel: threading.Event | None,
                 sleep: Callable[[float], None]) -> None:
        self.client, self.source, self.rf, self.fd = client, source, rf, fd
        self.pieces, self.journal, self.policy, self.hooks = pieces, log, policy, hooks
        self.cancel, self.sleep = cancel, sleep
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.received = 0
        self._lock = threading.Lock()

    # -- threads -----------------------------------------------------------------------------
    def run(self) -> None:
        """Fetch every piece; raise the first failure (or :class:`_IgnoredRange`)."""
        first = self.pieces.claim()
        if first is None:
            return
        answered = threading.Event()
        threads = [threading.Thread(target=self._worker, args=(first, answered), daemon=True)]
        threads[0].start()
        while not answered.wait(0.05):  # the first answer tells whether the server serves ranges
            if not threads[0].is_alive():
                break
        if answered.is_set() and not self.stop.is_set():
            for _ in range(self.pieces.plan.connections - 1):
                slot = self.pieces.claim()
                if slot is None:
                    break
                thread = threading.Thread(target=self._worker, args=(slot, None), daemon=True)
                thread.start()
                threads.append(thread)
        for thread in threads:
            thread.join()
        if self.error is not None:
            raise self.error
        if self.cancel is not None and self.cancel.is_set():
            raise McardError("interrupted", self.rf.path)

    def _worker(self, slot: Slot | None, answered: threading.Event | None) -> None:
        try:
            while slot is not None and not self._stopping():
                try:
                    self._fetch(slot, answered)
                finally:
                    self.pieces.release(slot)
                slot = None if self._stopping() else self.pieces.claim()
        except BaseException as exc:  # noqa: BLE001 - the first failure stops every connection
            with self._lock:
                if self.error is None:
                    self.error = exc
            self.stop.set()
        finally:
            if answered is not None:
                answered.set()

    def _stopping(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())

    # -- one range -----------------------------------------------------------------------------
    def _fetch(self, slot: Slot, answered: threading.Event | None) -> None:
        """Fetch ``slot`` to its end, resuming within it after each failure."""
        while slot.cursor < slot.end and not self._stopping():
            try:
                self._request(slot, answered)
            except (Transient, httpx.TransportError) as exc:
                slot.failures += 1
                if slot.failures > self.policy.max_retries:
                    detail = str(exc) if isinstance(exc, Transient) else f"{type(exc).__name__}: {exc}"
                    raise McardError(f"download failed: bytes {slot.cursor}-{slot.end - 1} failed "
                                     f"{slot.failures} times ({detail}); the partial file and its journal are kept "
                                     "to resume", self.rf.path) from None
                self.sleep(self.policy.delay(slot.failures, getattr(exc, "retry_after", None)))

    def _request(self, slot: Slot, answered: threading.Event | None) -> None:
        rf = self.rf
        start, end = slot.cursor, slot.end
        url = self.source.url()
        with stream(self.client, url, cap=rf.size, headers={"Range": f"bytes={start}-{end - 1}"},
                    what=rf.path) as resp:
            self._check_answer(resp, start, end)
            if answered is not None:
                answered.set()
            self._read_body(resp, slot, end)
        if slot.cursor < slot.end and not self._stopping():
            raise Transient(f"{rf.path}: the answer for bytes {start}-{end - 1} ended after "
                            f"{slot.cursor - start} bytes")

    def _check_answer(self, resp: httpx.Response, start: int, end: int) -> None:
        rf = self.rf
        self.source.learn(resp)
        code = resp.status_code
        if code == 200:
            raise _IgnoredRange()
        if code in _REFUSED_URL and origin(resp.url) != origin(self.source.resolve_url) \
                and self.source.forget(str(resp.url)):
            raise Transient(f"{rf.path}: the CDN answered HTTP {code} (an expired link?); resolving it again")
        if code == 416:
            raise Transient(f"{rf.path}: the server refused bytes {start}-{end - 1} (HTTP 416) of a "
                            f"{rf.size}-byte file")
        check_status(resp, rf.path)
        if code != 206:
            raise Transient(f"{rf.path}: HTTP {code} to a range request")
        found = _CONTENT_RANGE.match(resp.headers.get("content-range", "").strip())
        if found is None or (int(found.group(1)), int(found.group(2)), found.group(3)) != (start, end - 1, str(rf.size)):
            raise Transient(f"{rf.path}: asked for bytes {start}-{end - 1}/{rf.size}, the answer holds "
                            f"{resp.headers.get('content-range', 'no Content-Range')[:80]!r}")
        length = resp.headers.get("content-length", "").strip()
        if length and length != str(end - start):
            raise Transient(f"{rf.path}: bytes {start}-{end - 1} came with Content-Length {length[:40]}")

    def _read_body(self, resp: httpx.Response, slot: Slot, asked_end: int) -> None:
        """Write the body at its offset in batches; never more than the slot's (possibly shrunk) end.

        The body is read to its end, so the connection goes back to the pool for the next piece, unless
        another connection took this range's tail meanwhile: then it is closed where that tail begins.
        """
        pending: list[bytes] = []
        size = 0
        try:
            for piece in resp.iter_raw():
                room = self.pieces.room(slot, size)
                if len(piece) > room:
                    piece = piece[:room]
                if piece:
                    pending.append(piece)
                    size += len(piece)
                if size >= self.pieces.plan.batch or size and len(piece) == room:
                    self._write(slot, pending, size)
                    pending, size = [], 0
                if len(piece) == room and slot.end < asked_end or self._stopping():
                    break
        except httpx.TransportError as exc:
            self._write(slot, pending, size)
            raise Transient(f"{self.rf.path}: {type(exc).__name__} at byte {slot.cursor}") from None
        self._write(slot, pending, size)

    def _write(self, slot: Slot, pending: list[bytes], size: int) -> None:
        room = self.pieces.room(slot, 0)  # another connection may have taken this range's tail meanwhile
        if size > room:
            pending, size = _clip(pending, room), room
        if not size:
            return
        written = os.pwritev(self.fd, pending, slot.cursor)
        if written != size:
            raise McardError(f"cannot write: short write at byte {slot.cursor}", self.rf.path)
        self.journal.add(slot.cursor, slot.cursor + size)
        self.pieces.record(slot, size)
        with self._lock:
            self.received += size
        self.hooks.advance(size)
        if self.hooks.limit is not None:
            self.hooks.limit.take(size)


def _clip(pieces: list[bytes], nbytes: int) -> list[bytes]:
    out, left = [], nbytes
    for piece in pieces:
        if left <= 0:
            break
        out.append(piece[:left])
        left -= len(out[-1])
    return out


def download_parallel(client: httpx.Client, url: str, rf: RemoteFile, partial: Path, final: Path, *,
                      plan: RangePlan, policy: RetryPolicy | None = None,
                      advance: Callable[[int], None] | None = None, reset: Callable[[int], None] | None = None,
                      cancel: threading.Event | None = None, sleep: Callable[[float], None] = time.sleep,
                      target: Target | None = None, limit: RateLimit | None = None) -> Outcome:
    """Download ``url`` into ``final`` over ``plan.connections`` connections, verified against ``rf``.

    ``partial`` is the one-stream partial file (``<etag>.incomplete``): a prefix
    left there by an earlier one-stream run (mcard's or huggingface_hub's) is
    taken over; the ranges go to :func:`mcard.hub.journal.ranged_path` beside it.
    Same contract as :func:`~mcard.hub.transfer.download_verified`: the
    returned :class:`~mcard.hub.transfer.Outcome` says what was resumed and
    received; a hash mismatch removes the partial data and raises
    :class:`~mcard.core.errors.CheckFailed` (after one clean retry when the run
    resumed earlier data); a range that keeps failing raises
    :class:`~mcard.core.errors.McardError` and keeps the data file and journal.
    """
    target = target or Target(partial.parent)
    policy = policy or RetryPolicy()
    hooks = _Hooks(advance or (lambda n: None), reset or (lambda pos: None), limit)
    target.mkdirs(partial.parent)
    ranged = journal.ranged_path(partial)
    source = _Source(url, rf)
    outcome = Outcome(sha256="", resumed_from=0, received=0, restarts=0)
    first_pass = True
    while True:
        done = journal.load(ranged, rf, target)
        if done is None:  # no journal: a one-stream partial file is a prefix to keep
            done = _adopt(partial, ranged, rf)
        if first_pass:
            outcome.resumed_from = sum(b - a for a, b in done)
        first_pass = False
        try:
            sha = _one_pass(client, source, rf, ranged, final, done, plan, policy, hooks, cancel, sleep, target,
                            outcome)
        except _IgnoredRange:
            journal.discard(ranged)
            outcome.restarts += 1
            hooks.reset(0)
            return _single(client, url, rf, partial, final, policy, hooks, cancel, sleep, target, outcome)
        except CheckFailed:
            journal.discard(ranged)
            if outcome.resumed_from and not outcome.restarts:  # the earlier run's bytes may be what was wrong
                outcome.restarts += 1
                hooks.reset(0)
                continue
            raise
        if os.path.lexists(partial) and not partial.is_symlink():  # a one-stream partial left beside: stale now
            partial.unlink()
        outcome.sha256 = sha
        return outcome


def _adopt(partial: Path, ranged: Path, rf: RemoteFile) -> list[tuple[int, int]]:
    """Move a one-stream partial file (a prefix) to ``ranged``; the ranges it holds."""
    if not os.path.lexists(partial):
        return []
    if partial.is_symlink() or not partial.is_file() or partial.stat().st_size > rf.size:
        partial.unlink()
        return []
    size = partial.stat().st_size
    os.replace(partial, ranged)
    return [(0, size)] if size else []


def _one_pass(client: httpx.Client, source: _Source, rf: RemoteFile, ranged: Path, final: Path,
              done: list[tuple[int, int]], plan: RangePlan, policy: RetryPolicy, hooks: _Hooks,
              cancel: threading.Event | None, sleep: Callable[[float], None], target: Target,
              outcome: Outcome) -> str:
    """Fetch what ``done`` lacks, hash, verify, move into place; return the sha256."""
    log = journal.Journal(ranged, rf, done, target)
    fd = target.open_fd(ranged, os.O_RDWR | os.O_CREAT)
    try:
        if os.fstat(fd).st_size < rf.size:
            os.ftruncate(fd, rf.size)  # sparse: the ranges land at their offsets
        pieces = Pieces(rf.size, plan, done)
        verifier = Verifier(rf)
        hooks.reset(pieces.done_bytes)
        hasher = PrefixHasher(fd, verifier, pieces).start()
        job = _Download(client, source, rf, fd, pieces, log, policy, hooks, cancel, sleep)
        try:
            job.run()
        finally:
            outcome.received += job.received
            hasher.finish()
        if verifier.count < rf.size:  # cannot happen unless a range was lost: never trust it
            raise McardError(f"only {verifier.count} of {rf.size} bytes arrived in order", rf.path)
        problem = verifier.mismatch()
    finally:
        os.close(fd)
        log.close()
    if problem is not None:
        raise CheckFailed(problem, rf.path)
    os.replace(ranged, final)
    log.remove()
    return verifier.sha256.hexdigest()


def _single(client: httpx.Client, url: str, rf: RemoteFile, partial: Path, final: Path, policy: RetryPolicy,
            hooks: _Hooks, cancel: threading.Event | None, sleep: Callable[[float], None], target: Target,
            outcome: Outcome) -> Outcome:
    """The server ignores Range: one connection from byte 0."""
    limit = hooks.limit

    def advance(n: int) -> None:
        hooks.advance(n)
        if limit is not None:
            limit.take(n)

    single = download_verified(client, url, rf, partial, final, policy=policy, advance=advance, reset=hooks.reset,
                               cancel=cancel, sleep=sleep, target=target)
    return Outcome(single.sha256, outcome.resumed_from, outcome.received + single.received,
                   outcome.restarts + single.restarts)
