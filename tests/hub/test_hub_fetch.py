"""fetch and branches against a real Hub API (olah, offline mirror mode) on loopback."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, Faults

from mcard.core.errors import McardError, UnusableInput
from mcard.hub import RetryPolicy, fetch, list_branches
from mcard.testing.hubserver import (
    BuiltRepo,
    OlahServer,
    build_git_repo,
    commit_files,
    free_port,
    safetensors_bytes,
    sample_gptq_branches,
)

REPO = "TheBloke/Tiny-GPTQ"
FORMATS = "org/formats"
MOVING = "org/moving"
FAST = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hub")
    mirrors = root / "mirrors"
    built = {
        REPO: build_git_repo(mirrors, REPO, sample_gptq_branches(), tags={"v1.0": "gptq-4bit-32g-actorder_True"}),
        FORMATS: build_git_repo(mirrors, FORMATS, {
            "main": {"config.json": b"{}", "model.safetensors": safetensors_bytes(3000, 9),
                     "pytorch_model.bin": os.urandom(2000), "training_args.bin": os.urandom(300)},
            "pickle-only": {"config.json": b"{}", "pytorch_model.bin": os.urandom(2000)},
            "ggml": {"config.json": b"{}", "llama-7b.ggmlv3.q4_0.bin": os.urandom(2500)},
        }),
        MOVING: build_git_repo(mirrors, MOVING, {"main": {"a.safetensors": safetensors_bytes(200_000, 5),
                                                          "b.txt": b"version 1\n"}}),
    }
    with OlahServer(mirrors) as server, FaultProxy(server.endpoint) as proxy:
        yield {"olah": server, "proxy": proxy, "built": built, "mirrors": mirrors}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_writes_the_hf_cache_layout(hub: dict[str, Any], tmp_path: Path) -> None:
    built: BuiltRepo = hub["built"][REPO]
    result = fetch(REPO, endpoint=hub["olah"].endpoint, cache_dir=tmp_path, policy=FAST)
    assert result.ok and result.revision == "main" and result.commit == built.commits["main"]
    storage = tmp_path / "models--TheBloke--Tiny-GPTQ"
    assert (storage / "refs" / "main").read_text() == built.commits["main"]
    infos = built.files["main"]
    assert {f.path for f in result.files} == set(infos)
    for f in result.files:
        info = infos[f.path]
        link = storage / "snapshots" / built.commits["main"] / f.path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        blob = Path(os.path.realpath(link))
        assert blob.parent == (storage / "blobs").resolve()
        assert blob.name == (info.sha256 if info.lfs else info.blob_id)  # the etag huggingface_hub uses
        assert _sha256(blob) == info.sha256 == f.sha256 and f.status == "downloaded"
    assert not list((storage / "blobs").glob("*.incomplete"))

    from huggingface_hub import hf_hub_download, scan_cache_dir

    report = scan_cache_dir(tmp_path)
    assert not report.warnings
    (repo_info,) = report.repos
    assert {r.commit_hash: r.refs for r in repo_info.revisions} == {built.commits["main"]: frozenset({"main"})}
    path = hf_hub_download(REPO, "model.safetensors", revision="main", cache_dir=tmp_path, local_files_only=True)
    assert Path(path) == storage / "snapshots" / built.commits["main"] / "model.safetensors"


def test_refetch_is_cached_and_huggingface_hub_reuses_it(hub: dict[str, Any], tmp_path: Path) -> None:
    proxy: FaultProxy = hub["proxy"]
    fetch(REPO, endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    proxy.clear_log()
    again = fetch(REPO, endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    assert {f.status for f in again.files} == {"cached"}
    assert all(f.sha256 for f in again.files)
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(REPO, "model.safetensors", revision="main", cache_dir=tmp_path, endpoint=proxy.endpoint)
    assert Path(path) == Path(again.target) / "model.safetensors"
    assert not [r for r in proxy.requests("/resolve/") if r.method == "GET"], "nothing is downloaded twice"


def test_files_from_huggingface_hub_count_as_cached(hub: dict[str, Any], tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    branch = "gptq-3bit--1g-actorder_True"
    snapshot_download(REPO, revision=branch, cache_dir=tmp_path, endpoint=hub["olah"].endpoint)
    result = fetch(f"{REPO}:{branch}", endpoint=hub["olah"].endpoint, cache_dir=tmp_path, policy=FAST)
    assert {f.status for f in result.files} == {"cached"}


def test_branch_url_tag_and_commit_pin_the_right_commit(hub: dict[str, Any], tmp_path: Path) -> None:
    built: BuiltRepo = hub["built"][REPO]
    ep = hub["olah"].endpoint
    branch = "gptq-4bit-32g-actorder_True"
    by_spec = fetch(f"{REPO}:{branch}", endpoint=ep, cache_dir=tmp_path, include=["*.json"])
    by_url = fetch(f"https://huggingface.co/{REPO}/tree/{branch}", endpoint=ep, cache_dir=tmp_path, include=["*.json"])
    by_tag = fetch(REPO, revision="v1.0", endpoint=ep, cache_dir=tmp_path, include=["*.json"])
    by_commit = fetch(REPO, revision=built.commits[branch], endpoint=ep, cache_dir=tmp_path, include=["*.json"])
    assert {r.commit for r in (by_spec, by_url, by_tag, by_commit)} == {built.commits[branch]}
    assert (by_tag.kind, by_commit.kind) == ("tag", "commit")
    refs = tmp_path / "models--TheBloke--Tiny-GPTQ" / "refs"
    assert sorted(p.name for p in refs.iterdir()) == [branch, "v1.0"]  # no ref for a bare commit


def test_include_exclude_names_and_dry_run(hub: dict[str, Any], tmp_path: Path) -> None:
    ep = hub["olah"].endpoint
    plan = fetch(REPO, endpoint=ep, cache_dir=tmp_path / "c", dry_run=True, exclude=["README.md"])
    assert not (tmp_path / "c").exists(), "a dry run writes nothing"
    assert {f.status for f in plan.files} == {"download"} and "README.md" not in {f.path for f in plan.files}
    assert plan.total_size == sum(i.size for p, i in hub["built"][REPO].files["main"].items() if p != "README.md")
    got = fetch(REPO, endpoint=ep, cache_dir=tmp_path / "c", include=["*.json"], exclude=["tokenizer*"])
    assert sorted(f.path for f in got.files) == ["config.json", "quantize_config.json"]
    plan = fetch(REPO, ["config.json", "model.safetensors"], endpoint=ep, cache_dir=tmp_path / "c", dry_run=True)
    assert [(f.path, f.status) for f in plan.files] == [("config.json", "cached"), ("model.safetensors", "download")]


def test_pickle_policy_on_a_served_repo(hub: dict[str, Any], tmp_path: Path) -> None:
    ep = hub["olah"].endpoint
    mixed = fetch(FORMATS, endpoint=ep, cache_dir=tmp_path)
    assert sorted(f.path for f in mixed.files) == [".gitattributes", "config.json", "model.safetensors"]
    assert sorted(p for p, _ in mixed.skipped) == ["pytorch_model.bin", "training_args.bin"]
    with pytest.raises(UnusableInput, match=r"only pickle weights \(pytorch_model.bin\).*--allow-pickle"):
        fetch(f"{FORMATS}:pickle-only", endpoint=ep, cache_dir=tmp_path)
    allowed = fetch(f"{FORMATS}:pickle-only", endpoint=ep, cache_dir=tmp_path, allow_pickle=True)
    assert "pytorch_model.bin" in {f.path for f in allowed.files} and allowed.ok
    ggml = fetch(f"{FORMATS}:ggml", endpoint=ep, cache_dir=tmp_path)
    assert "llama-7b.ggmlv3.q4_0.bin" in {f.path for f in ggml.files}


def test_local_dir_is_compatible_with_hf_download(hub: dict[str, Any], tmp_path: Path) -> None:
    proxy: FaultProxy = hub["proxy"]
    out = tmp_path / "out"
    result = fetch(REPO, endpoint=proxy.endpoint, local_dir=out, cache_dir=tmp_path / "unused", policy=FAST)
    infos = hub["built"][REPO].files["main"]
    for path, info in infos.items():
        assert _sha256(out / path) == info.sha256 and not (out / path).is_symlink()
    assert not (tmp_path / "unused").exists()
    meta = (out / ".cache/huggingface/download/model.safetensors.metadata").read_text().splitlines()
    assert meta[:2] == [result.commit, infos["model.safetensors"].sha256]
    assert {f.status for f in fetch(REPO, endpoint=proxy.endpoint, local_dir=out).files} == {"cached"}
    from huggingface_hub import hf_hub_download

    proxy.clear_log()
    hf_hub_download(REPO, "model.safetensors", revision="main", local_dir=out, endpoint=proxy.endpoint)
    assert not [r for r in proxy.requests("/resolve/") if r.method == "GET"]


def test_unknown_repo_branch_and_file_are_one_line_errors(hub: dict[str, Any], tmp_path: Path) -> None:
    ep = hub["olah"].endpoint
    with pytest.raises(UnusableInput, match="nobody/nothing: repo not found") as e:
        fetch("nobody/nothing", endpoint=ep, cache_dir=tmp_path, policy=FAST)
    assert "\n" not in str(e.value)
    with pytest.raises(UnusableInput, match=r"no branch, tag or commit 'gptq-5bit'; branches: "
                                            r"gptq-3bit--1g-actorder_True, .*main; tags: v1.0"):
        fetch(f"{REPO}:gptq-5bit", endpoint=ep, cache_dir=tmp_path, policy=FAST)
    with pytest.raises(UnusableInput, match="no commit " + "a" * 40):
        fetch(REPO, revision="a" * 40, endpoint=ep, cache_dir=tmp_path, policy=FAST)
    with pytest.raises(UnusableInput, match="no file missing.json in this revision"):
        fetch(REPO, ["missing.json"], endpoint=ep, cache_dir=tmp_path, policy=FAST)
    with pytest.raises(McardError, match="cannot reach"):
        fetch(REPO, endpoint=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path, policy=FAST)


def test_offline_mode_resolves_from_the_cache(hub: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    online = fetch(REPO, endpoint=hub["olah"].endpoint, cache_dir=tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at call time, not at import
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    offline = fetch(REPO, endpoint=dead)
    assert offline.offline and offline.commit == online.commit
    assert {(f.path, f.sha256, f.status) for f in offline.files} == {(f.path, f.sha256, "cached") for f in online.files}
    copied = fetch(REPO, endpoint=dead, local_dir=tmp_path / "copy", include=["*.json"])
    assert (tmp_path / "copy" / "config.json").read_bytes() == Path(online.target, "config.json").read_bytes()
    assert len(copied.files) == 3
    with pytest.raises(McardError,
                       match=r"not in the cache and HF_HUB_OFFLINE is set \(unset it to download\); cached refs: main$"):
        fetch(f"{REPO}:gptq-4bit-32g-actorder_True", endpoint=dead)
    with pytest.raises(McardError, match="not in the cache and HF_HUB_OFFLINE"):
        fetch("org/elsewhere", endpoint=dead)
    listing = list_branches(REPO, endpoint=dead)
    assert [(r.name, r.status) for r in listing.refs] == [("main", "config only")]


def test_branch_moving_mid_run_does_not_mix_commits(hub: dict[str, Any], tmp_path: Path) -> None:
    proxy: FaultProxy = hub["proxy"]
    built: BuiltRepo = hub["built"][MOVING]
    old = built.commits["main"]
    proxy.set_faults(Faults(match="a.safetensors", stall_after=1000, stall_seconds=1.0))
    mover = threading.Timer(0.3, lambda: commit_files(built.path, "main", {"a.safetensors": b"new", "b.txt": b"v2\n"}))
    mover.start()
    try:
        result = fetch(MOVING, endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    finally:
        mover.join()
        proxy.set_faults(Faults())
    assert result.ok and result.commit == old
    assert Path(result.target, "b.txt").read_bytes() == b"version 1\n"
    assert (tmp_path / "models--org--moving" / "refs" / "main").read_text() == old
    gets = [r.path for r in proxy.requests(f"/{MOVING}/resolve/")]
    assert gets and all(f"/resolve/{old}/" in p for p in gets)
    moved = fetch(MOVING, endpoint=proxy.endpoint, cache_dir=tmp_path, policy=FAST)
    assert moved.commit != old and Path(moved.target, "b.txt").read_bytes() == b"v2\n"


def test_branches_listing_shows_disagreements(hub: dict[str, Any]) -> None:
    built: BuiltRepo = hub["built"][REPO]
    listing = list_branches(REPO, endpoint=hub["olah"].endpoint)
    by_name = {r.name: r for r in listing.refs}
    assert list(by_name)[0] == "main" and set(by_name) == set(built.commits) | {"v1.0"}
    assert by_name["v1.0"].kind == "tag" and by_name["v1.0"].commit == built.commits["gptq-4bit-32g-actorder_True"]
    for name, ref in by_name.items():
        files = built.files["gptq-4bit-32g-actorder_True" if name == "v1.0" else name]
        assert (ref.file_count, ref.total_size) == (len(files), sum(i.size for i in files.values()))
        assert ref.commit == (built.tags.get(name) or built.commits[name])
    assert by_name["main"].status == "config only"
    assert by_name["gptq-4bit-32g-actorder_True"].status == "agrees"
    assert by_name["gptq-3bit--1g-actorder_True"].status == "agrees"
    bad = by_name["gptq-8bit-128g-actorder_False"]
    assert bad.status == "DISAGREES"
    assert {str(d) for d in bad.disagreements} == {
        "group_size: branch name says 128, quantize_config.json says 64",
        "group_size: branch name says 128, config.json says 64"}
    data = listing.to_dict()
    assert data["refs"][0]["name"] == "main" and any(not r["agrees"] for r in data["refs"])


def test_harness_builds_real_lfs_repos(hub: dict[str, Any], tmp_path: Path) -> None:
    built: BuiltRepo = hub["built"][REPO]
    info = built.files["main"]["model.safetensors"]
    obj = built.path / ".git" / "lfs" / "objects" / info.sha256[:2] / info.sha256[2:4] / info.sha256
    assert info.lfs and _sha256(obj) == info.sha256
    assert not built.files["main"]["config.json"].lfs
    again = build_git_repo(tmp_path / "m", REPO, sample_gptq_branches(), tags={"v1.0": "gptq-4bit-32g-actorder_True"})
    assert again.commits == built.commits and again.tags == built.tags, "builds are deterministic"
    with OlahServer(tmp_path / "m") as server:
        endpoint = server.endpoint
        assert list_branches(REPO, endpoint=endpoint, include_tags=False).refs
    with pytest.raises(McardError, match="cannot reach"):
        list_branches(REPO, endpoint=endpoint, policy=FAST)
