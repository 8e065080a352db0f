"""``mcard validate REPO[:BRANCH]``: validating a Hub revision from byte ranges, against olah on loopback."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from faultproxy import FaultProxy, Faults

from helpers import FIXTURES, run_cli
from mcard.core.arch import tiny_config
from mcard.core.validate import inspect
from mcard.core.variant import Variant
from mcard.formats import bnb, ggml, gguf, gptq
from mcard.hub.remote_validate import coalesce, inspect_remote
from mcard.testing.hubserver import OlahServer, build_git_repo

REPO = "org/tiny-GPTQ"
TOKEN = "hf_secret_token_never_shown"


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote")
    cfg = tiny_config()
    local: dict[str, Path] = {}
    branches: dict[str, dict[str, Path]] = {}

    def add(name: str, folder: Path) -> None:
        local[name], branches[name] = folder, _files(folder)

    gguf_dir = tmp / "gguf"
    gguf_dir.mkdir()
    gguf.write_variant(gguf_dir / "tiny.Q4_K_M.gguf", cfg, ftype="Q4_K_M")
    (gguf_dir / "README.md").write_text("# tiny\n")
    add("main", gguf_dir)

    gptq.write_variant(tmp / "good", cfg, bits=4, group_size=32, desc_act=True, seed=1)
    add("gptq-4bit-32g-actorder_True", tmp / "good")

    trunc = tmp / "trunc"
    gptq.write_variant(trunc, cfg, bits=4, group_size=128, seed=2)
    weights = next(trunc.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4096])
    add("gptq-4bit-128g-truncated", trunc)

    wrong = tmp / "wrong"
    gptq.write_variant(wrong, cfg, bits=4, group_size=32, seed=3)
    qc = json.loads((wrong / "quantize_config.json").read_text())
    qc["group_size"] = 128
    (wrong / "quantize_config.json").write_text(json.dumps(qc))
    add("gptq-4bit-32g-wrongconfig", wrong)

    tgguf = tmp / "tgguf"
    tgguf.mkdir()
    data = (gguf_dir / "tiny.Q4_K_M.gguf").read_bytes()
    (tgguf / "tiny.Q4_K_M.gguf").write_bytes(data[: len(data) - 10_000])
    add("gguf-truncated", tgguf)

    big = tmp / "big"  # weights of a few MB: the reads must be a small part of them
    gptq.write_variant(big, tiny_config(hidden_size=1024, intermediate_size=2048, num_hidden_layers=1),
                       bits=4, group_size=128, seed=4)
    add("gptq-big", big)

    legacy = tmp / "ggml"
    legacy.mkdir()
    ggml.write_variant(legacy / "tiny.ggmlv3.q4_0.bin", tiny_config(num_key_value_heads=4, intermediate_size=768),
                       ftype="q4_0")
    add("ggml", legacy)

    pick = tmp / "pickle"
    pick.mkdir()
    with zipfile.ZipFile(pick / "pytorch_model.bin", "w") as zf:  # a torch.save-shaped zip, never unpickled
        zf.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nq\x00.")
        zf.writestr("archive/data/0", bytes(200_000))
    add("pickle", pick)

    bnb_dir = tmp / "bnb"
    bnb.write_variant(bnb_dir, cfg, quant_type="nf4", double_quant=True)
    add("bnb", bnb_dir)

    shards = tmp / "gguf-shards"  # written by llama.cpp's gguf-split (tests/fixtures/llamacpp)
    shards.mkdir()
    for p in sorted((FIXTURES / "llamacpp" / "smol576").glob("*-of-*.gguf")):
        (shards / p.name).write_bytes(p.read_bytes())
    add("gguf-shards", shards)

    parts = tmp / "gguf-parts"  # the older raw byte parts, joined with cat
    parts.mkdir()
    blob = (gguf_dir / "tiny.Q4_K_M.gguf").read_bytes()
    for i, letter in enumerate("abc"):
        (parts / f"tiny.Q4_K_M.gguf-split-{letter}").write_bytes(blob[i * (len(blob) // 3 + 1):(i + 1) * (len(blob) // 3 + 1)])
    add("gguf-parts", parts)

    many = tmp / "gguf-many"  # a folder of quant files, as GGUF repos publish them
    many.mkdir()
    for t in ("Q4_0", "Q8_0"):
        gguf.write_variant(many / f"tiny.{t}.gguf", cfg, ftype=t)
    add("gguf-many", many)

    build_git_repo(tmp / "mirrors", REPO, branches)
    with OlahServer(tmp / "mirrors") as server:
        yield server, local


def _same_findings(remote, local) -> None:
    assert [f.to_dict() for f in remote.all_findings()] == [f.to_dict() for f in local.all_findings()]
    # the Hub repo also holds .gitattributes (added by the repo builder, as on the Hub)
    assert [f.to_dict() for f in remote.files if f.path != ".gitattributes"] == [f.to_dict() for f in local.files]
    assert (remote.format, remote.params, remote.predicted_bytes) == (local.format, local.params, local.predicted_bytes)


@pytest.mark.parametrize("branch", ["gptq-4bit-32g-actorder_True", "main", "ggml", "pickle", "bnb", "gguf-shards",
                                    "gguf-parts"])
def test_remote_findings_equal_local(hub, branch):
    server, local = hub
    report = inspect_remote(f"{REPO}:{branch}", endpoint=server.endpoint, token="")
    expected = inspect(local[branch])
    _same_findings(report, expected)
    assert report.ok == expected.ok
    assert report.path == f"{REPO}@{report.remote['commit']}"
    assert report.remote["revision"] == branch and report.remote["requests"] > 0


def test_good_gptq_cli_human_and_json(hub):
    server, _local = hub
    env = {"HF_ENDPOINT": server.endpoint, "HF_TOKEN": ""}
    url = f"https://huggingface.co/{REPO}/tree/gptq-4bit-32g-actorder_True"
    res = run_cli(*["validate", url], env=env)
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and "remote: " in res.output and " requests" in res.output and " of " in res.output
    res = run_cli(*["validate", REPO, "--revision", "gptq-4bit-32g-actorder_True", "--json"], env=env)
    doc = json.loads(res.output)
    assert res.exit_code == 0 and doc["ok"] and doc["format"] == "gptq"
    assert doc["remote"]["repo"] == REPO and doc["remote"]["bytes_read"] > 0
    assert doc["path"] == f"{REPO}@{doc['remote']['commit']}"


@pytest.mark.parametrize("branch,codes", [
    ("gptq-4bit-128g-truncated", {"file-size", "bad-offsets"}),
    ("gptq-4bit-32g-wrongconfig", {"config-mismatch"}),
    ("gguf-truncated", {"file-size"}),
])
def test_broken_branches_fail_remotely(hub, branch, codes):
    server, local = hub
    res = run_cli(*["validate", f"{REPO}:{branch}", "--json"], env={"HF_ENDPOINT": server.endpoint})
    assert res.exit_code == 1, res.output
    doc = json.loads(res.output)
    found = {f["code"] for f in doc["findings"]} | {f["code"] for p in doc["parts"] for f in p["findings"]}
    assert found & codes, found
    assert found == inspect(local[branch]).codes()


def test_unknown_branch_exits_2_listing_branches_and_hides_token(hub):
    server, _local = hub
    res = run_cli(*["validate", f"{REPO}:nope"], env={"HF_ENDPOINT": server.endpoint, "HF_TOKEN": TOKEN})
    assert res.exit_code == 2
    assert "gptq-4bit-32g-actorder_True" in res.output and "main" in res.output
    assert "Traceback" not in res.output and TOKEN not in res.output
    res = run_cli(*["validate", "./no/such:thing"], env={"HF_ENDPOINT": server.endpoint})
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_reads_a_small_part_of_big_weights_with_ranges(hub, tmp_path):
    server, local = hub
    with FaultProxy(server.endpoint, Faults(honour_range=True)) as proxy:
        report = inspect_remote(f"{REPO}:gptq-big", endpoint=proxy.endpoint,
                                token=TOKEN, mirror=tmp_path / "kept")
        ranged = [e for e in proxy.requests("/resolve/") if e.range]
        sent = proxy.bytes_sent()
    remote = report.remote
    assert report.ok and remote["range_supported"]
    assert remote["bytes_read"] == sent
    assert remote["bytes_read"] < 0.25 * remote["total_bytes"], remote
    assert ranged and all(e.status == 206 for e in ranged)
    assert all(e.authorization == f"Bearer {TOKEN}" for e in proxy.requests("/resolve/"))
    _same_findings(report, inspect(local["gptq-big"]))
    # the kept mirror: every file at its exact size, and it validates locally the same way
    kept = tmp_path / "kept"
    sizes = {p: f.stat().st_size for p, f in _files(kept).items() if p != ".gitattributes"}
    assert sizes == {p: f.stat().st_size for p, f in _files(local["gptq-big"]).items()}
    assert remote["mirror"] == str(kept.resolve())


def test_server_ignoring_range_still_works(hub):
    server, local = hub
    with FaultProxy(server.endpoint, Faults(honour_range=False)) as proxy:
        report = inspect_remote(f"{REPO}:gptq-big", endpoint=proxy.endpoint, token="")
    assert not report.remote["range_supported"]
    _same_findings(report, inspect(local["gptq-big"]))


def test_mirror_must_be_new_or_empty(hub, tmp_path):
    server, _local = hub
    (tmp_path / "x").write_text("x")
    res = run_cli(*["validate", REPO, "--mirror", str(tmp_path)], env={"HF_ENDPOINT": server.endpoint})
    assert res.exit_code == 2 and "empty" in res.output


def test_validate_reads_lists_every_tensor_check_reads(hub, monkeypatch):
    """The remote fetch list is the format modules' VALIDATE_READS: it must cover what check() reads."""
    _server, local = hub
    seen: list[str] = []
    original = Variant.read

    def spy(self, name):
        seen.append(name)
        return original(self, name)

    monkeypatch.setattr(Variant, "read", spy)
    for branch, module in (("gptq-4bit-32g-actorder_True", gptq), ("bnb", bnb)):
        seen.clear()
        inspect(local[branch])
        assert seen and all(n.endswith(module.VALIDATE_READS) for n in seen), set(seen)


def test_coalesce():
    assert coalesce([(100, 200), (0, 10), (150, 160), (10_000_000, 10_000_010)], gap=1000) == \
        [(0, 200), (10_000_000, 10_000_010)]
    assert coalesce([(5, 5), (0, 1), (1, 2)], gap=1) == [(0, 2)]
    assert np.all(np.diff([a for a, _ in coalesce([(30, 40), (0, 10)], gap=1)]) > 0)


def test_gguf_header_prefix_doubles_until_it_parses(hub, monkeypatch):
    """A small first prefix forces the doubling path; the result equals a local validate."""
    from mcard.formats.gguf.spec import GgufSpec

    server, local = hub
    monkeypatch.setattr(GgufSpec, "remote_heads", ((".gguf", 1024),))
    with FaultProxy(server.endpoint, Faults(honour_range=True)) as proxy:
        report = inspect_remote(f"{REPO}:main", endpoint=proxy.endpoint, token="")
        ranges = [e.range for e in proxy.requests(".gguf")]
    assert ranges[:3] == ["bytes=0-1023", "bytes=1024-2047", "bytes=2048-4095"]
    assert report.remote["bytes_read"] < 0.1 * report.remote["total_bytes"]
    _same_findings(report, inspect(local["main"]))


@pytest.mark.parametrize("branch,kind,files", [("gguf-shards", "shards", 3), ("gguf-parts", "parts", 3)])
def test_remote_split_gguf_is_one_model_from_every_shard_header(hub, branch, kind, files):
    server, _local = hub
    report = inspect_remote(f"{REPO}:{branch}", endpoint=server.endpoint, token="")
    assert report.ok and report.params["split"] == kind and report.params["files"] == files
    assert report.predicted_bytes == sum(f.size for f in report.files if f.kind == "gguf")


def test_a_folder_of_gguf_files_reports_each_file_and_its_size(hub):
    """#10 item 5: each part reports its real size; the folder lists every file (locally and remotely)."""
    server, local = hub
    sizes = {p.name: p.stat().st_size for p in local["gguf-many"].glob("*.gguf")}
    remote = inspect_remote(f"{REPO}:gguf-many", endpoint=server.endpoint, token="")
    for report in (inspect(local["gguf-many"]), remote):
        assert {f.path: f.size for f in report.files if f.kind == "gguf"} == sizes
        assert report.actual_bytes == sum(sizes.values())
        assert len(report.parts) == 2
        for part in report.parts:
            [entry] = part.files
            assert part.path.endswith(entry.path) and entry.size == sizes[entry.path]
            assert part.actual_bytes == part.predicted_bytes == entry.expected_size == sizes[entry.path]
        assert report.predicted_bytes == sum(sizes.values())
    _same_findings(remote, inspect(local["gguf-many"]))
