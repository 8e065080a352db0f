"""The typer commands (mcard/cli/hub.py) on a throwaway app, in-process and as real subprocesses."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from faultproxy import FaultProxy, Faults
from rich.console import Console

from helpers import run_cli
from mcard.cli import hub as cli_hub
from mcard.hub import list_branches
from mcard.testing.hubserver import OlahServer, build_git_repo, safetensors_bytes, sample_gptq_branches

REPO = "TheBloke/Tiny-GPTQ"
SLOW = "org/slow"
TOKEN = "hf_SeCrEtTokenValue123"
# The child stands for `mcard` started from a terminal, where Ctrl-C raises KeyboardInterrupt. It sets
# that handler itself: an inherited "ignore SIGINT" (the test run started as a background job) would
# otherwise make it ignore the interrupt the test sends and finish the download (exit 0, not 130).
APP = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
       "import typer; from mcard.cli import hub as cli_hub; app = typer.Typer(); "
       "app.command('branches')(cli_hub.branches); app.command('fetch')(cli_hub.fetch); app()")

app = typer.Typer()
app.command("branches")(cli_hub.branches)
app.command("fetch")(cli_hub.fetch)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cli")
    built = build_git_repo(root / "m", REPO, sample_gptq_branches(16 * 1024))
    build_git_repo(root / "m", "org/pickles", {"main": {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04K."}})
    slow = build_git_repo(root / "m", SLOW, {"main": {"w.safetensors": safetensors_bytes(2_000_000, 3)}})
    with OlahServer(root / "m") as server, FaultProxy(server.endpoint) as proxy:
        yield {"olah": server, "proxy": proxy, "built": built, "slow": slow}


def _run(args: list[str], endpoint: str, **env: str) -> Any:
    return run_cli(*args, env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", **env})


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_fetch_json_summary(hub: dict[str, Any], tmp_path: Path) -> None:
    res = _run(["fetch", REPO, "--json", "--cache-dir", str(tmp_path)], hub["olah"].endpoint)
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["repo"], data["revision"], data["commit"], data["ok"]) == (
        REPO, "main", hub["built"].commits["main"], True)
    for f in data["files"]:
        assert set(f) >= {"path", "size", "sha256", "status", "local_path"} and f["status"] == "downloaded"
        assert Path(f["local_path"]).read_bytes().__len__() == f["size"]


def test_fetch_prints_the_folder_and_a_summary(hub: dict[str, Any], tmp_path: Path) -> None:
    res = _run(["fetch", f"{REPO}:gptq-4bit-32g-actorder_True", "--cache-dir", str(tmp_path)], hub["olah"].endpoint)
    assert res.exit_code == 0
    (folder,) = _lines(res.stdout)
    assert Path(folder, "quantize_config.json").is_file()
    assert "files" in res.stderr and "downloaded" in res.stderr
    quiet = _run(["fetch", f"{REPO}:gptq-4bit-32g-actorder_True", "-q", "--cache-dir", str(tmp_path)],
                 hub["olah"].endpoint)
    assert _lines(quiet.stdout) == [folder] and quiet.stderr == ""


def test_dry_run_prints_the_plan(hub: dict[str, Any], tmp_path: Path) -> None:
    res = _run(["fetch", REPO, "--dry-run", "--include", "*.json", "--cache-dir", str(tmp_path / "c")],
               hub["olah"].endpoint)
    assert res.exit_code == 0 and not (tmp_path / "c").exists()
    lines = _lines(res.stdout)
    assert [line.split("\t")[0] for line in lines[:-1]] == ["config.json", "quantize_config.json",
                                                           "tokenizer_config.json"]
    assert all(line.endswith("\tdownload") for line in lines[:-1]) and lines[-1].startswith("total: 3 files")


@pytest.mark.parametrize("args, code, message", [
    (["fetch", "nobody/nothing"], 2, "mcard: nobody/nothing: repo not found on "),
    (["fetch", f"{REPO}:nope"], 2, "mcard: TheBloke/Tiny-GPTQ: no branch, tag or commit 'nope'; branches: "),
    (["fetch", REPO, "nope.json"], 2, "mcard: TheBloke/Tiny-GPTQ@main (commit "),
    (["fetch", f"{REPO}:main", "--revision", "v2"], 2, "mcard: TheBloke/Tiny-GPTQ:main names revision 'main'"),
    (["fetch", "org/pickles"], 2, "mcard: org/pickles@main (commit "),
    (["branches", "../etc"], 2, "mcard: not a Hub repo id"),
    (["branches", "nobody/nothing", "--json"], 2, "mcard: nobody/nothing: repo not found"),
])
def test_errors_are_one_line_with_exit_codes(hub: dict[str, Any], tmp_path: Path, args: list[str], code: int,
                                             message: str) -> None:
    res = _run([*args, *(["--cache-dir", str(tmp_path)] if args[0] == "fetch" else [])], hub["olah"].endpoint)
    assert res.exit_code == code
    (line,) = _lines(res.stderr)
    assert line.startswith(message)
    if "--json" in args:
        assert json.loads(res.stdout)["exit_code"] == code


def test_verification_failure_exits_1_naming_the_file(hub: dict[str, Any], tmp_path: Path) -> None:
    proxy: FaultProxy = hub["proxy"]
    proxy.set_faults(Faults(match="model.safetensors", corrupt_offset=100))
    try:
        res = _run(["fetch", REPO, "--json", "--cache-dir", str(tmp_path)], proxy.endpoint)
    finally:
        proxy.set_faults(Faults())
    assert res.exit_code == 1
    expected = hub["built"].files["main"]["model.safetensors"].sha256
    (line,) = _lines(res.stderr)
    assert line.startswith(f"mcard: model.safetensors: sha256 mismatch: expected {expected}, got ")
    data = json.loads(res.stdout)
    assert not data["ok"] and {f["path"]: f["status"] for f in data["files"]}["model.safetensors"] == "failed"


def test_token_is_sent_but_never_shown(hub: dict[str, Any], tmp_path: Path) -> None:
    proxy: FaultProxy = hub["proxy"]
    proxy.clear_log()
    ok = _run(["fetch", REPO, "--json", "--cache-dir", str(tmp_path)], proxy.endpoint, HF_TOKEN=TOKEN)
    bad = _run(["fetch", f"{REPO}:nope", "--cache-dir", str(tmp_path)], proxy.endpoint, HF_TOKEN=TOKEN)
    assert ok.exit_code == 0 and bad.exit_code == 2
    downloads = [r for r in proxy.requests("/resolve/") if r.method == "GET"]
    assert downloads and all(r.authorization == f"Bearer {TOKEN}" for r in downloads)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in proxy.requests("/api/"))
    for res in (ok, bad):
        assert TOKEN not in res.stdout + res.stderr


def test_branches_outputs(hub: dict[str, Any]) -> None:
    """A branch that disagrees with its config fails the check (exit 1, #10 item 8)."""
    res = _run(["branches", REPO, "--json"], hub["olah"].endpoint)
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    refs = {r["name"]: r for r in doc["refs"]}
    assert doc["ok"] is False and refs["gptq-8bit-128g-actorder_False"]["status"] == "DISAGREES"
    assert refs["gptq-4bit-32g-actorder_True"]["name_params"]["group_size"] == 32
    bits = refs["gptq-4bit-32g-actorder_True"]["name_params"]["bits"]
    assert bits == 4 and type(bits) is int
    assert type(refs["gptq-8bit-128g-actorder_False"]["config_params"]["quantize_config.json"]["bits"]) is int
    plain = _run(["branches", REPO], hub["olah"].endpoint)
    assert plain.exit_code == 1
    lines = plain.stdout.splitlines()  # one tab-separated line per ref, nothing else
    assert [line.split("\t")[0] for line in lines] == list(refs) and all(line.count("\t") == 7 for line in lines)
    assert lines[0].split("\t")[:2] == ["main", "branch"]
    assert (f"mcard: {REPO}@gptq-8bit-128g-actorder_False: group_size: branch name says 128, quantize_config.json "
            "says 64") in plain.stderr.splitlines()
    buffer = io.StringIO()
    cli_hub._print_branches_table(list_branches(REPO, endpoint=hub["olah"].endpoint),
                                  Console(file=buffer, width=200, color_system=None))
    table = buffer.getvalue()
    assert "DISAGREES" in table and "gptq 4bit g32 act-order" in table
    assert "group_size: branch name says 128, config.json says 64" in table


def test_rich_progress_reporter_runs(hub: dict[str, Any], tmp_path: Path) -> None:
    from mcard.hub import fetch
    from mcard.hub.progress import RichReporter

    buffer = io.StringIO()
    result = fetch(REPO, endpoint=hub["olah"].endpoint, cache_dir=tmp_path, reporter=RichReporter(stream=buffer))
    assert result.ok and "total (6 files)" in buffer.getvalue()


def _subprocess(args: list[str], endpoint: str, cache: Path, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache)}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.Popen([sys.executable, "-c", APP, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_real_process_no_traceback(hub: dict[str, Any], tmp_path: Path) -> None:
    proc = _subprocess(["fetch", "nobody/nothing"], hub["olah"].endpoint, tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err and len(_lines(err)) == 1


@contextlib.contextmanager
def _sigint(disposition: str) -> Iterator[None]:
    """The SIGINT disposition children inherit: a shell without job control starts background
    jobs (``pytest ... &``, CI scripts) with SIGINT ignored, and Python keeps an ignored SIGINT
    ignored, so such a child never sees Ctrl-C."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if disposition == "ignored" else signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("parent_sigint", ["default", "ignored"])
def test_interrupted_process_resumes_in_the_next_run(hub: dict[str, Any], tmp_path: Path, parent_sigint: str) -> None:
    proxy: FaultProxy = hub["proxy"]
    sha = hub["slow"].files["main"]["w.safetensors"].sha256
    size = hub["slow"].files["main"]["w.safetensors"].size
    partial = tmp_path / "models--org--slow" / "blobs" / f"{sha}.incomplete"
    proxy.set_faults(Faults(match="w.safetensors", honour_range=True, chunk_delay=0.05))
    try:
        with _sigint(parent_sigint):
            proc = _subprocess(["fetch", SLOW], proxy.endpoint, tmp_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 200_000):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proxy.set_faults(Faults(honour_range=True))
    assert proc.returncode == 130 and "interrupted; partial downloads are kept" in err and "Traceback" not in err
    kept = partial.stat().st_size
    assert 0 < kept < size
    proxy.clear_log()
    proc = _subprocess(["fetch", SLOW, "--json"], proxy.endpoint, tmp_path)
    out, err = proc.communicate(timeout=60)
    proxy.set_faults(Faults())
    assert proc.returncode == 0, err
    entry = {f["path"]: f for f in json.loads(out)["files"]}["w.safetensors"]
    assert (entry["status"], entry["resumed_from"], entry["sha256"]) == ("resumed", kept, sha)
    assert proxy.bytes_sent("w.safetensors") == size - kept
