"""Ranged reads of Hub files into a sparse local mirror.

:class:`RangeReader` fetches byte ranges of a revision's files with
``Range: bytes=a-b`` (checking 206 and Content-Range; when a server ignores
Range and answers 200, as olah does, it reads the body only up to the bytes
needed and closes it). :class:`SparseMirror` writes those ranges at their
offsets into files created at their exact listed size, so readers of the
on-disk formats see a file laid out exactly like the download.
:class:`LazyRemoteFile` is a file object over one remote file that fetches
blocks as a reader walks it (for headers whose size is only known while
parsing: legacy GGML, pickles).
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ..core.errors import McardError, UnusableInput
from ..core.pathguard import Target
from ..net import stream
from .model import RemoteFile, Revision
from .remote import HubClient
from .transfer import Transient, check_status

HEAD_BYTES = 64 * 1024
COALESCE_GAP = 64 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def coalesce(ranges: list[tuple[int, int]], gap: int = COALESCE_GAP) -> list[tuple[int, int]]:
    """Sorted ``[a, b)`` ranges, merging those less than ``gap`` bytes apart (or overlapping)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a - out[-1][1] < gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


MAX_RUN_REQUESTS = 20_000  # range requests of one remote validate
WALK_BYTES = 64 << 20  # what one header walk (GGML vocab and tensor headers, a zip directory) may read
WALK_REQUESTS = 4096  # and in how many requests (a 70B GGML file has ~720 tensor headers)


class RangeReader:
    """Byte ranges of one commit's files over HTTP Range, with retries; counts bytes and requests."""

    def __init__(self, client: HubClient, rev: Revision, max_requests: int = MAX_RUN_REQUESTS) -> None:
        self.client, self.rev = client, rev
        self.max_requests = max_requests
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.requests = 0
        self.ignored_range = False  # the server answered 200 to a Range request at least once

    def count(self, nbytes: int = 0, requests: int = 0) -> None:
        with self._lock:
            self.bytes_read += nbytes
            self.requests += requests
            if self.requests > self.max_requests:
                raise UnusableInput(f"remote validate needs more than {self.max_requests} range requests; "
                                    "refused (fetch the files and validate them locally)")

    def get(self, rf: RemoteFile, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``rf`` (``end`` clipped to its size)."""
        end = min(end, rf.size)
        if start >= end:
            return b""
        url = self.client.file_url(self.rev.repo_id, self.rev.commit, rf.path)
        policy = self.client.policy
        failures = 0
        while True:
            try:
                return self._attempt(url, rf, start, end)
            except (Transient, httpx.TransportError) as exc:
                failures += 1
                if failures > policy.max_retries:
                    detail = self.client.env.scrub(str(exc)) or type(exc).__name__
                    raise McardError(f"reading bytes {start}-{end - 1} failed: {detail}", rf.path) from None
                time.sleep(policy.delay(failures, getattr(exc, "retry_after", None)))

    def _attempt(self, url: str, rf: RemoteFile, start: int, end: int) -> bytes:
        want, received = end - start, 0
        out = bytearray()
        self.count(requests=1)
        with stream(self.client.http, url, cap=rf.size, headers={"Range": f"bytes={start}-{end - 1}"},
                    what=rf.path) as resp:
            check_status(resp, rf.path)
            if resp.status_code == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("content-range", "").strip())
                if (m is None or int(m.group(1)) != start or int(m.group(2)) != end - 1
                        or m.group(3) != str(rf.size)):
                    raise McardError(f"server answered Range {start}-{end - 1} of a {rf.size}-byte file with "
                                     f"Content-Range {resp.headers.get('content-range', '')[:100]!r}", rf.path)
                skip = 0
            else:  # 200: the server ignored Range; read up to the bytes needed, then close
                self.ignored_range = True
                skip = start
            try:
                for piece in resp.iter_raw():
                    received += len(piece)
                    if skip:
                        if len(piece) <= skip:
                            skip -= len(piece)
                            continue
                        piece, skip = piece[skip:], 0
                    out += piece
                    if len(out) >= want:
                        break
            except httpx.TransportError as exc:
                raise Transient(f"{rf.path}: {type(exc).__name__} after {len(out)} of {want} bytes") from None
            finally:
                self.count(nbytes=received)
        if len(out) < want:
            raise Transient(f"{rf.path}: connection closed after {len(out)} of {want} bytes of a range")
        return bytes(out[:want])


class SparseMirror:
    """The sparse local copy: every listed file at its exact size, holding only the bytes fetched."""

    def __init__(self, root: Path, reader: RangeReader) -> None:
        self.root, self.reader = root, reader
        self.target = Target(root)
        self._lock = threading.Lock()
        self.have: dict[str, list[tuple[int, int]]] = {}  # file -> byte ranges written

    def path(self, rf: RemoteFile) -> Path:
        return self.target.child(rf.path)

    def create(self, rf: RemoteFile) -> None:
        path = self.path(rf)
        self.target.mkdirs(path.parent)
        with self.target.open(path, "wb") as fh:
            fh.truncate(rf.size)

    def write(self, rf: RemoteFile, offset: int, data: bytes) -> None:
        if not data:
            return
        fd = self.target.open_fd(self.path(rf), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        with self._lock:
            self.have[rf.path] = coalesce([*self.have.get(rf.path, []), (offset, offset + len(data))], gap=1)

    def missing(self, rf: RemoteFile, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not written yet."""
        out, cursor = [], start
        with self._lock:
            have = list(self.have.get(rf.path, []))
        for a, b in have:
            if b <= cursor or a >= end:
                continue
            if a > cursor:
                out.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < end:
            out.append((cursor, end))
        return out

    def fetch(self, rf: RemoteFile, start: int, end: int) -> bytes:
        data = self.reader.get(rf, start, end)
        self.write(rf, start, data)
        return data


class LazyRemoteFile(io.RawIOBase):
    """A read-only file over a remote file: blocks are fetched on first read and kept (then mirrored).

    A walk over it may fetch at most ``max_bytes`` in ``max_requests`` requests
    (a header that claims 2^31 vocabulary entries or a 6 GB zip directory is
    refused, not followed), and one read may not ask for more than that.
    """

    def __init__(self, mirror: SparseMirror, rf: RemoteFile, known: bytes, block: int = HEAD_BYTES,
                 limit: int | None = None, max_bytes: int = WALK_BYTES, max_requests: int = WALK_REQUESTS) -> None:
        super().__init__()
        self.mirror, self.rf, self.block = mirror, rf, block
        self.size = rf.size if limit is None else min(rf.size, limit)
        self.max_bytes, self.max_requests = max_bytes, max_requests
        self.fetched = self.fetches = 0
        self.pos = 0
        self.blocks: dict[int, bytes] = {}
        for i in range(len(known) // block + 1):
            piece = known[i * block:(i + 1) * block]
            if len(piece) == block or (piece and i * block + len(piece) == rf.size):
                self.blocks[i] = piece

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self.pos = base + offset
        return self.pos

    def _refuse(self, what: str) -> UnusableInput:
        return UnusableInput(f"reading its headers remotely would take {what}; refused (fetch the file and "
                             "validate it locally)", self.rf.path)

    def read(self, size: int = -1) -> bytes:
        want = self.size - self.pos if size is None or size < 0 else min(size, max(0, self.size - self.pos))
        if want > self.max_bytes:
            raise self._refuse(f"one read of {want} bytes (limit {self.max_bytes})")
        return super().read(want)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.size, self.pos + len(view))
        if end <= self.pos:
            return 0
        first, last = self.pos // self.block, (end - 1) // self.block
        i = first
        while i <= last:  # fetch each run of missing blocks in one request
            if i in self.blocks:
                i += 1
                continue
            j = i
            while j + 1 <= last and j + 1 not in self.blocks:
                j += 1
            self.fetches += 1
            self.fetched += (j + 1 - i) * self.block
            if self.fetched > self.max_bytes or self.fetches > self.max_requests:
                raise self._refuse(f"more than {self.max_bytes} bytes or {self.max_requests} requests")
            data = self.mirror.reader.get(self.rf, i * self.block, (j + 1) * self.block)
            for k in range(i, j + 1):
                self.blocks[k] = data[(k - i) * self.block:(k - i + 1) * self.block]
            i = j + 1
        joined = b"".join(self.blocks[k] for k in range(first, last + 1))
        skip = self.pos - first * self.block
        n = end - self.pos
        view[:n] = joined[skip:skip + n]
        self.pos = end
        return n

    def to_mirror(self) -> None:
        for i, data in sorted(self.blocks.items()):
            self.mirror.write(self.rf, i * self.block, data)
