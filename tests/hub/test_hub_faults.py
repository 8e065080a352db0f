"""Downloads under injected faults: drops, ignored Range, resume across runs, corruption, stalls, 429/5xx,
hostile listings. The fault proxy (tests/tools/faultproxy.py) sits between mcard and a real olah server."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, Faults

from mcard.core.errors import CheckFailed, UnusableInput
from mcard.hub import RetryPolicy, fetch
from mcard.testing.hubserver import BuiltRepo, OlahServer, build_git_repo, safetensors_bytes

REPO = "org/faulty"
BIG = "big.safetensors"
FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("faults")
    built = build_git_repo(root / "mirrors", REPO, {"main": {
        BIG: safetensors_bytes(2_000_000, 7),
        "data.txt": os.urandom(150_000).hex().encode(),  # a 300 kB plain-git file: verified by git blob id
        "config.json": b'{"model_type": "llama"}',
        "sub/x.json": b"{}",
    }})
    with OlahServer(root / "mirrors") as server, FaultProxy(server.endpoint) as proxy:
        yield {"proxy": proxy, "built": built}


@pytest.fixture()
def proxy(env: dict[str, Any]) -> Iterator[FaultProxy]:
    p: FaultProxy = env["proxy"]
    p.set_faults(Faults())
    p.clear_log()
    yield p
    p.set_faults(Faults())


def _info(env: dict[str, Any], path: str = BIG) -> Any:
    built: BuiltRepo = env["built"]
    return built.files["main"][path]


def _big_gets(proxy: FaultProxy, name: str = BIG) -> list[Any]:
    return [r for r in proxy.requests(f"/{name}") if r.method == "GET"]


def _blobs(cache: Path) -> Path:
    return cache / "models--org--faulty" / "blobs"


def test_dropped_connection_resumes_with_range(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_faults(Faults(match=BIG, honour_range=True, drop_after=700_000))
    result = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    assert result.ok and result.files[0].sha256 == _info(env).sha256
    first, second = _big_gets(proxy)
    assert first.range is None and first.sent == 700_000
    assert second.range == "bytes=700000-" and second.status == 206
    assert proxy.bytes_sent(BIG) == _info(env).size, "nothing was transferred twice"


def test_server_ignoring_range_restarts_the_file_cleanly(env: dict[str, Any], proxy: FaultProxy,
                                                         tmp_path: Path) -> None:
    proxy.set_faults(Faults(match=BIG, honour_range=False, drop_after=500_000))
    result = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    assert result.ok and result.files[0].sha256 == _info(env).sha256
    first, second = _big_gets(proxy)
    assert second.range == "bytes=500000-" and second.status == 200  # answered with the whole file
    assert proxy.bytes_sent(BIG) == 500_000 + _info(env).size


def test_resume_across_runs_retransfers_nothing(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    info = _info(env)
    proxy.set_faults(Faults(match=BIG, honour_range=True, drop_after=1_200_000))
    first = fetch(REPO, endpoint=proxy.endpoint, cache_dir=tmp_path, policy=NO_RETRY)
    assert not first.ok
    (failed,) = first.failures()
    assert failed.path == BIG and "1200000 bytes kept" in (failed.error or "")
    partial = _blobs(tmp_path) / f"{info.sha256}.incomplete"
    assert partial.stat().st_size == 1_200_000 and not (_blobs(tmp_path) / info.sha256).exists()
    assert not (tmp_path / "models--org--faulty" / "refs" / "main").exists(), "no ref for an incomplete run"
    plan = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path, dry_run=True)
    assert plan.files[0].resumed_from == 1_200_000
    proxy.set_faults(Faults(match=BIG, honour_range=True))
    proxy.clear_log()
    second = fetch(REPO, endpoint=proxy.endpoint, cache_dir=tmp_path, policy=NO_RETRY)
    assert second.ok
    big = next(f for f in second.files if f.path == BIG)
    assert (big.status, big.resumed_from, big.sha256) == ("resumed", 1_200_000, info.sha256)
    assert proxy.bytes_sent(BIG) == info.size - 1_200_000
    assert {f.status for f in second.files if f.path != BIG} == {"cached"}
    assert not partial.exists()


def test_corrupted_byte_fails_and_leaves_nothing(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    info = _info(env)
    proxy.set_faults(Faults(match=BIG, corrupt_offset=12_345))
    result = fetch(REPO, endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    (failed,) = result.failures()
    assert isinstance(failed.failure, CheckFailed)
    assert failed.error is not None and failed.error.startswith(f"{BIG}: sha256 mismatch: expected {info.sha256}, got ")
    assert len(failed.error.split("got ")[1]) == 64
    blobs = _blobs(tmp_path)
    assert not (blobs / info.sha256).exists() and not list(blobs.glob("*.incomplete"))
    assert not Path(result.target, BIG).exists()
    assert len(_big_gets(proxy)) == 1, "a mismatch is not retried"
    with pytest.raises(CheckFailed, match="sha256 mismatch"):
        result.raise_for_failures()
    proxy.set_faults(Faults(match="data.txt", corrupt_offset=10))
    result = fetch(REPO, ["data.txt"], endpoint=proxy.endpoint, cache_dir=tmp_path / "b", policy=FAST)
    assert "data.txt: git blob id mismatch: expected " + _info(env, "data.txt").blob_id in str(result.files[0].error)


def test_corrupt_partial_from_an_earlier_run_is_redone(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    info = _info(env)
    partial = _blobs(tmp_path) / f"{info.sha256}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)  # not the file's first 1000 bytes
    proxy.set_faults(Faults(match=BIG, honour_range=True))
    result = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    assert result.ok and result.files[0].status == "downloaded"
    assert [r.range for r in _big_gets(proxy)] == ["bytes=1000-", None]


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.advanced = 0
        self.calls = 0
        self.done: list[str] = []

    def begin(self, total_bytes: int, files: int) -> None:
        self.total = total_bytes

    def file_started(self, path: str, size: int) -> None:
        pass

    def file_position(self, path: str, position: int) -> None:
        pass

    def advance(self, path: str, nbytes: int) -> None:
        with self.lock:
            self.advanced += nbytes
            self.calls += 1

    def file_done(self, path: str, status: str) -> None:
        self.done.append(path)

    def end(self) -> None:
        pass


def test_slow_server_reports_progress(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_faults(Faults(match=BIG, chunk_delay=0.01))
    recorder = _Recorder()
    result = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST, reporter=recorder)
    assert result.ok and recorder.total == recorder.advanced == _info(env).size
    assert recorder.calls > 1 and recorder.done == [BIG]


def test_stalled_server_times_out_and_resumes(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_faults(Faults(match=BIG, honour_range=True, stall_after=300_000, stall_seconds=3.0))
    started = time.monotonic()
    result = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST, timeout=1.0)
    assert result.ok and time.monotonic() - started < 2.9  # it did not wait out the 3 s stall
    assert [r.range for r in _big_gets(proxy)] == [None, "bytes=300000-"]


def test_429_retry_after_is_honoured(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_faults(Faults(match=BIG, status=429, status_times=1, retry_after="1"))
    started = time.monotonic()
    result = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    assert result.ok and time.monotonic() - started >= 1.0  # the backoff alone would be ~0.01 s
    assert [r.status for r in _big_gets(proxy)] == [429, 200]


def test_5xx_is_retried_then_reported(env: dict[str, Any], proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_faults(Faults(match="/api/", status=503, status_times=1))  # metadata calls are retried too
    assert fetch(REPO, ["config.json"], endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST).ok
    proxy.set_faults(Faults(match=BIG, status=503, status_times=2))
    assert fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path / "a", policy=FAST).ok
    proxy.set_faults(Faults(match=BIG, status=500, status_times=100))
    result = fetch(REPO, [BIG], endpoint=proxy.endpoint, cache_dir=tmp_path / "b", policy=FAST)
    assert not result.ok
    assert result.files[0].error == f"{BIG}: download failed after 4 attempts ({BIG}: HTTP 500); " \
                                    f"0 bytes kept in {_info(env).sha256}.incomplete to resume"


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/mcard-evil.txt", "sub/../../evil.txt"])
def test_hostile_listing_is_refused_before_writing(proxy: FaultProxy, tmp_path: Path, evil: str) -> None:
    proxy.set_faults(Faults(tree_extra=[{"type": "file", "oid": "0" * 40, "size": 3, "path": evil}]))
    with pytest.raises(UnusableInput, match="refusing unsafe path from the server listing"):
        fetch(REPO, endpoint=proxy.endpoint, cache_dir=tmp_path / "cache", policy=FAST)
    with pytest.raises(UnusableInput, match="refusing unsafe path"):
        fetch(REPO, endpoint=proxy.endpoint, local_dir=tmp_path / "out", policy=FAST)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil.txt").exists()


def test_symlinked_folder_in_local_dir_is_refused(proxy: FaultProxy, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    result = fetch(REPO, endpoint=proxy.endpoint, local_dir=out, policy=FAST)
    (failed,) = result.failures()
    assert failed.path == "sub/x.json" and "refusing to write outside" in (failed.error or "")
    assert list(outside.iterdir()) == []
