"""The pieces of a parallel download without a server: the plan, the scheduler, the journal, the rate cap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcard.core.pathguard import Target
from mcard.hub import journal
from mcard.hub.model import RemoteFile
from mcard.hub.pieces import MAX_PIECE, Pieces, RangePlan, plan_ranges
from mcard.hub.ratelimit import RateLimit

MIB = 1 << 20


@pytest.mark.parametrize("size, connections", [
    (10 * MIB, 1), (32 * MIB - 1, 1), (32 * MIB, 2), (100 * MIB, 6), (2_000_000_000, 8), (40 * 10**9, 8),
])
def test_connections_grow_with_the_size(size, connections):
    plan = plan_ranges(size)
    assert plan.connections == connections
    assert plan.piece <= MAX_PIECE and plan.piece % (64 * 1024) == 0
    if connections > 1:  # each connection gets several pieces, each big enough to be worth a round trip
        assert size / plan.piece >= connections and plan.piece >= min(8 * MIB, size // connections)


def test_a_tiny_file_never_gets_more_connections_than_pieces():
    assert plan_ranges(300_000, connections=16).connections == 2
    assert plan_ranges(0, connections=8).connections == 1


def test_pieces_go_lowest_first_and_shrink_towards_the_end():
    kib = 1024
    pieces = Pieces(2 * MIB, RangePlan(2, 256 * kib, 16 * kib, 64 * kib), [])
    slots = [pieces.claim() for _ in range(6)]
    assert [s.start // kib for s in slots] == [0, 256, 512, 768, 1024, 1280]
    # whole pieces while much is left; then a quarter of what is left (2 connections), rounded to 64 KiB
    assert [(s.end - s.start) // kib for s in slots] == [256, 256, 256, 256, 256, 192]


def test_an_idle_connection_takes_the_second_half_of_the_slowest_range():
    pieces = Pieces(4 * MIB, RangePlan(1, 4 * MIB, 64 * 1024, 256 * 1024), [])
    slots = [pieces.claim() for _ in range(5)]
    assert [(s.start, s.end) for s in slots][:2] == [(0, 2 * MIB), (2 * MIB, 3 * MIB)] and pieces.todo_bytes == 0
    thief = pieces.claim()  # nothing left to hand out: the biggest range in flight is split
    assert (thief.start, thief.end, slots[0].end) == (MIB, 2 * MIB, MIB)
    for slot in slots:
        pieces.record(slot, slot.end - slot.cursor)
    pieces.record(thief, 600 * 1024)  # 424 KiB left: two halves would be below 256 KiB
    assert pieces.claim() is None and pieces.steals == 1
    pieces.record(thief, thief.end - thief.cursor)
    assert pieces.complete()


def test_the_prefix_grows_only_when_the_ranges_touch():
    pieces = Pieces(100, RangePlan(3, 10), [(20, 30)])
    slots = [pieces.claim() for _ in range(3)]
    assert [s.start for s in slots] == [0, 10, 30]
    pieces.record(slots[1], 10)
    assert pieces.prefix() == 0
    pieces.record(slots[0], 10)
    assert pieces.prefix() == 30 and pieces.done == [(0, 30)]


def _rf(size: int = 1000) -> RemoteFile:
    return RemoteFile("w.safetensors", size, "1" * 40, "a" * 64)


def test_a_journal_is_read_back_compacted_and_a_torn_last_line_is_ignored(tmp_path: Path):
    partial = tmp_path / "x.ranged"
    partial.write_bytes(b"\0" * 1000)
    log = journal.Journal(partial, _rf(), [(0, 100)], Target(tmp_path))
    for a, b in [(100, 200), (500, 600), (200, 250)]:
        log.add(a, b)
    log.close()
    with open(journal.journal_path(partial), "ab") as fh:
        fh.write(b"600 7")  # a process killed mid-write
    assert journal.load(partial, _rf(), Target(tmp_path)) == [(0, 250), (500, 600)]
    assert journal.ranged_path(tmp_path / "x.incomplete") == partial
    assert journal.done_bytes(tmp_path / "x.incomplete", _rf()) == 350


@pytest.mark.parametrize("text", [
    '{"mcard_ranges": 1, "size": 999, "etag": "' + "a" * 64 + '"}\n0 10\n',  # another size
    '{"mcard_ranges": 2, "size": 1000, "etag": "' + "a" * 64 + '"}\n0 10\n',  # another version
    '{"mcard_ranges": 1, "size": 1000, "etag": "' + "a" * 64 + '"}\n10 5\n',  # an empty range
    '{"mcard_ranges": 1, "size": 1000, "etag": "' + "a" * 64 + '"}\n0 900\n',  # past the partial file's end
    '{"mcard_ranges": 1, "size": 1000, "etag": "' + "a" * 64 + '"}\n-1 10\n',
    "not json\n0 10\n",
])
def test_a_journal_that_fails_a_check_is_removed_with_its_partial_file(tmp_path: Path, text: str):
    partial = tmp_path / "x.ranged"
    partial.write_bytes(b"\0" * 800)
    journal.journal_path(partial).write_text(text)
    assert journal.load(partial, _rf(), Target(tmp_path)) == []
    assert not partial.exists() and not journal.journal_path(partial).exists()


def test_a_symlinked_journal_is_not_followed(tmp_path: Path):
    partial = tmp_path / "x.ranged"
    partial.write_bytes(b"\0" * 1000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text('{"mcard_ranges": 1, "size": 1000, "etag": "' + "a" * 64 + '"}\n0 1000\n')
    os.symlink(elsewhere, journal.journal_path(partial))
    assert journal.load(partial, _rf(), Target(tmp_path)) == []
    assert elsewhere.exists() and not partial.exists()


def test_the_rate_limit_holds_the_average_over_all_callers():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = RateLimit(1_000_000, burst=100_000, clock=lambda: now[0], sleep=sleep)
    for _ in range(50):  # 5 MB taken at once by many callers
        limit.take(100_000)
    assert now[0] == pytest.approx(4.9)  # 5 MB less the 100 kB burst, at 1 MB/s
    now[0] += 10.0  # idle: the bucket refills only up to the burst
    assert limit.take(100_000) == 0.0 and limit.take(100_000) == pytest.approx(0.1)
