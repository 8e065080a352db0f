"""Streaming, verified, resumable download of one file.

The bytes are hashed as they arrive (sha256 for LFS files, the git blob id
``sha1(b"blob <size>\\0" + content)`` for the others), written to a partial
file, and moved to their final path only when the hash matches the tree
listing. Nothing is read twice, except the bytes already in a partial file
when a download resumes: those are re-hashed once so the digest covers the
whole file.

Resume: a partial file left by an earlier attempt or run is continued with
``Range: bytes=<n>-``; the answer is appended only if it is ``206`` with a
``Content-Range`` that starts at ``n`` and states the listed size. A ``200``
(the server ignored Range) restarts the file from byte 0.

Retries: connection errors, timeouts, truncated bodies, ``5xx`` and ``429``
are retried with exponential backoff; a ``Retry-After`` header is honoured.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..core.errors import CheckFailed, McardError
from ..core.pathguard import Target
from ..net import stream
from .model import RemoteFile

CHUNK = 1 << 16  # hash and write in 64 KiB batches: few calls, little lost if the process is killed
READ_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return float(min(self.base_delay * 2.0 ** (attempt - 1), self.max_delay) * random.uniform(0.5, 1.0))


class Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's requested wait, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_status(response: httpx.Response, what: str) -> None:
    """Raise Transient for 5xx/429, McardError for other failures; return on 2xx."""
    code = response.status_code
    if 200 <= code < 300:
        return
    if code == 429 or code >= 500:
        raise Transient(f"{what}: HTTP {code}", parse_retry_after(response.headers.get("retry-after")))
    if code in (401, 403, 404):
        reason = response.headers.get("x-error-message") or response.reason_phrase
        raise McardError(f"{what}: HTTP {code} {reason} (private or gated repos need HF_TOKEN)")
    raise McardError(f"{what}: HTTP {code} {response.reason_phrase}")


class Verifier:
    """Hashes bytes as they stream in and compares them with the tree listing."""

    def __init__(self, rf: RemoteFile) -> None:
        self.rf = rf
        self.reset()

    def reset(self) -> None:
        """Forget everything hashed so far (the file restarts from byte 0)."""
        self.sha256 = hashlib.sha256()
        self.blob = None if self.rf.lfs else hashlib.sha1(b"blob %d\0" % self.rf.size)
        self.count = 0

    def update(self, data: bytes | bytearray) -> None:
        self.sha256.update(data)
        if self.blob is not None:
            self.blob.update(data)
        self.count += len(data)

    def mismatch(self) -> str | None:
        """A one-line description of what does not match, or None."""
        rf = self.rf
        if self.count != rf.size:
            return f"size mismatch: expected {rf.size} bytes, got {self.count}"
        if rf.sha256 is not None and self.sha256.hexdigest() != rf.sha256:
            return f"sha256 mismatch: expected {rf.sha256}, got {self.sha256.hexdigest()}"
        if self.blob is not None and self.blob.hexdigest() != rf.blob_id:
            return f"git blob id mismatch: expected {rf.blob_id}, got {self.blob.hexdigest()}"
        return None


@dataclass
class Outcome:
    """What one verified download did."""

    sha256: str
    resumed_from: int  # bytes kept from an earlier run's partial file
    received: int  # bytes that came over the network in this run
    restarts: int  # times the file was restarted from byte 0


class _Hooks:
    """Progress callbacks; ``advance(n)`` for new bytes, ``reset(pos)`` when the position jumps."""

    def __init__(self, advance: Callable[[int], None] | None, reset: Callable[[int], None] | None) -> None:
        self.advance = advance or (lambda n: None)
        self.reset = reset or (lambda pos: None)


def _rehash(partial: Path, verifier: Verifier, cancel: threading.Event | None, target: Target) -> None:
    with target.open(partial, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            if cancel is not None and cancel.is_set():
                raise McardError("interrupted", partial)
            verifier.update(chunk)


def _range_ok(response: httpx.Response, offset: int, size: int) -> bool:
    m = _CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
    if m is None:
        return False
    return int(m.group(1)) == offset and m.group(3) in (str(size), "*") and int(m.group(2)) == size - 1


def _attempt(client: httpx.Client, url: str, headers: dict[str, str], partial: Path, verifier: Verifier,
             hooks: _Hooks, cancel: threading.Event | None, outcome: Outcome, target: Target) -> None:
    """One GET; appends to ``partial`` (resume) or rewrites it. Raises Transient when worth retrying."""
    rf, offset = verifier.rf, verifier.count
    req = dict(headers)
    if offset:
        req["Range"] = f"bytes={offset}-"
    with stream(client, url, cap=rf.size, headers=req, what=rf.path) as resp:  # a 200 may be the whole file
        if resp.status_code == 416 and offset:
            raise _Restart("server refused the resume range")
        check_status(resp, rf.path)
        if resp.status_code == 206 and not (offset and _range_ok(resp, offset, rf.size)):
            raise _Restart(f"unexpected Content-Range {resp.headers.get('content-range')!r}")
        if offset and resp.status_code != 206:  # the server ignored Range: this body is the whole file
            verifier.reset()
            outcome.restarts += 1
            hooks.reset(0)
        _stream_body(resp, partial, "ab" if verifier.count else "wb", verifier, hooks, cancel, outcome, target)
    if verifier.count < rf.size:
        raise Transient(f"{rf.path}: connection closed after {verifier.count} of {rf.size} bytes")


def _stream_body(resp: httpx.Response, partial: Path, mode: str, verifier: Verifier, hooks: _Hooks,
                 cancel: threading.Event | None, outcome: Outcome, target: Target) -> None:
    """Hash and append the body in ~1 MiB batches; on any interruption the batch so far is kept."""
    rf = verifier.rf
    encoded = resp.headers.get("content-encoding", "identity").lower() not in ("", "identity")
    pieces = resp.iter_bytes() if encoded else resp.iter_raw()  # raw: no decoder work for plain bodies
    buffer = bytearray()
    with target.open(partial, mode) as f:

        def flush() -> None:
            if buffer:
                verifier.update(buffer)
                f.write(buffer)
                outcome.received += len(buffer)
                hooks.advance(len(buffer))
                buffer.clear()

        try:
            for piece in pieces:
                if verifier.count + len(buffer) + len(piece) > rf.size:
                    raise CheckFailed(f"server sent more than the {rf.size} bytes listed", rf.path)
                buffer += piece
                if len(buffer) >= CHUNK:
                    flush()
                if cancel is not None and cancel.is_set():
                    raise McardError("interrupted", rf.path)
        except httpx.TransportError as exc:
            flush()
            raise Transient(f"{rf.path}: {type(exc).__name__} after {verifier.count} of {rf.size} bytes") from None
        except McardError:
            flush()
            raise
        flush()


class _Restart(Exception):
    """The partial file cannot be continued: restart the file from byte 0 (not a failed attempt)."""


def download_verified(client: httpx.Client, url: str, rf: RemoteFile, partial: Path, final: Path, *,
                      headers: dict[str, str] | None = None, policy: RetryPolicy | None = None,
                      advance: Callable[[int], None] | None = None, reset: Callable[[int], None] | None = None,
                      cancel: threading.Event | None = None, sleep: Callable[[float], None] = time.sleep,
                      target: Target | None = None) -> Outcome:
    """Download ``url`` into ``final`` through ``partial``, verified against ``rf``.

    On a hash mismatch the partial file is deleted and :class:`CheckFailed`
    names the file, the expected and the actual digest (a mismatch after
    resuming an older partial file is retried once from byte 0 first). On
    transient failures beyond the retry budget the partial file is kept for
    the next run and :class:`McardError` is raised. The partial file is opened
    through ``target`` (:class:`mcard.core.pathguard.Target`, default: its folder),
    never through a symlink.
    """
    target = target or Target(partial.parent)
    policy = policy or RetryPolicy()
    hooks = _Hooks(advance, reset)
    base = dict(headers or {})
    target.mkdirs(partial.parent)
    verifier = Verifier(rf)
    outcome = Outcome(sha256="", resumed_from=0, received=0, restarts=0)
    if os.path.lexists(partial):
        if not partial.is_symlink() and partial.stat().st_size > rf.size:
            partial.unlink()
        else:
            _rehash(partial, verifier, cancel, target)
            outcome.resumed_from = verifier.count
    hooks.reset(verifier.count)
    failures = 0
    retried_clean = False
    while True:
        try:
            if verifier.count < rf.size or rf.size == 0 and not partial.exists():
                _attempt(client, url, base, partial, verifier, hooks, cancel, outcome, target)
        except _Restart:
            if outcome.restarts > 2:
                raise McardError("server keeps answering resume requests wrongly", rf.path) from None
            _truncate(partial, target)
            verifier.reset()
            outcome.restarts += 1
            hooks.reset(0)
            continue
        except (Transient, httpx.TransportError) as exc:
            failures = _backoff(policy, failures, exc, rf, partial, sleep)
            continue
        problem = verifier.mismatch()
        if problem is None:
            os.replace(partial, final)
            outcome.sha256 = verifier.sha256.hexdigest()
            return outcome
        partial.unlink(missing_ok=True)
        if outcome.resumed_from and not retried_clean:  # the old partial may be what was corrupt
            retried_clean = True
            verifier.reset()
            outcome.restarts += 1
            hooks.reset(0)
            continue
        raise CheckFailed(problem, rf.path)


def _truncate(partial: Path, target: Target) -> None:
    with target.open(partial, "wb"):
        pass


def _backoff(policy: RetryPolicy, failures: int, exc: Exception, rf: RemoteFile, partial: Path,
             sleep: Callable[[float], None]) -> int:
    failures += 1
    if failures > policy.max_retries:
        kept = partial.stat().st_size if partial.exists() else 0
        detail = str(exc) if isinstance(exc, Transient) else f"{type(exc).__name__}: {exc}"
        raise McardError(f"download failed after {failures} attempts ({detail}); "
                         f"{kept} bytes kept in {partial.name} to resume", rf.path)
    sleep(policy.delay(failures, getattr(exc, "retry_after", None)))
    return failures
