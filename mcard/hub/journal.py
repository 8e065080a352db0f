"""The range journal: which byte ranges of a partial download are on disk, so a later run resumes range by range.

A parallel download writes its bytes at their offsets into a file created at
its full size, so the file's size no longer says how much arrived. That file
is ``<etag>.ranged`` (in the cache's ``blobs/``, or beside the other
bookkeeping of ``--local-dir``), not the one-stream ``<etag>.incomplete``:
huggingface_hub resumes an ``.incomplete`` file as a prefix of the download,
and would take a full-size file with holes for a finished one. Beside it,
``<etag>.ranged.journal`` records what arrived::

    {"mcard_ranges": 1, "size": 2000000000, "etag": "<sha256 or git blob id>"}
    0 262144
    31457280 31719424
    ...

The first line names the file the journal belongs to; every further line is
one range ``start end`` (end exclusive) appended *after* its bytes were
written (``O_APPEND``, one short write per batch of a few hundred KiB), so a
process killed at any moment (``kill -9``) leaves a journal that never claims
a byte that was not written; at most the last batch of each connection is
fetched again. A torn last line is ignored.

Before a run trusts a journal, :func:`load` checks it: the header names this
file (size and etag), every range lies inside the file and inside the data
file as it is on disk, and neither is a symlink. A journal that fails a check
is not used: the data file and the journal are removed and the file starts
over. A journal that passes is compacted (its ranges merged) and rewritten
atomically. Whatever the journal says, the bytes are still verified against
the listing's hash before the file is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import UnusableInput
from ..core.pathguard import Target
from ..core.untrusted import read_capped
from .model import RemoteFile

VERSION = 1
MAX_JOURNAL_BYTES = 64 << 20  # ~2.8 million ranges: far more than any download appends


def ranged_path(partial: Path) -> Path:
    """The data file of a parallel download, beside the one-stream ``partial`` (``<etag>.incomplete``)."""
    return partial.with_name(partial.name.removesuffix(".incomplete") + ".ranged")


def journal_path(ranged: Path) -> Path:
    return ranged.with_name(ranged.name + ".journal")


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ``[a, b)`` ranges with overlapping or touching ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _header(rf: RemoteFile) -> bytes:
    return json.dumps({"mcard_ranges": VERSION, "size": rf.size, "etag": rf.etag}).encode() + b"\n"


def _parse(data: bytes, rf: RemoteFile) -> list[tuple[int, int]] | None:
    lines = data.split(b"\n")
    if len(lines) < 2:  # not even a complete header line
        return None
    try:
        head = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("mcard_ranges") != VERSION or head.get("size") != rf.size \
            or head.get("etag") != rf.etag:
        return None
    ranges = []
    for line in lines[1:-1]:  # the last element follows the last newline: empty, or a torn line
        parts = line.split(b" ")
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 20 for p in parts):
            return None
        a, b = int(parts[0]), int(parts[1])
        if not 0 <= a < b <= rf.size:
            return None
        ranges.append((a, b))
    return coalesce(ranges)


def load(ranged: Path, rf: RemoteFile, target: Target) -> list[tuple[int, int]] | None:
    """The ranges a checked journal of the data file ``ranged`` vouches for; None when there is no journal.

    A journal that fails a check is removed with its data file, and ``[]`` is returned (start over).
    """
    partial, path = ranged, journal_path(ranged)
    if not os.path.lexists(path):
        return None
    ranges: list[tuple[int, int]] | None
    try:
        ranges = None if path.is_symlink() else _parse(read_capped(target.check(path), MAX_JOURNAL_BYTES), rf)
        on_disk = partial.stat().st_size if partial.is_file() and not partial.is_symlink() else -1
    except (OSError, UnusableInput):
        ranges, on_disk = None, -1
    if ranges is None or on_disk < 0 or on_disk > rf.size or (ranges and ranges[-1][1] > on_disk):
        discard(partial)
        return []
    return ranges


def discard(ranged: Path) -> None:
    """Remove a parallel download's data file and its journal."""
    for path in (journal_path(ranged), ranged):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def done_bytes(partial: Path, rf: RemoteFile) -> int:
    """Bytes a partial download holds, for a plan: a ranged download's journal, else the one-stream ``partial``'s size."""
    path = journal_path(ranged_path(partial))
    if os.path.lexists(path):
        try:
            ranges = _parse(read_capped(path, MAX_JOURNAL_BYTES), rf)
        except UnusableInput:
            ranges = None
        return sum(b - a for a, b in ranges or [])
    try:
        return min(partial.stat().st_size, rf.size) if partial.is_file() else 0
    except OSError:
        return 0


class Journal:
    """The open journal of one run: :meth:`add` appends a range once its bytes are written."""

    def __init__(self, ranged: Path, rf: RemoteFile, ranges: list[tuple[int, int]], target: Target) -> None:
        self.path = journal_path(ranged)
        body = _header(rf) + b"".join(b"%d %d\n" % r for r in coalesce(ranges))
        target.write_atomic(self.path, body)  # compacted; written before the data file grows
        self.fd = target.open_fd(self.path, os.O_WRONLY | os.O_APPEND)

    def add(self, start: int, end: int) -> None:
        os.write(self.fd, b"%d %d\n" % (start, end))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
