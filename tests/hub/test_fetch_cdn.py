"""``mcard fetch`` on the Hub's real download path: /resolve/ answers 302 to a CDN (nginx), big files come in ranges
over several connections (issue #16).

The test Hub is mcard.testing.cdn.CdnHub: olah for the API, a front that redirects LFS files the way huggingface.co
does, and nginx serving the LFS objects with Range, signed URLs and a per-connection rate (set per URL here). What
is asserted is what the servers saw (requests, ranges, bytes, connections, headers), never a speed, except one ratio
measured within one run with a wide margin. On CI (CI=true) a missing nginx fails these tests instead of skipping.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, Faults

from helpers import run_cli_clean
from mcard.core.pathguard import Target
from mcard.hub import RetryPolicy, fetch, journal
from mcard.hub.model import RemoteFile
from mcard.testing.cdn import CdnHub, FrontFaults
from mcard.testing.hubserver import build_git_repo, safetensors_bytes
from mcard.testing.nginx import CdnRequest, nginx_binary

REPO = "org/cdn"
BIG = "model.safetensors"
SIZE = 2_000_000
PIECE = 256 * 1024
TOKEN = "tok-Cdn7Rq2xLm9Pz41K"
FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
SLOW_CDN = 500_000  # bytes per second per connection: nginx takes ~1 s for a 512 KiB piece ...
SLOW_PIECE = 512 * 1024  # ... so all four connections are busy at once


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if nginx_binary() is None:
        message = "nginx is not installed (apt-get install nginx-light); .ci/run installs it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("cdn")
    built = build_git_repo(root / "mirrors", REPO, {"main": {
        BIG: safetensors_bytes(SIZE - 120, 16),
        "config.json": b'{"model_type": "llama"}',
        "data.txt": os.urandom(400_000).hex().encode(),  # an 800 kB plain git file: verified by its git blob id
    }})
    with CdnHub(root / "mirrors") as hub:
        yield {"hub": hub, "built": built}


@pytest.fixture()
def hub(cdn: dict[str, Any]) -> Iterator[CdnHub]:
    h: CdnHub = cdn["hub"]
    h.cdn.clear_log()
    h.front.log.clear()
    cdn["since"] = time.time()  # nginx logs a request when it ends: an earlier test's may come late
    yield h
    h.front.faults, h.front.cdn_base, h.front.cdn_rate = FrontFaults(), None, None


def _info(cdn: dict[str, Any], path: str = BIG) -> Any:
    return cdn["built"].files["main"][path]


def _object_gets(hub: CdnHub, cdn: dict[str, Any], count_bytes: int | None = None) -> list[CdnRequest]:
    """nginx's requests for the big file's object since ``cdn["since"]`` (waiting for ``count_bytes`` of them)."""
    oid, since = _info(cdn).sha256, cdn["since"]

    def mine(reqs: list[CdnRequest]) -> list[CdnRequest]:
        return [r for r in reqs if r.path.endswith(oid) and r.method == "GET" and r.start >= since]

    until = None if count_bytes is None else (lambda reqs: sum(r.sent for r in mine(reqs)) >= count_bytes)
    return mine(hub.cdn.requests(until=until))


def _ranges(reqs: list[Any]) -> list[tuple[int, int]]:
    out = []
    for r in reqs:
        a, _, b = r.range.removeprefix("bytes=").partition("-")
        out.append((int(a), int(a) + r.sent))
    return sorted(out)


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _blobs(cache: Path) -> Path:
    return cache / "models--org--cdn" / "blobs"


def _fetch(hub: CdnHub, cache: Path, **kw: Any) -> Any:
    kw.setdefault("policy", FAST)
    kw.setdefault("piece_size", PIECE)
    return fetch(REPO, [kw.pop("file", BIG)], endpoint=hub.endpoint, cache_dir=cache, **kw)


# -- the path itself ------------------------------------------------------------------------------------------
def test_a_big_file_comes_from_the_cdn_in_ranges_over_n_connections(cdn, hub, tmp_path):
    hub.front.cdn_rate = SLOW_CDN
    result = _fetch(hub, tmp_path, connections=4, token=TOKEN, piece_size=SLOW_PIECE)
    assert result.ok and result.files[0].sha256 == _info(cdn).sha256 == _sha(result.files[0].local_path)
    gets = _object_gets(hub, cdn, SIZE)
    assert {r.status for r in gets} == {206} and all(r.range.startswith("bytes=") for r in gets)
    ranges = _ranges(gets)
    assert ranges[0][0] == 0 and ranges[-1][1] == SIZE
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), "ranges are disjoint and leave no gap"
    assert sum(r.sent for r in gets) == SIZE, "every byte was sent once"
    assert len(gets) == -(-SIZE // SLOW_PIECE) == len({r.connection for r in gets}) == 4, "four connections"
    assert {r.authorization for r in hub.cdn.requests()} == {""}, "the token never reached the CDN"
    resolves = [e for e in hub.front.log if f"/resolve/{result.commit}/{BIG}" in e.path]
    assert [(e.status, e.authorization) for e in resolves] == [(302, f"Bearer {TOKEN}")], \
        "one /resolve/ (with the token, on the endpoint); the ranges go straight to the CDN URL"


def test_huggingface_hub_follows_the_same_redirect_and_reuses_mcards_blob(cdn, hub, tmp_path):
    from huggingface_hub import hf_hub_download

    assert _fetch(hub, tmp_path / "cache", connections=3).ok
    gets = _object_gets(hub, cdn, SIZE)
    assert len(gets) == -(-SIZE // PIECE) > len({r.connection for r in gets}), "connections were reused"
    assert len({r.connection for r in gets}) <= 3
    hub.cdn.clear_log()
    path = hf_hub_download(REPO, BIG, endpoint=hub.endpoint, cache_dir=tmp_path / "cache", token=TOKEN)
    assert _sha(path) == _info(cdn).sha256 and _object_gets(hub, cdn) == [], "the cached blob was reused"
    head = [e for e in hub.front.log if e.method == "HEAD"]
    assert head and head[-1].status == 302
    path = hf_hub_download(REPO, BIG, endpoint=hub.endpoint, cache_dir=tmp_path / "other", token=TOKEN)
    assert _sha(path) == _info(cdn).sha256
    gets = _object_gets(hub, cdn, SIZE)
    assert sum(r.sent for r in gets) == SIZE and {r.authorization for r in gets} == {""}


def test_a_plain_git_file_in_ranges_is_verified_by_its_blob_id(cdn, hub, tmp_path):
    assert cdn["hub"].olah is not None
    with FaultProxy(cdn["hub"].olah.endpoint, Faults(match="data.txt", honour_range=True)) as proxy:
        result = fetch(REPO, ["data.txt"], endpoint=proxy.endpoint, cache_dir=tmp_path, piece_size=PIECE,
                       connections=4, policy=FAST)
        gets = [r for r in proxy.requests("data.txt") if r.method == "GET"]
    info = _info(cdn, "data.txt")
    assert result.ok and (tmp_path / "models--org--cdn" / "blobs" / info.blob_id).is_file()
    assert len(gets) == -(-info.size // PIECE) and {r.status for r in gets} == {206}
    assert sum(r.sent for r in gets) == info.size


# -- resume at range granularity --------------------------------------------------------------------------------
class _StopAfter:
    """A reporter that sets ``cancel`` once ``limit`` bytes have arrived (an interrupted run)."""

    def __init__(self, limit: int, cancel: threading.Event) -> None:
        self.limit, self.cancel, self.seen = limit, cancel, 0
        self.lock = threading.Lock()

    def begin(self, total_bytes: int, files: int) -> None: ...
    def file_started(self, path: str, size: int) -> None: ...
    def file_position(self, path: str, position: int) -> None: ...
    def file_done(self, path: str, status: str) -> None: ...
    def end(self) -> None: ...

    def advance(self, path: str, nbytes: int) -> None:
        with self.lock:
            self.seen += nbytes
            if self.seen >= self.limit:
                self.cancel.set()


def test_an_interrupted_download_resumes_range_by_range_and_resends_nothing(cdn, hub, tmp_path):
    hub.front.cdn_rate = SLOW_CDN
    info = _info(cdn)
    cancel = threading.Event()
    first = _fetch(hub, tmp_path, connections=4, cancel=cancel, reporter=_StopAfter(SIZE // 2, cancel),
                   piece_size=SLOW_PIECE)
    assert not first.ok and "interrupted" in str(first.files[0].error)
    partial = _blobs(tmp_path) / f"{info.sha256}.ranged"
    assert partial.is_file() and not (_blobs(tmp_path) / info.sha256).exists()
    assert not (_blobs(tmp_path) / f"{info.sha256}.incomplete").exists(), "huggingface_hub would resume that name"
    rf = RemoteFile(BIG, SIZE, info.blob_id, info.sha256)
    kept = journal.load(partial, rf, Target(tmp_path))
    assert kept and len(kept) > 1, "the journal holds separate ranges (the file has holes)"
    have = sum(b - a for a, b in kept)
    assert SIZE // 2 <= have < SIZE
    data = partial.read_bytes()
    whole = Path(cdn["built"].path, ".git", "lfs", "objects", info.sha256[:2], info.sha256[2:4], info.sha256).read_bytes()
    assert all(data[a:b] == whole[a:b] for a, b in kept), "the journal only vouches for bytes that were written"
    plan = fetch(REPO, [BIG], endpoint=hub.endpoint, cache_dir=tmp_path, dry_run=True)
    assert plan.files[0].resumed_from == have
    cdn["since"] = time.time()
    second = _fetch(hub, tmp_path, connections=4, piece_size=SLOW_PIECE)
    assert second.ok and second.files[0].status == "resumed" and second.files[0].resumed_from == have
    gets = _object_gets(hub, cdn, SIZE - have)
    assert sum(r.sent for r in gets) == SIZE - have, "not one byte that had arrived was sent again"
    assert not any(a < y and x < b for a, b in _ranges(gets) for x, y in kept)
    assert _sha(second.files[0].local_path) == info.sha256
    assert not partial.exists() and not journal.journal_path(partial).exists()


def test_a_one_stream_partial_file_is_taken_over_and_huggingface_hub_never_takes_a_ranged_one(cdn, hub, tmp_path):
    info = _info(cdn)
    whole = Path(cdn["built"].path, ".git", "lfs", "objects", info.sha256[:2], info.sha256[2:4], info.sha256).read_bytes()
    blobs = _blobs(tmp_path / "a")
    blobs.mkdir(parents=True)
    (blobs / f"{info.sha256}.incomplete").write_bytes(whole[:700_000])  # as a one-stream run leaves it
    result = _fetch(hub, tmp_path / "a", connections=4)
    assert result.ok and (result.files[0].status, result.files[0].resumed_from) == ("resumed", 700_000)
    assert sum(r.sent for r in _object_gets(hub, cdn, SIZE - 700_000)) == SIZE - 700_000
    assert sorted(p.name for p in blobs.iterdir()) == [info.sha256]
    # a full-size file with holes, where huggingface_hub would look for its own partial file, would be taken
    # for a finished download: mcard's is named .ranged, and huggingface_hub fetches the file itself
    from huggingface_hub import hf_hub_download

    blobs = _blobs(tmp_path / "b")
    blobs.mkdir(parents=True)
    (blobs / f"{info.sha256}.ranged").write_bytes(b"\0" * SIZE)
    (blobs / f"{info.sha256}.ranged.journal").write_text(
        f'{{"mcard_ranges": 1, "size": {SIZE}, "etag": "{info.sha256}"}}\n0 1000\n')
    path = hf_hub_download(REPO, BIG, endpoint=hub.endpoint, cache_dir=tmp_path / "b")
    assert _sha(path) == info.sha256


def test_local_dir_downloads_in_ranges_and_leaves_only_hf_bookkeeping(cdn, hub, tmp_path):
    result = fetch(REPO, endpoint=hub.endpoint, local_dir=tmp_path, connections=4, piece_size=PIECE, policy=FAST)
    assert result.ok and _sha(tmp_path / BIG) == _info(cdn).sha256
    meta = tmp_path / ".cache" / "huggingface" / "download"
    assert sorted(p.name for p in meta.iterdir() if not p.name.endswith((".metadata", ".lock"))) == []
    assert len(_object_gets(hub, cdn, SIZE)) == -(-SIZE // PIECE)


@pytest.mark.parametrize("tamper", ["other-file", "past-the-end", "garbage", "zeros-claimed-done"])
def test_a_journal_that_does_not_check_out_is_not_trusted(cdn, hub, tmp_path, tamper):
    info = _info(cdn)
    partial = _blobs(tmp_path) / f"{info.sha256}.ranged"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * SIZE)
    header = f'{{"mcard_ranges": 1, "size": {SIZE}, "etag": "{info.sha256}"}}\n'
    text = {"other-file": header.replace(info.sha256, "0" * 64) + "0 1000\n",
            "past-the-end": header + f"0 {SIZE + 1}\n",
            "garbage": header + "zero one\n",
            "zeros-claimed-done": header + f"0 {SIZE // 2}\n"}[tamper]
    journal.journal_path(partial).write_text(text)
    result = _fetch(hub, tmp_path, connections=4)
    assert result.ok and result.files[0].status == "downloaded" and _sha(result.files[0].local_path) == info.sha256
    if tamper == "zeros-claimed-done":  # it passes the checks; the hash catches it and the file is fetched again
        assert sum(r.sent for r in _object_gets(hub, cdn, SIZE + SIZE // 2)) == SIZE + SIZE // 2
    else:  # refused before a byte was fetched
        assert sum(r.sent for r in _object_gets(hub, cdn, SIZE)) == SIZE


# -- bad answers from the CDN -----------------------------------------------------------------------------------
@pytest.fixture()
def faulty(cdn, hub) -> Iterator[FaultProxy]:
    with FaultProxy(hub.cdn.endpoint, cache_match="/repos/") as proxy:
        hub.front.cdn_base = proxy.endpoint
        yield proxy


def _proxy_gets(proxy: FaultProxy) -> list[Any]:
    return [r for r in proxy.requests("/repos/") if r.method == "GET"]


@pytest.mark.parametrize("faults", [
    Faults(match="/repos/", honour_range=True, wrong_range_times=2),
    Faults(match="/repos/", honour_range=True, extra_bytes=5000, extra_times=2),
    Faults(match="/repos/", honour_range=True, drop_after=100_000, drop_times=2),
    Faults(match="/repos/", honour_range=True, status=503, status_times=2),
], ids=["206-for-another-range", "longer-than-the-range", "body-cut-short", "503"])
def test_a_bad_answer_is_retried_for_its_range_only(cdn, hub, faulty, tmp_path, faults):
    faulty.set_faults(faults)
    result = _fetch(hub, tmp_path, connections=4)
    assert result.ok and _sha(result.files[0].local_path) == _info(cdn).sha256
    gets = _proxy_gets(faulty)
    pieces = -(-SIZE // PIECE)
    assert len(gets) == pieces + 2, "each bad answer cost one more request for its range, nothing else"
    if faults.drop_after:  # the retry asks for the rest of the range, from where the body stopped
        starts = {int(r.range[6:].split("-")[0]) for r in gets}
        assert len([s for s in starts if s % PIECE]) == 2


def test_a_stalled_range_times_out_and_resumes(cdn, hub, faulty, tmp_path):
    faulty.set_faults(Faults(match="/repos/", honour_range=True, stall_after=100_000, stall_seconds=5.0))
    result = _fetch(hub, tmp_path, connections=4, timeout=1.0)
    assert result.ok and _sha(result.files[0].local_path) == _info(cdn).sha256
    stalled = [r for r in _proxy_gets(faulty) if int(r.range[6:].split("-")[0]) % PIECE]
    assert len(stalled) == 1, "the stalled range was asked again from where it stopped"


@pytest.mark.parametrize("faults", [
    Faults(match="/repos/", honour_range=False),
    Faults(match="/repos/", honour_range=True, ignore_range_from=PIECE),
], ids=["never", "mid-file"])
def test_a_server_that_answers_200_to_a_range_gets_the_file_restarted_on_one_stream(cdn, hub, faulty, tmp_path,
                                                                                       faults):
    faulty.set_faults(faults)
    result = _fetch(hub, tmp_path, connections=4)
    assert result.ok and _sha(result.files[0].local_path) == _info(cdn).sha256
    faulty.bytes_sent("/repos/")  # every answer finished
    gets = _proxy_gets(faulty)
    assert gets[-1].range is None and gets[-1].status == 200 and gets[-1].sent == SIZE
    assert any(r.range and r.status == 200 for r in gets), "the 200 that made it restart"


def test_a_range_that_keeps_failing_gives_up_in_one_line_and_keeps_the_partial(cdn, hub, faulty, tmp_path):
    faulty.set_faults(Faults(match="/repos/", honour_range=True, wrong_range_times=10_000))
    result = _fetch(hub, tmp_path, connections=4)
    (failed,) = result.failures()
    error = str(failed.error)
    assert "\n" not in error and error.startswith(f"{BIG}: download failed: bytes ") and "kept to resume" in error
    info = _info(cdn)
    assert not (_blobs(tmp_path) / info.sha256).exists() and not Path(result.target, BIG).exists()
    assert (_blobs(tmp_path) / f"{info.sha256}.ranged.journal").exists()


# -- the redirect -------------------------------------------------------------------------------------------------
def test_an_expired_cdn_link_is_resolved_again(cdn, hub, tmp_path):
    hub.front.faults = FrontFaults(expired=1)
    result = _fetch(hub, tmp_path, connections=4)
    assert result.ok and _sha(result.files[0].local_path) == _info(cdn).sha256
    assert [r.status for r in _object_gets(hub, cdn, SIZE)].count(410) == 1
    assert [e.status for e in hub.front.log if f"/{BIG}" in e.path] == [302, 302]


def _cli(hub: CdnHub, *args: str) -> tuple[int, str]:
    code, output = run_cli_clean(*args, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"})
    assert TOKEN not in output
    return code, output


@pytest.mark.parametrize("faults, words", [
    (FrontFaults(location="ftp://127.0.0.1:21/object"), "only http and https are followed"),
    (FrontFaults(location="file:///etc/passwd"), "only http and https are followed"),
    (FrontFaults(loop=True), "too many redirects"),
    (FrontFaults(linked_size=SIZE + 1), f"the Hub's redirect says the file has {SIZE + 1} bytes, the listing {SIZE}"),
], ids=["ftp", "file", "loop", "linked-size"])
def test_a_bad_redirect_is_refused_in_one_line(cdn, hub, tmp_path, faults, words):
    hub.front.faults = faults
    code, out = _cli(hub, "fetch", REPO, BIG, "--connections", "4", "--cache-dir", str(tmp_path))
    lines = [line for line in out.splitlines() if line.startswith("mcard: ")]
    assert code in (1, 2) and len(lines) == 1 and words in lines[0], out
    assert not (_blobs(tmp_path) / _info(cdn).sha256).exists()


# -- options ----------------------------------------------------------------------------------------------------
def test_more_connections_are_faster_against_a_per_connection_limit(cdn, hub, faulty, tmp_path):
    """The one timing assertion: a ratio within one run, expected ~3.5, asserted >= 2."""
    faulty.set_faults(Faults(match="/repos/", honour_range=True, chunk_delay=0.05))  # 1.3 MB/s per connection
    started = time.monotonic()
    assert _fetch(hub, tmp_path / "one", connections=1).ok
    one = time.monotonic() - started
    started = time.monotonic()
    assert _fetch(hub, tmp_path / "four", connections=4).ok
    four = time.monotonic() - started
    assert one / four >= 2.0, f"1 connection {one:.2f} s, 4 connections {four:.2f} s"


def test_cli_connections_and_max_rate(cdn, hub, tmp_path):
    started = time.monotonic()
    code, out = _cli(hub, "fetch", REPO, BIG, "--connections", "4", "--max-rate", "2MB", "--cache-dir", str(tmp_path),
                     "--json")
    took = time.monotonic() - started
    assert code == 0 and '"ok": true' in out
    assert took >= 0.8, "2 MB at 2 MB/s, less a 256 kB burst, takes at least ~0.87 s"
    code, out = _cli(hub, "fetch", REPO, "--max-rate", "fast", "--cache-dir", str(tmp_path))
    assert code == 2 and "--max-rate" in out and len(out.strip().splitlines()) == 1
    code, out = _cli(hub, "fetch", REPO, "--connections", "0", "--cache-dir", str(tmp_path))
    assert code == 2
