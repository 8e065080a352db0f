"""How a parallel download splits one file, and the hasher that follows it.

:func:`plan_ranges` picks the number of connections and the piece size from
the file size. :class:`Pieces` hands pieces to connections lowest offset
first, so the bytes on disk grow as one contiguous prefix plus at most one
piece per connection beyond it; when no piece is left, an idle connection
takes the second half of the range with the most bytes still to come (a slow
or stalled connection does not hold up the end of the file).
:class:`PrefixHasher` hashes that contiguous prefix as it grows, in order,
reading back what the connections wrote a moment ago (from the page cache),
so the digest is ready when the last byte lands and the file is never read a
second time. Its memory is one read buffer (:data:`HASH_READ` bytes); the
data written but not hashed yet is bounded by connections x piece size.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from dataclasses import dataclass

from .journal import coalesce
from .transfer import Verifier

MIB = 1 << 20
ALIGN = 64 * 1024
AUTO_MIN_FILE = 32 * MIB  # smaller files use one connection unless asked
AUTO_BYTES_PER_CONNECTION = 16 * MIB
AUTO_MAX_CONNECTIONS = 8
MAX_CONNECTIONS = 32
MIN_PIECE = 256 * 1024
TARGET_PIECE = 8 * MIB  # a piece takes several round trips' worth of time at CDN speeds
MAX_PIECE = 64 * MIB
PIECES_PER_CONNECTION = 8
BATCH = 256 * 1024  # bytes a connection writes (and journals) at once
MIN_STEAL = 2 * MIB  # a range is split between two connections only when both halves are at least this
HASH_READ = 1 * MIB


@dataclass(frozen=True)
class RangePlan:
    """``connections`` per file, ``piece`` bytes per range request, ``batch`` bytes per write; ``min_steal``:
    the smallest half of a range another connection may take over."""

    connections: int
    piece: int
    batch: int = BATCH
    min_steal: int = MIN_STEAL


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def plan_ranges(size: int, connections: int | None = None, piece: int | None = None) -> RangePlan:
    """Connections and piece size for a file of ``size`` bytes (``connections``/``piece`` given: used as is).

    Automatic: one connection below 32 MiB, then one per 16 MiB up to 8;
    pieces of about an eighth of a connection's share, at least 8 MiB (or the
    share, if smaller) and at most 64 MiB. A file never gets more connections
    than it has 256 KiB pieces.
    """
    n = connections if connections is not None else (
        1 if size < AUTO_MIN_FILE else min(AUTO_MAX_CONNECTIONS, size // AUTO_BYTES_PER_CONNECTION))
    n = max(1, min(n, MAX_CONNECTIONS, math.ceil(size / MIN_PIECE) if size else 1))
    if piece is None:
        share = math.ceil(size / n) if size else MIN_PIECE
        piece = max(math.ceil(size / (n * PIECES_PER_CONNECTION)), min(TARGET_PIECE, share))
        piece = min(_round_up(max(piece, MIN_PIECE), ALIGN), MAX_PIECE)
    piece = max(1, piece)
    batch = min(BATCH, piece)
    return RangePlan(n, piece, batch, min(MIN_STEAL, max(2 * batch, piece // 2)))


@dataclass(eq=False)
class Slot:
    """A range one connection is fetching: bytes ``[cursor, end)`` are still to come (``end`` may shrink)."""

    start: int
    cursor: int
    end: int
    failures: int = 0


class Pieces:
    """The file's ranges: done (written and journaled), in flight (one :class:`Slot` per connection), to do.

    Thread-safe; :attr:`changed` is notified whenever the contiguous prefix grows or the work ends.
    """

    def __init__(self, size: int, plan: RangePlan, done: list[tuple[int, int]]) -> None:
        self.size, self.plan = size, plan
        self.done = coalesce(done)
        self.todo: deque[tuple[int, int]] = deque()
        cursor = 0
        for a, b in [*self.done, (size, size)]:
            for start in range(cursor, a, plan.piece):  # the gaps, cut at piece boundaries
                self.todo.append((start, min(start + plan.piece, a)))
            cursor = max(cursor, b)
        self.todo_bytes = sum(b - a for a, b in self.todo)
        self.active: list[Slot] = []
        self.steals = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    @property
    def done_bytes(self) -> int:
        with self.lock:
            return sum(b - a for a, b in self.done)

    def prefix(self) -> int:
        """End of the contiguous run of done bytes from byte 0 (call with or without the lock held)."""
        done = self.done
        return done[0][1] if done and done[0][0] == 0 else 0

    def complete(self) -> bool:
        with self.lock:
            return self.prefix() >= self.size

    def claim(self) -> Slot | None:
        """The next range for an idle connection, or None when nothing is left to share."""
        with self.lock:
            if self.todo:
                a, b = self.todo.popleft()
                # near the end pieces shrink, so the connections finish together instead of waiting for one
                share = _round_up(max(self.todo_bytes // (2 * self.plan.connections), self.plan.min_steal), ALIGN)
                if b - a > share:
                    self.todo.appendleft((a + share, b))
                    b = a + share
                self.todo_bytes -= b - a
                slot = Slot(a, a, b)
            else:
                victim = max(self.active, key=lambda s: s.end - s.cursor, default=None)
                left = victim.end - victim.cursor if victim is not None else 0
                if victim is None or left < 2 * self.plan.min_steal:
                    return None
                mid = victim.cursor + _round_up(left // 2, ALIGN)
                if mid >= victim.end:
                    return None
                slot = Slot(mid, mid, victim.end)
                victim.end = mid
                self.steals += 1
            self.active.append(slot)
            return slot

    def room(self, slot: Slot, pending: int) -> int:
        """Bytes ``slot`` may still take beyond ``pending`` received but unrecorded bytes."""
        with self.lock:
            return max(0, slot.end - slot.cursor - pending)

    def record(self, slot: Slot, nbytes: int) -> None:
        """``nbytes`` at ``slot.cursor`` are written and journaled."""
        with self.lock:
            a, b = slot.cursor, slot.cursor + nbytes
            slot.cursor = b
            before = self.prefix()
            self.done = _insert(self.done, a, b)
            if self.prefix() != before:
                self.changed.notify_all()

    def release(self, slot: Slot) -> None:
        """``slot``'s connection stops: what it did not fetch goes back to the front of the queue."""
        with self.lock:
            if slot in self.active:
                self.active.remove(slot)
            if slot.cursor < slot.end:
                self.todo.appendleft((slot.cursor, slot.end))
                self.todo_bytes += slot.end - slot.cursor
            self.changed.notify_all()


def _insert(done: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """``done`` (sorted, disjoint) with ``[a, b)`` added; touching ranges merge. Appends at a range's end are O(1)."""
    for i in range(len(done) - 1, -1, -1):  # connections extend their own range: search from the end is short
        x, y = done[i]
        if x <= a <= y:
            end = max(y, b)
            j = i + 1
            while j < len(done) and done[j][0] <= end:
                end = max(end, done[j][1])
                j += 1
            done[i:j] = [(x, end)]
            return done
        if y < a:
            break
    return coalesce([*done, (a, b)])


class PrefixHasher:
    """A thread that feeds the contiguous prefix of ``fd`` to ``verifier`` as :class:`Pieces` reports it."""

    def __init__(self, fd: int, verifier: Verifier, pieces: Pieces) -> None:
        self.fd, self.verifier, self.pieces = fd, verifier, pieces
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="mcard-hash", daemon=True)

    def start(self) -> PrefixHasher:
        self._thread.start()
        return self

    def _run(self) -> None:
        pieces, verifier = self.pieces, self.verifier
        try:
            while True:
                with pieces.changed:
                    while pieces.prefix() <= verifier.count and not self._stop:
                        pieces.changed.wait(0.5)
                    upto = pieces.prefix()
                    if upto <= verifier.count:  # stopped, nothing left to hash
                        return
                while verifier.count < upto:
                    data = os.pread(self.fd, min(HASH_READ, upto - verifier.count), verifier.count)
                    if not data:
                        raise OSError(f"the partial file ends at {verifier.count} bytes, before its recorded data")
                    verifier.update(data)
        except BaseException as exc:  # noqa: BLE001 - handed to the download's thread
            self.error = exc

    def finish(self) -> None:
        """Hash what the prefix holds now, then stop; re-raise a failure of the thread."""
        with self.pieces.changed:
            self._stop = True
            self.pieces.changed.notify_all()
        self._thread.join()
        if self.error is not None:
            raise self.error
