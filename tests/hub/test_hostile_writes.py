"""Nothing is written outside the target: symlinked bookkeeping, pre-placed partial and lock files, a hostile HF
cache, a full TMPDIR, a corrupt report folder (issue #14). The files come from the hostile Hub server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import run_cli_clean
from mcard.core.arch import tiny_config
from mcard.formats import gptq
from mcard.testing.hostile_hub import HostileHub, Sparse

REPO = "org/files"
STORAGE = "models--org--files"


def _variant() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        gptq.write_variant(Path(tmp), tiny_config())
        return {p.relative_to(tmp).as_posix(): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}


FILES = _variant()
CONFIG_ETAG = hashlib.sha1(b"blob %d\0" % len(FILES["config.json"]) + FILES["config.json"]).hexdigest()


@pytest.fixture(scope="module")
def hub() -> Iterator[HostileHub]:
    header = json.dumps({"w": {"dtype": "F16", "shape": [5_000_000], "data_offsets": [0, 10_000_000]}}).encode()
    big = Sparse(8 + len(header) + 10_000_000, ((0, len(header).to_bytes(8, "little") + header),))
    with HostileHub({REPO: {"main": FILES}, "org/big": {"main": {"model.safetensors": big}}}) as server:
        yield server


def _cli(hub: HostileHub, *args: object) -> tuple[int, str]:
    return run_cli_clean(*args, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "", "HF_HUB_OFFLINE": "0"})


def _untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    assert (outside / "precious").read_text() == "keep me"


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious").write_text("keep me")
    return folder


# -- 10. local-dir bookkeeping ----------------------------------------------------------------------------------
@pytest.mark.parametrize("link", [".cache", ".cache/huggingface/download"])
def test_symlinked_bookkeeping_folder_in_local_dir_is_refused(hub, tmp_path, outside, link):
    out = tmp_path / "out"
    (out / link).parent.mkdir(parents=True)
    (out / link).symlink_to(outside)
    code, text = _cli(hub, "fetch", REPO, "--local-dir", out)
    assert code == 2 and "refusing to write outside" in text
    _untouched(outside)


def test_pre_placed_incomplete_symlink_is_never_appended_to(hub, tmp_path, outside):
    out = tmp_path / "out"
    meta = out / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / f"config.json.{CONFIG_ETAG}.incomplete").symlink_to(outside / "precious")
    code, text = _cli(hub, "fetch", REPO, "config.json", "--local-dir", out)
    assert code == 2 and "symlink" in text
    _untouched(outside)


# -- 10. the HF cache: blobs, snapshots, .locks -----------------------------------------------------------------
@pytest.mark.parametrize("link", [f"{STORAGE}/blobs", f"{STORAGE}/snapshots", f".locks/{STORAGE}", ".locks"])
def test_hf_cache_folders_leading_out_of_the_cache_are_refused(hub, tmp_path, outside, link):
    cache = tmp_path / "cache"
    (cache / link).parent.mkdir(parents=True)
    (cache / link).symlink_to(outside)
    code, text = _cli(hub, "fetch", REPO, "--cache-dir", cache)
    assert code == 2 and "refusing to write outside" in text
    _untouched(outside)


def test_pre_placed_lock_symlink_is_never_truncated(hub, tmp_path, outside):
    cache = tmp_path / "cache"
    (cache / ".locks" / STORAGE).mkdir(parents=True)
    (cache / ".locks" / STORAGE / f"{CONFIG_ETAG}.lock").symlink_to(outside / "precious")
    code, text = _cli(hub, "fetch", REPO, "config.json", "--cache-dir", cache)
    assert code == 2 and "symlink" in text
    _untouched(outside)


def test_an_ordinary_fetch_still_works(hub, tmp_path):
    code, _ = _cli(hub, "fetch", REPO, "--cache-dir", tmp_path / "cache")
    assert code == 0
    code, _ = _cli(hub, "fetch", REPO, "--local-dir", tmp_path / "out")
    assert code == 0 and (tmp_path / "out" / "config.json").read_bytes() == FILES["config.json"]


# -- 11. a full TMPDIR during remote validate ----------------------------------------------------------------------
def _small_files_only() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the file system refuses files over 1 MiB
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as a write error (EFBIG), like ENOSPC, not a signal


def test_remote_validate_on_a_file_system_that_refuses_writes_is_one_line(hub, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "", "HF_HUB_OFFLINE": "0", "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "from mcard.cli import main; main()", "validate", "org/big:main"],
                          env=env, capture_output=True, text=True, timeout=120, preexec_fn=_small_files_only)
    assert proc.returncode in (1, 2), proc.stderr
    assert "cannot write the sparse mirror" in proc.stderr and "internal error" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- 11. a corrupt neighbouring record in the report folder --------------------------------------------------------
def test_corrupt_neighbouring_records_do_not_break_sync(hub, tmp_path):
    report = tmp_path / "report"
    (report / "variants").mkdir(parents=True)
    corrupt = {
        "not-json": "{nope", "a-list": "[1, 2]", "latest-not-a-table": '{"latest": 5}',
        "wrong-types": json.dumps({"latest": {"repo": "r", "variant": "x", "format": "gptq", "revision": "main",
                                              "seconds": "slow", "reason": 7}}),
        "deep": '{"latest": ' * 100_000 + "1" + "}" * 100_000,
    }
    for name, text in corrupt.items():
        (report / "variants" / f"{name}.json").write_text(text)
    entry = tmp_path / "e.toml"
    entry.write_text(f'[model]\nrepo = "{REPO}"\nname = "F"\nlicense = "mit"\n\n'
                     '[[variants]]\nformat = "gptq"\nbranch = "main"\nbits = 4\ngroup_size = 128\n')
    code, text = _cli(hub, "sync", entry, "--no-smoke", "--report", report, "--endpoint", hub.endpoint)
    summary = json.loads((report / "report.json").read_text())
    assert code == 0 and [v["variant"] for v in summary["variants"]] == ["main"]
    assert "| main | passed |" in (report / "report.md").read_text()
