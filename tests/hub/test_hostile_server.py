"""mcard against a hostile Hub server (mcard/testing/hostile_hub.py): the token stays home, time and memory stay
bounded, and every refusal is one line with a documented exit code, never an internal error (issue #14).

Each test reproduces a hole mcard had; the server's second loopback host records any Authorization it receives.
"""

from __future__ import annotations

import json
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import run_cli_clean
from mcard.core.arch import tiny_config
from mcard.formats import gptq
from mcard.testing.hostile_hub import HostileHub, Sparse, Tricks

REPO = "org/hostile"
TOKEN = "tok-7Rq2xLm9Pz41Kd"  # not shaped like an hf_ token: only the known-secret rule can mask it
BAD_CFG = b'{"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 1e999, "head_bits": Infinity}}'
GOOD_CFG = b'{"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}'


def _variant() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        gptq.write_variant(Path(tmp), tiny_config())
        return {p.relative_to(tmp).as_posix(): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}


def _zip64_claiming(size_cd: int, total: int) -> Sparse:
    """A 'torch zip' whose zip64 end record claims a central directory of ``size_cd`` bytes."""
    tail_len = 56 + 20 + 22
    at = total - tail_len
    rec64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, size_cd, at - size_cd)
    locator = struct.pack("<IIQI", 0x07064B50, 0, at, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return Sparse(total, ((0, b"PK\x03\x04"), (at, rec64 + locator + end)))


def _ggjt_claiming(n_vocab: int, total: int) -> Sparse:
    """A ggjt header, then 1020-byte vocabulary tokens for as far as anyone reads."""
    header = struct.pack("<II7i", 0x67676A74, 3, n_vocab, 4096, 256, 32, 32, 128, 2)
    return Sparse(total, ((0, header),), fill=struct.pack("<I", 1020) + b"t" * 1020 + b"\0" * 4, fill_from=len(header))


@pytest.fixture(scope="module")
def hub() -> Iterator[HostileHub]:
    repos: dict[str, Any] = {
        REPO: {"main": _variant(), "gptq-4bit-32g": {"config.json": BAD_CFG}, "gptq-4bit-128g": {"config.json": GOOD_CFG}},
        "org/zip": {"main": {"pytorch_model.bin": _zip64_claiming(6_000_000_000, 7_000_000_000)}},
        "org/ggml": {"main": {"ggml-model-q4_0.bin": _ggjt_claiming(2**31 - 1, 1 << 40)}},
        "org/ggml-4m": {"main": {"ggml-model-q4_0.bin": _ggjt_claiming((1 << 22) - 1, 1 << 40)}},
    }
    with HostileHub(repos) as server:
        yield server


@pytest.fixture()
def tricks(hub: HostileHub) -> Iterator[Callable[..., None]]:
    def set_tricks(**kw: Any) -> None:
        hub.tricks = Tricks(**kw)

    hub.log.clear()
    hub.other.seen.clear()
    yield set_tricks
    hub.tricks = Tricks()


def _cli(hub: HostileHub, *args: str, **env: str) -> tuple[int, str]:
    return run_cli_clean(*args, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", **env})


def _sent_token(hub: HostileHub) -> bool:
    return any(auth == f"Bearer {TOKEN}" for _m, _p, auth in hub.requests())


# -- 1. the token goes to the endpoint's origin only ----------------------------------------------------------
@pytest.mark.parametrize("command", [["fetch", REPO, "--dry-run"], ["validate", f"{REPO}:main"], ["branches", REPO]],
                         ids=["fetch", "validate", "branches"])
def test_next_page_link_to_another_host_gets_no_token(hub, tricks, tmp_path, command):
    tricks(next_page="other")
    _cli(hub, *command, *(["--cache-dir", str(tmp_path)] if command[0] == "fetch" else []))
    assert hub.other.seen, "the listing's next page on the other host was requested"
    assert hub.other.seen_tokens() == [], "Authorization went to another host"
    assert _sent_token(hub), "the endpoint itself did get the token"


def test_redirect_to_a_cdn_host_gets_no_token(hub, tricks, tmp_path):
    tricks(redirect_other=("/resolve/",))
    code, out = _cli(hub, "fetch", REPO, "config.json", "--cache-dir", str(tmp_path))
    assert code == 0 and hub.other.seen and hub.other.seen_tokens() == []


# -- 2. a token the server echoes is never printed -------------------------------------------------------------
@pytest.mark.parametrize("command, trick", [
    (["validate", f"{REPO}:main"], {"echo_token": ("/resolve/",)}),
    (["validate", f"{REPO}:main", "--json"], {"echo_token": ("/resolve/",)}),
    (["validate", f"{REPO}:main"], {"content_range_echo": True}),
    (["branches", REPO], {"echo_token": ("/resolve/",)}),
    (["fetch", REPO, "config.json"], {"echo_token": ("/resolve/",)}),
    (["fetch", f"{REPO}:nope", "--dry-run"], {"refs_extra": [f"b-{TOKEN}"]}),
    (["fetch", REPO, "--dry-run"], {"tree_extra": [{"type": "file", "oid": "0" * 40, "size": 1, "path": f"../{TOKEN}"}]}),
], ids=["validate-403", "validate-json", "content-range", "branches-403", "fetch-403", "branch-name", "refused-path"])
def test_echoed_token_is_never_printed(hub, tricks, tmp_path, command, trick):
    tricks(**trick)
    code, out = _cli(hub, *command, *(["--cache-dir", str(tmp_path)] if command[0] == "fetch" else []))
    assert code in (1, 2) and out.strip()
    assert TOKEN not in out and "***" in out


def test_sync_reports_never_hold_the_token(hub, tricks, tmp_path):
    tricks(refs_extra=[f"b-{TOKEN}"])
    entry = tmp_path / "e.toml"
    entry.write_text(f'[model]\nrepo = "{REPO}"\nname = "H"\nlicense = "mit"\n\n'
                     '[[variants]]\nformat = "gptq"\nbranch = "nope"\nbits = 4\ngroup_size = 128\n')
    code, out = _cli(hub, "sync", str(entry), "--no-smoke", "--report", str(tmp_path / "r"), "--endpoint", hub.endpoint)
    assert code == 1 and TOKEN not in out
    written = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"report.json", "report.md", "nope.json"}
    for path in written:
        assert TOKEN not in path.read_text() and "***" in path.read_text(), path


# -- 5. time stays bounded ---------------------------------------------------------------------------------------
def test_a_server_that_never_answers_times_out(hub, tricks):
    tricks(hang=("/refs",))
    started = time.monotonic()
    code, out = _cli(hub, "branches", REPO, MCARD_READ_TIMEOUT="0.3", MCARD_DEADLINE="2")
    assert code == 1 and time.monotonic() - started < 15
    assert "deadline" in out or "timed out" in out.lower() or "cannot reach" in out


def test_endless_next_pages_stop_at_the_page_cap(hub, tricks, tmp_path):
    tricks(next_page="endless")
    code, out = _cli(hub, "fetch", REPO, "--dry-run", "--cache-dir", str(tmp_path))
    assert code == 2 and "past 1000 pages" in out
    assert len(hub.requests("/tree/")) == 1000


# -- 6. bytes stay bounded ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, trick, words", [
    (["validate", f"{REPO}:main"], {"endless_body": ("config.json",)}, "larger than"),
    (["validate", f"{REPO}:main"], {"gzip_bomb": ("config.json",)}, "after decoding"),
    (["branches", REPO], {"gzip_bomb": ("/refs",)}, "after decoding"),
    (["fetch", REPO, "--dry-run"], {"endless_body": ("/tree/",)}, "larger than"),
], ids=["endless-config", "gzip-config", "gzip-refs", "endless-tree"])
def test_endless_and_compressed_bodies_are_capped(hub, tricks, tmp_path, command, trick, words):
    tricks(**trick)
    code, out = _cli(hub, *command, *(["--cache-dir", str(tmp_path)] if command[0] == "fetch" else []))
    assert code == 2 and words in out and "refused" in out


def test_zip64_record_claiming_a_6gb_directory_is_refused(hub, tricks):
    code, out = _cli(hub, "validate", "org/zip:main")
    assert code == 2 and "central directory" in out
    assert len(hub.requests("/resolve/")) < 10


@pytest.mark.parametrize("repo, words, most", [
    ("org/ggml", "implausible GGML hparams", 10),  # n_vocab 2^31-1: refused from the header
    ("org/ggml-4m", "more than 67108864 bytes", 1100),  # a plausible count of huge tokens: the walk's budget
], ids=["vocab-2^31", "vocab-4M"])
def test_ggjt_listed_at_1tib_with_a_huge_vocab_is_bounded(hub, tricks, repo, words, most):
    code, out = _cli(hub, "validate", f"{repo}:main")
    assert code == 2 and words in out
    assert len(hub.requests("/resolve/")) <= most


# -- 11. hostile listings and answers: one line, exit 2, never an internal error ---------------------------------
@pytest.mark.parametrize("size", [2**62, 2**63, 10**20, -1, True])
def test_absurd_listed_sizes_are_refused(hub, tricks, size):
    tricks(size_override={"config.json": size})
    code, out = _cli(hub, "validate", f"{REPO}:main")
    assert code == 2 and "invalid size" in out


@pytest.mark.parametrize("path, words", [
    ("n" * 300, "over 255 bytes"),
    ("/".join(["d"] * 2100) + "/f", "limit 1024 bytes"),
    ("config.json/inner.txt", "both as a file and as the folder"),
    ("x" * 5_000_000, "limit 1024 bytes"),
    ("x" * 50_000_000, "more than the 33554432 allowed"),
], ids=["long-name", "deep-path", "file-and-folder", "5mb-path", "50mb-path"])
def test_listing_paths_the_file_system_cannot_hold_are_refused(hub, tricks, tmp_path, path, words):
    tricks(tree_extra=[{"type": "file", "oid": "1" * 40, "size": 1, "path": path}])
    code, out = _cli(hub, "fetch", REPO, "--cache-dir", str(tmp_path))
    assert code == 2 and words in out
    assert len(out) < 5000


def test_redirect_loop_is_one_line(hub, tricks, tmp_path):
    tricks(redirect_loop=("/resolve/",))
    code, out = _cli(hub, "fetch", REPO, "config.json", "--cache-dir", str(tmp_path))
    assert code == 2 and "too many redirects" in out


def test_content_range_total_that_disagrees_with_the_listing_is_refused(hub, tricks):
    tricks(range_total=12345)
    code, out = _cli(hub, "validate", f"{REPO}:main")
    assert code in (1, 2) and "Content-Range" in out


def test_non_finite_config_numbers_are_noted_on_their_branch_only(hub, tricks):
    code, out = _cli(hub, "branches", REPO, "--json")
    refs = {r["name"]: r for r in json.loads(out)["refs"]}
    assert code == 0 and refs["gptq-4bit-128g"]["status"] == "agrees"
    bad = refs["gptq-4bit-32g"]
    assert any("group_size is not a finite number" in n for n in bad["notes"])
    assert any("head_bits is not a finite number" in n for n in bad["notes"])


def test_huggingface_hub_outside_an_mcard_run_keeps_its_token_home(hub, tricks):
    """Library users calling huggingface_hub in a process that uses mcard: the token still reaches their endpoint,
    and never a next-page link on another host."""
    from huggingface_hub import HfApi

    from mcard.net import install_hf_client

    install_hf_client()
    tricks(next_page="other")
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    assert [b.name for b in api.list_repo_refs(REPO).branches][:1] == ["main"]
    files = [f.path for f in api.list_repo_tree(REPO, revision="main", recursive=True)]
    assert "config.json" in files and hub.other.seen and hub.other.seen_tokens() == []
    assert _sent_token(hub)


def test_requests_honour_the_proxy_environment_through_the_guard(hub, tricks, tmp_path):
    """A publisher's CI behind a proxy: mcard's client and huggingface_hub's still go through HTTP_PROXY."""
    from huggingface_hub import close_session

    close_session()  # huggingface_hub builds its one client on first use: here, with the proxy set
    try:
        code, out = _cli(hub, "fetch", REPO, "--dry-run", "--cache-dir", str(tmp_path),
                         HTTP_PROXY=hub.other.endpoint, NO_PROXY="", no_proxy="")
    finally:
        close_session()
    assert code == 2 and hub.other.seen  # the proxy (the recorder) answered for the Hub: not a Hub answer
    assert all(path.startswith(hub.endpoint) for _m, path, _a in hub.other.seen)
    assert not hub.requests()
