"""mcard publish and sync --publish against the loopback Hub: write API + olah, read back by other clients."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants

from helpers import custom_entry
from mcard.core.errors import McardError, UnusableInput
from mcard.formats import gptq
from mcard.hub import fetch
from mcard.pipeline import demo
from mcard.pipeline.package import load_package, package
from mcard.pipeline.publish import publish
from mcard.pipeline.sync import PASSED, SyncOptions, sync
from mcard.testing.hub import LocalHub
from mcard.testing.hub_write import Account
from mcard.testing.hubserver import commit_files

# huggingface_hub's own LFS upload passes the file as `data=` (its code, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
ALICE, BOB = "tok-alice-0123456789", "tok-bob-0123456789"
GPTQ = "mcard-demo/tiny-llama-GPTQ"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    saved = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True  # for this file's own client calls; mcard publish sets it itself
    with LocalHub(tmp_path_factory.mktemp("hub"), ALICE, user="alice", namespaces=("alice", "mcard-demo"),
                  accounts={BOB: Account("bob", ("bob",))}) as server:
        yield server
    constants.HF_HUB_DISABLE_XET = saved


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoRepos:
    return demo.build(tmp_path_factory.mktemp("demo"))


@pytest.fixture(autouse=True)
def _clean_faults(hub: LocalHub) -> Iterator[None]:
    yield
    hub.reset_faults()


def _env(hub: LocalHub, token: str | None = ALICE, home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, PYTHONDONTWRITEBYTECODE="1", HF_HOME=str(home or "/nonexistent-hf-home"))
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _mcard(hub: LocalHub, *args: str, token: str | None = ALICE, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcard.cli", *args], capture_output=True, text=True,
                          env=_env(hub, token), timeout=180, **kw)


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert ALICE not in run.stderr + run.stdout and BOB not in run.stderr + run.stdout
    return run.stderr


def _api(hub: LocalHub, token: str = ALICE) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=token)


def _refs(hub: LocalHub, repo: str) -> dict[str, str]:
    return {b.name: b.target_commit for b in _api(hub).list_repo_refs(repo).branches}


@pytest.fixture(scope="module")
def published(hub: LocalHub, built: demo.DemoRepos, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's GPTQ entry packaged and published once with the CLI."""
    out = tmp_path_factory.mktemp("pkg") / "gptq"
    package(built.registry / "tiny-llama-gptq.toml", built.mirrors.parent / "staging" / "gptq", out)
    hub.stats.clear()
    run = _mcard(hub, "publish", str(built.registry / "tiny-llama-gptq.toml"), "--packaged", str(out), "--create",
                 "--json")
    assert run.returncode == 0, run.stderr
    assert ALICE not in run.stdout + run.stderr
    return {"out": out, "result": json.loads(run.stdout), "lfs": dict(hub.stats.lfs_bytes)}


def test_published_branches_read_back_through_olah_fetch_and_hf_download(hub: LocalHub, published: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    pkg, result = load_package(published["out"]), published["result"]
    assert result["ok"] and result["repo_created"] and [b["branch"] for b in result["branches"]] == list(demo.GPTQ_BRANCHES)
    refs = _refs(hub, GPTQ)
    root = _api(hub).list_repo_commits(GPTQ, revision="main")[-1]
    assert root.title == "initial commit"
    for b in result["branches"]:
        assert b["verified"] and refs[b["branch"]] == b["commit"]
        statuses = {f["path"]: f["status"] for f in b["files"]}
        assert statuses.pop(".gitattributes") == "unchanged" and set(statuses.values()) == {"added"}
        assert b["uploaded_bytes"] == sum(f["size"] for f in b["files"] if f["status"] == "added")
        history = _api(hub).list_repo_commits(GPTQ, revision=b["branch"])
        assert history[-1].commit_id == root.commit_id and len(history) == 2  # from main's first commit
        assert history[0].title.startswith("mcard ") and "GPTQ 4-bit" in history[0].title
    weights = {f.sha256 for b in pkg.branches for f in b.files if f.path == "model.safetensors"}
    assert set(published["lfs"]) == weights  # each weights file sent once, nothing else went through LFS
    branch = "gptq-4bit-32g-actorder_True"
    want = {f.path: f.sha256 for f in pkg.branch(branch).files}
    got = fetch(f"{GPTQ}:{branch}", endpoint=hub.endpoint, cache_dir=tmp_path / "mcard")
    assert {f.path: f.sha256 for f in got.files} == want
    hf = Path(sys.executable).with_name("hf")
    run = subprocess.run([str(hf), "download", GPTQ, "--revision", branch, "--local-dir", str(tmp_path / "hf")],
                         capture_output=True, text=True, env=_env(hub, None), timeout=120)
    assert run.returncode == 0, run.stderr
    assert {p: hashlib.sha256((tmp_path / "hf" / p).read_bytes()).hexdigest() for p in want} == want


def test_rerun_sends_nothing_and_a_changed_branch_sends_only_its_files(hub: LocalHub, published: dict[str, Any],
                                                                        built: demo.DemoRepos, tmp_path: Path) -> None:
    before = _refs(hub, GPTQ)
    hub.stats.clear()
    again = publish(published["out"], endpoint=hub.endpoint, token=ALICE)
    assert again.ok and again.uploaded_bytes == 0
    assert hub.stats.lfs_total == 0 and not hub.stats.commits and _refs(hub, GPTQ) == before
    assert not [r for r in hub.stats.log if r[0] == "PUT" or "/commit/" in r[1] or "/preupload/" in r[1]]

    source = tmp_path / "gptq"
    for name, (bits, group, act) in demo.GPTQ_BRANCHES.items():  # same outputs, one branch re-quantized
        seed = 99 if name == "gptq-4bit-64g-actorder_False" else list(demo.GPTQ_BRANCHES).index(name)
        gptq.write_variant(source / name, demo.tiny_config(), bits=bits, group_size=group, desc_act=act, seed=seed)
    pkg = package(built.registry / "tiny-llama-gptq.toml", source, tmp_path / "out")
    changed = pkg.branch("gptq-4bit-64g-actorder_False")
    weights = next(f for f in changed.files if f.path == "model.safetensors")
    hub.stats.clear()
    result = publish(pkg, endpoint=hub.endpoint, token=ALICE)
    by_branch = {b.branch: b for b in result.branches}
    assert [b for b in by_branch if by_branch[b].commit != by_branch[b].head] == ["gptq-4bit-64g-actorder_False"]
    assert {f.path for f in by_branch["gptq-4bit-64g-actorder_False"].files if f.status == "updated"} == {"model.safetensors"}
    assert hub.stats.lfs_bytes == {weights.sha256: weights.size} and result.uploaded_bytes == weights.size
    assert [c[1] for c in hub.stats.commits] == ["gptq-4bit-64g-actorder_False"]


def test_dry_run_writes_nothing_and_delete_extra_deletes(hub: LocalHub, published: dict[str, Any],
                                                         built: demo.DemoRepos) -> None:
    _api(hub).create_commit("mcard-demo/tiny-llama-GPTQ", [CommitOperationAdd("notes.txt", b"by hand\n")],
                            commit_message="a file mcard does not package", revision="gptq-4bit-32g-actorder_True")
    entry = str(built.registry / "tiny-llama-gptq.toml")
    hub.stats.clear()
    dry = _mcard(hub, "publish", entry, "--packaged", str(published["out"]), "--dry-run", "--delete-extra",
                 "--branch", "gptq-4bit-32g-actorder_True")
    assert dry.returncode == 0, dry.stderr
    assert "deleted   notes.txt" in dry.stdout and "dry run" in dry.stdout
    assert not [r for r in hub.stats.log if r[0] in ("PUT", "DELETE") or "/commit/" in r[1] or "/branch/" in r[1]]
    kept = publish(published["out"], endpoint=hub.endpoint, token=ALICE, branches=["gptq-4bit-32g-actorder_True"])
    assert [f.status for f in kept.branches[0].files if f.path == "notes.txt"] == ["kept"] and not kept.uploaded_bytes
    gone = publish(published["out"], endpoint=hub.endpoint, token=ALICE, delete_extra=True)
    assert gone.ok and [f.path for b in gone.branches for f in b.files if f.status == "deleted"] == ["notes.txt"]
    tree = _api(hub).list_repo_tree(GPTQ, revision="gptq-4bit-32g-actorder_True")
    assert "notes.txt" not in {f.path for f in tree}


def test_refusals_come_before_any_upload(hub: LocalHub, published: dict[str, Any], built: demo.DemoRepos,
                                         tmp_path: Path) -> None:
    entry, out = str(built.registry / "tiny-llama-gptq.toml"), str(published["out"])
    _api(hub).create_repo("alice/unrelated")
    main_before = _refs(hub, "alice/unrelated")["main"]
    commit_files(hub.root / "models" / "alice" / "unrelated", "gptq-4bit-32g-actorder_True",
                 {"other.txt": b"another project\n"})  # a branch pushed with its own root commit
    _api(hub, BOB).create_repo("bob/model")
    hub.stats.clear()
    unrelated = _mcard(hub, "publish", entry, "--packaged", out, "--repo", "alice/unrelated")
    assert unrelated.returncode == 1 and "unrelated history" in _one_line(unrelated)
    assert _refs(hub, "alice/unrelated")["main"] == main_before  # main was not touched either
    not_mine = _mcard(hub, "publish", entry, "--packaged", out, "--repo", "bob/model", "--json")
    assert not_mine.returncode == 1 and "not allowed (403)" in _one_line(not_mine)
    assert json.loads(not_mine.stdout) == {"ok": False, "exit_code": 1, "error": not_mine.stderr.strip()[7:]}
    with pytest.raises(UnusableInput, match="pass --create"):
        publish(out, repo="alice/nowhere", endpoint=hub.endpoint, token=ALICE)
    with pytest.raises(UnusableInput, match="not a valid repo id"):
        publish(out, repo="alice/no spaces", endpoint=hub.endpoint, token=ALICE)
    dropped = tmp_path / "pkg"
    shutil.copytree(out, dropped)
    (dropped / "main" / "optimizer.pt").write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(UnusableInput, match="pickle"):
        publish(dropped, endpoint=hub.endpoint, token=ALICE)
    no_token = _mcard(hub, "publish", entry, "--packaged", out, token=None)
    assert no_token.returncode == 2 and "no Hub token" in _one_line(no_token)
    rejected = _mcard(hub, "publish", entry, "--packaged", out, token="hf_wrong_secret_value")
    assert rejected.returncode == 1 and "rejected the token from HF_TOKEN" in _one_line(rejected)
    assert "hf_wrong_secret_value" not in rejected.stderr + rejected.stdout
    assert not [r for r in hub.stats.log if r[0] == "PUT" or "/commit/" in r[1] or "/branch/" in r[1]
                or "/preupload/" in r[1] or r[1].endswith("/objects/batch")]


def _wait(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the server")
        time.sleep(0.02)


def test_kill_9_mid_upload_then_rerun_sends_only_what_is_missing(hub: LocalHub, tmp_path: Path, tiny_cfg: dict) -> None:
    # The object to interrupt is far larger than the loopback socket buffers, so the client is really killed
    # while sending it (a small one would sit whole in the kernel's buffers and arrive after the kill).
    pkg = package(custom_entry(tmp_path, tiny_cfg, tokenizer_bytes=40_000_000), out=tmp_path / "out",
                  max_shard_size=250_000)
    shards = [f for f in pkg.branches[0].files if f.lfs]
    victim = next(f for f in shards if f.path == "tokenizer.json")
    assert len(shards) >= 4 and victim.size > 40_000_000
    hub.faults.stall_upload_after, hub.faults.stall_oid = 1 << 20, victim.sha256
    hub.stats.clear()
    proc = subprocess.Popen([sys.executable, "-m", "mcard.cli", "publish", str(tmp_path / "entry.toml"),
                             "--packaged", str(tmp_path / "out"), "--create", "--repo", "alice/resume"],
                            env=_env(hub), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hub.faults.stalled.wait(timeout=60), "the upload never reached the stall"
        _wait(lambda: len(hub.stats.objects_stored) == len(shards) - 1)  # every other object is stored
    finally:
        proc.kill()  # SIGKILL: no cleanup in the client
        proc.wait()
    hub.faults.release.set()
    store = hub.root / "models" / "alice" / "resume" / ".git" / "lfs"
    _wait(lambda: not any((store / "tmp").iterdir()))  # the server dropped the half-received object
    assert not (store / "objects" / victim.sha256[:2] / victim.sha256[2:4] / victim.sha256).exists()
    assert not hub.stats.commits and [f.path for f in _api(hub).list_repo_tree("alice/resume")] == [".gitattributes"]

    hub.reset_faults()
    hub.stats.clear()
    result = publish(tmp_path / "out", repo="alice/resume", endpoint=hub.endpoint, token=ALICE)
    assert result.ok and hub.stats.lfs_bytes == {victim.sha256: victim.size}  # finished objects not sent again
    lfs = {f.path for f in shards}
    small = sum(f.size for f in result.branches[0].files if f.path not in lfs and f.status != "unchanged")
    assert result.uploaded_bytes == victim.size + small and not hub.stats.errors


def test_a_commit_cut_by_the_network_lands_whole_or_not_at_all(hub: LocalHub, tmp_path: Path, tiny_cfg: dict) -> None:
    package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out")
    args = ["publish", str(tmp_path / "entry.toml"), "--packaged", str(tmp_path / "out"), "--create"]
    hub.faults.drop_commit = "before-ref"
    cut = _mcard(hub, *args, "--repo", "alice/cut-before")
    assert cut.returncode == 1 and "network failure" in _one_line(cut)
    assert [f.path for f in _api(hub).list_repo_tree("alice/cut-before")] == [".gitattributes"]  # not half-committed
    hub.stats.clear()
    redo = publish(tmp_path / "out", repo="alice/cut-before", endpoint=hub.endpoint, token=ALICE)
    assert redo.ok and hub.stats.lfs_total == 0 and len(hub.stats.commits) == 1  # the objects were kept

    hub.reset_faults()
    hub.faults.drop_commit = "after-ref"  # the commit lands, its answer is lost
    lost = _mcard(hub, *args, "--repo", "alice/cut-after")
    assert lost.returncode == 1 and "network failure" in _one_line(lost)
    landed = _refs(hub, "alice/cut-after")["main"]
    hub.stats.clear()
    check = publish(tmp_path / "out", repo="alice/cut-after", endpoint=hub.endpoint, token=ALICE)
    assert check.ok and check.branches[0].commit == landed and not hub.stats.commits  # no second commit


def test_read_back_catches_a_hub_that_stored_other_bytes(hub: LocalHub, tmp_path: Path, tiny_cfg: dict) -> None:
    package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out")
    hub.faults.alter_file = "config.json"
    run = _mcard(hub, "publish", str(tmp_path / "entry.toml"), "--packaged", str(tmp_path / "out"), "--create",
                 "--repo", "alice/altered")
    assert run.returncode == 1 and "config.json" in _one_line(run) and "the Hub lists" in run.stderr


def test_sync_publish_packages_smokes_publishes_and_fetches_back(hub: LocalHub, built: demo.DemoRepos,
                                                                 tmp_path: Path) -> None:
    options = SyncOptions(publish=True, from_dir=built.mirrors.parent / "staging" / "gguf", create=True,
                          endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path / "cache", device="cpu",
                          report_dir=tmp_path / "report", package_dir=tmp_path / "pkg")
    [first] = sync(built.registry / "tiny-llama-gguf.toml", options)
    assert first.ok and {r.status for r in first.records} == {PASSED}
    for r in first.records:
        assert r.publish == "published" and r.uploaded_bytes and r.validate == "ok"
        assert r.smoke in ("reference-only", "n/a") and len(r.commit or "") == 40
        assert hashlib.sha256(Path(r.local_path).read_bytes()).hexdigest() == hashlib.sha256(
            (tmp_path / "pkg" / "main" / r.variant).read_bytes()).hexdigest()
    record = json.loads((tmp_path / "report" / "variants" / "tiny-llama.Q4_0.gguf.json").read_text())
    assert record["last_pass"]["publish"] == "published"
    [second] = sync(built.registry / "tiny-llama-gguf.toml", options)
    assert {(r.status, r.publish, r.uploaded_bytes) for r in second.records} == {(PASSED, "unchanged", 0)}


# -- issue #14: publishing runs inside mcard's net session (the token rule, timeouts, the run deadline) ----------

def test_an_lfs_upload_url_on_another_host_gets_no_token_and_the_upload_lands(hub: LocalHub, tmp_path: Path,
                                                                              tiny_cfg: dict) -> None:
    from mcard.testing.hostile_hub import TokenRecorder

    package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out", max_shard_size=300_000)
    with TokenRecorder(forward=hub.endpoint) as storage:  # pre-signed storage URLs on another origin
        hub.faults.upload_host = storage.endpoint
        hub.stats.clear()
        result = publish(tmp_path / "out", repo="alice/storage-elsewhere", endpoint=hub.endpoint, token=ALICE,
                         create=True)
    puts = [path for method, path, _auth in storage.seen if method == "PUT"]
    assert result.ok and result.branches[0].verified and puts and all(p.startswith("/lfs/upload/") for p in puts)
    assert storage.seen_tokens() == [] and len(hub.stats.objects_stored) == len(puts)


def test_an_lfs_verify_url_on_another_host_never_receives_the_token(hub: LocalHub, tmp_path: Path,
                                                                    tiny_cfg: dict) -> None:
    from mcard.testing.hostile_hub import TokenRecorder

    package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out")
    with TokenRecorder(forward=hub.endpoint) as other:
        hub.faults.verify_host = other.endpoint  # huggingface_hub sends its token to whatever verify URL it gets
        try:
            publish(tmp_path / "out", repo="alice/verify-elsewhere", endpoint=hub.endpoint, token=ALICE, create=True)
            error = None
        except McardError as exc:  # the Hub's verify refuses a request without the token: publish stops there
            error = exc
    assert [m for m, path, _a in other.seen if path.startswith("/lfs/verify/")] and other.seen_tokens() == []
    assert error is not None and error.exit_code == 1 and "asked for a token" in str(error) and ALICE not in str(error)
    assert not hub.stats.commits or all(repo != "alice/verify-elsewhere" for repo, _b, _c in hub.stats.commits)


def test_a_stalled_upload_ends_at_the_run_deadline(hub: LocalHub, tmp_path: Path, tiny_cfg: dict) -> None:
    package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out")
    hub.faults.stall_upload_after = 1  # the server stops reading every upload (until the test ends)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "mcard.cli", "publish", str(tmp_path / "entry.toml"), "--packaged",
                          str(tmp_path / "out"), "--create", "--repo", "alice/stalled"], capture_output=True,
                         text=True, env={**_env(hub), "MCARD_DEADLINE": "4"}, timeout=90)
    last = run.stderr.strip().splitlines()[-1]  # after huggingface_hub's own retry warnings
    assert run.returncode == 1 and last.startswith("mcard: ") and "deadline" in last, run.stderr
    assert "Traceback" not in run.stderr and ALICE not in run.stderr + run.stdout and time.monotonic() - started < 45


def test_publish_takes_the_registry_root_for_a_source_outside_the_entry_folder(hub: LocalHub, tmp_path: Path,
                                                                                tiny_cfg: dict) -> None:
    (tmp_path / "reg").mkdir()
    entry = custom_entry(tmp_path / "reg", tiny_cfg)
    shutil.move(tmp_path / "reg" / "quantized", tmp_path / "quantized")
    entry.write_text(entry.read_text().replace('source = "quantized/q4"', 'source = "../quantized/q4"'))
    args = ["publish", str(entry), "--from", str(tmp_path / "unused"), "--out", str(tmp_path / "out"), "--dry-run"]
    refused = _mcard(hub, *args)
    assert refused.returncode == 2 and "variants[0].source" in _one_line(refused)
    run = _mcard(hub, *args, "--registry-root", str(tmp_path))
    assert run.returncode == 0 and "would send" in run.stdout, run.stderr


class _Recorder:
    """A Reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.begun: list[tuple[int, int]] = []
        self.sent: dict[str, int] = {}
        self.done: list[str] = []

    def begin(self, total_bytes: int, files: int) -> None:
        self.begun.append((total_bytes, files))

    def file_started(self, path: str, size: int) -> None:
        self.sent.setdefault(path, 0)

    def file_position(self, path: str, position: int) -> None:
        self.sent[path] = position

    def advance(self, path: str, nbytes: int) -> None:
        self.sent[path] += nbytes

    def file_done(self, path: str, status: str) -> None:
        self.done.append(path)

    def end(self) -> None:
        pass


def test_progress_counts_every_uploaded_lfs_byte_and_nothing_on_a_rerun(hub: LocalHub, tmp_path: Path,
                                                                        tiny_cfg: dict) -> None:
    pkg = package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out", max_shard_size=250_000)
    lfs = {f.path: f.size for f in pkg.branches[0].files if f.lfs}
    assert len(lfs) >= 3
    first = _Recorder()
    assert publish(tmp_path / "out", repo="alice/progress", create=True, endpoint=hub.endpoint, token=ALICE,
                   reporter=first).ok
    assert first.begun == [(sum(lfs.values()), len(lfs))] and first.sent == lfs and sorted(first.done) == sorted(lfs)
    again = _Recorder()
    assert publish(tmp_path / "out", repo="alice/progress", endpoint=hub.endpoint, token=ALICE, reporter=again).ok
    assert again.sent == {} and again.begun == []  # unchanged: no commit, nothing read for an upload


def test_a_terminal_shows_upload_bars_and_a_pipe_does_not(hub: LocalHub, tmp_path: Path, tiny_cfg: dict) -> None:
    import pty
    import select

    pkg = package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out", max_shard_size=250_000)
    lfs = [f for f in pkg.branches[0].files if f.lfs]
    args = [sys.executable, "-m", "mcard.cli", "publish", str(tmp_path / "entry.toml"), "--packaged",
            str(tmp_path / "out"), "--create"]
    master, slave = pty.openpty()
    proc = subprocess.Popen([*args, "--repo", "alice/bars"], stdin=slave, stdout=slave, stderr=slave,
                            env={**_env(hub), "COLUMNS": "160"})
    os.close(slave)
    screen = b""
    while select.select([master], [], [], 120)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    total = sum(f.size for f in lfs)
    assert f"total ({len(lfs)} files)" in text and all(f.path in text for f in lfs)
    done = f"{total / 1000:.1f}/{total / 1000:.1f} kB"  # rich's DownloadColumn, the last frame of the overall bar
    assert done in text and "B/s" in text and ALICE not in text
    piped = _mcard(hub, "publish", str(tmp_path / "entry.toml"), "--packaged", str(tmp_path / "out"), "--create",
                   "--repo", "alice/no-bars")
    assert piped.returncode == 0 and "total (" not in piped.stderr + piped.stdout and "━" not in piped.stderr
