"""mcard package: branch folders assembled from quantizer outputs written by the format builders."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from helpers import cli_process, custom_entry
from mcard.core.errors import CheckFailed, UnusableInput
from mcard.core.validate import inspect
from mcard.pipeline import demo
from mcard.pipeline.package import load_package, package
from mcard.registry.entry import load_entry

ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoRepos:
    return demo.build(tmp_path_factory.mktemp("demo"))


def _cli(*args: str, preexec=None) -> subprocess.CompletedProcess[str]:
    return cli_process(*args, env=ENV, preexec_fn=preexec, timeout=120)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    return run.stderr


def test_gptq_branches_are_assembled_renamed_configured_and_recorded(built: demo.DemoRepos, tmp_path: Path) -> None:
    entry_path = built.registry / "tiny-llama-gptq.toml"
    staging = built.mirrors.parent / "staging" / "gptq"
    pkg = package(entry_path, staging, tmp_path / "out")
    entry = load_entry(entry_path)
    assert [b.branch for b in pkg.branches] == list(demo.GPTQ_BRANCHES)  # main first
    cards = set()
    for v in entry.variants:
        folder = tmp_path / "out" / v.branch
        assert sorted(p.name for p in folder.iterdir()) == [".gitattributes", "README.md", "config.json",
                                                           "model.safetensors", "quantize_config.json"]
        [source_weights] = (staging / v.branch).glob("*.safetensors")
        assert _sha(folder / "model.safetensors") == _sha(source_weights)  # renamed, unchanged
        qc = json.loads((folder / "quantize_config.json").read_text())
        assert (qc["bits"], qc["group_size"], qc["desc_act"], qc["model_file_base_name"]) == (
            v.bits, v.group_size, v.desc_act, "model")
        assert json.loads((folder / "config.json").read_text())["quantization_config"] == qc
        assert "*.safetensors filter=lfs" in (folder / ".gitattributes").read_text()
        cards.add((folder / "README.md").read_text())
        report = inspect(folder)
        assert report.ok and report.params["group_size"] == v.group_size
    [card] = cards  # the same card on every branch, listing every variant
    assert all(branch in card for branch in demo.GPTQ_BRANCHES)

    again = load_package(tmp_path / "out")
    for b in again.branches:
        for f in b.files:
            assert _sha(tmp_path / "out" / b.folder / f.path) == f.sha256
        assert "mcard" in b.message and "GPTQ 4-bit" in b.message
    again.verify()
    (tmp_path / "out" / "main" / "config.json").write_text("{}")
    with pytest.raises(CheckFailed, match="changed since it was packaged"):
        again.verify()
    (tmp_path / "out" / "main" / "training_args.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnusableInput, match="pickle"):
        again.verify()


def test_gguf_files_share_main_and_json_prints_the_plan(built: demo.DemoRepos, tmp_path: Path) -> None:
    run = _cli("package", str(built.registry / "tiny-llama-gguf.toml"), "--from",
               str(built.mirrors.parent / "staging" / "gguf"), "--out", str(tmp_path / "out"), "--json")
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    [main] = plan["branches"]
    files = {f["path"]: f for f in main["files"]}
    assert {f"tiny-llama.{t}.gguf" for t in demo.GGUF_TYPES} <= set(files)
    for name, f in files.items():
        assert f["size"] == (tmp_path / "out" / "main" / name).stat().st_size
        assert f["sha256"] == _sha(tmp_path / "out" / "main" / name) and f["source"]
    assert "*.gguf filter=lfs" in (tmp_path / "out" / "main" / ".gitattributes").read_text()



def test_base_files_license_sources_and_shards(tmp_path: Path, tiny_cfg: dict) -> None:
    entry = custom_entry(tmp_path, tiny_cfg)
    pkg = package(entry, out=tmp_path / "out", max_shard_size=300_000)
    folder = tmp_path / "out" / "main"
    assert json.loads((folder / "tokenizer_config.json").read_text()) == {"from": "quantizer"}  # the output wins
    assert (folder / "tokenizer.json").is_file() and (folder / "generation_config.json").is_file()
    assert (folder / "LICENSE.txt").read_text() == "license text\n"
    assert not (folder / "notes.txt").exists()
    assert any(p.endswith("notes.txt") for p, _ in pkg.branches[0].ignored)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size < 300_000 + 4096 for p in shards)
    original = load_file(str(next((tmp_path / "quantized" / "q4").glob("*.safetensors"))))
    merged = {k: v for p in shards for k, v in load_file(str(p)).items()}
    assert merged.keys() == original.keys() and all((merged[k] == original[k]).all() for k in original)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in original.values())
    assert json.loads((folder / "quantize_config.json").read_text())["model_file_base_name"] == "model"
    assert inspect(folder).ok


def test_bad_sources_are_one_line_each(tmp_path: Path, tiny_cfg: dict, built: demo.DemoRepos) -> None:
    entry = custom_entry(tmp_path, tiny_cfg)
    source = tmp_path / "quantized" / "q4"
    shutil.copyfile(next(source.glob("*.safetensors")), source / "second.safetensors")
    with pytest.raises(UnusableInput, match="would both become model.safetensors"):
        package(entry, out=tmp_path / "o1")
    (source / "second.safetensors").unlink()
    (source / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UnusableInput, match="never packages pickles"):
        package(entry, out=tmp_path / "o2")
    (source / "pytorch_model.bin").unlink()

    missing = _cli("package", str(built.registry / "tiny-llama-gptq.toml"), "--from", str(tmp_path / "empty"),
                   "--out", str(tmp_path / "o3"), "--json")
    assert missing.returncode == 2 and "variant main" in _one_line(missing) and "expected DIR/<branch>/" in missing.stderr
    assert json.loads(missing.stdout) == {"ok": False, "error": missing.stderr.strip()[len("mcard: "):], "exit_code": 2}

    big = tmp_path / "gguf-from"
    shutil.copytree(built.mirrors.parent / "staging" / "gguf", big)
    huge = big / "tiny-llama.Q8_0.gguf"
    with huge.open("r+b") as f:
        f.truncate(50 * 10**9 + 1)  # sparse: no disk used
    over = _cli("package", str(built.registry / "tiny-llama-gguf.toml"), "--from", str(big), "--out", str(tmp_path / "o4"))
    assert over.returncode == 2 and "over the Hub's limit" in _one_line(over) and "llama-gguf-split" in over.stderr
    assert not (tmp_path / "o4").exists()


def test_failing_variant_is_refused_unless_allowed(tmp_path: Path, tiny_cfg: dict) -> None:
    entry = custom_entry(tmp_path, tiny_cfg)
    qc_path = tmp_path / "quantized" / "q4" / "quantize_config.json"
    qc = json.loads(qc_path.read_text())
    qc["group_size"] = 128  # the config lies: the tensors are 64g
    qc_path.write_text(json.dumps(qc))
    refused = _cli("package", str(entry), "--out", str(tmp_path / "out"))
    assert refused.returncode == 1 and "variant main fails validate" in _one_line(refused)
    assert not (tmp_path / "out").exists()
    allowed = _cli("package", str(entry), "--out", str(tmp_path / "out"), "--allow-failing", "--json")
    assert allowed.returncode == 0, allowed.stderr
    [check] = json.loads(allowed.stdout)["checks"]
    assert check["source_errors"] and json.loads(allowed.stdout)["ok"] is False


def _small_files_only() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_full_disk_leaves_the_previous_package_whole(tmp_path: Path, tiny_cfg: dict) -> None:
    entry = custom_entry(tmp_path, tiny_cfg)
    package(entry, out=tmp_path / "out")
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    (tmp_path / "LICENSE.txt").write_text("a new license\n")
    full = _cli("package", str(entry), "--out", str(tmp_path / "out"), preexec=_small_files_only)
    assert full.returncode == 1 and "cannot write the package" in _one_line(full) and "is unchanged" in full.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_bitsandbytes_and_awq_configs(tmp_path: Path, tiny_cfg: dict) -> None:
    from mcard.formats import awq, bnb

    bnb.write_variant(tmp_path / "from" / "main", tiny_cfg, quant_type="nf4", double_quant=False)
    awq.write_variant(tmp_path / "awq-from" / "main", tiny_cfg, group_size=64)
    for name, fmt, extra in (("nf4", "nf4", "double_quant = false"), ("awq", "awq", "bits = 4\ngroup_size = 64")):
        entry = tmp_path / f"{name}.toml"
        entry.write_text(f'[model]\nrepo = "me/tiny-{name}"\nname = "t"\nlicense = "mit"\n\n'
                         f'[[variants]]\nformat = "{fmt}"\n{extra}\n')
        src = tmp_path / ("from" if name == "nf4" else "awq-from")
        package(entry, src, tmp_path / f"out-{name}")
        qc = json.loads((tmp_path / f"out-{name}" / "main" / "config.json").read_text())["quantization_config"]
        if name == "nf4":
            assert (qc["quant_method"], qc["load_in_4bit"], qc["bnb_4bit_quant_type"],
                    qc["bnb_4bit_use_double_quant"]) == ("bitsandbytes", True, "nf4", False)
        else:
            assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["version"]) == ("awq", 4, 64, "gemm")
        assert not (tmp_path / f"out-{name}" / "main" / "quantize_config.json").exists()
        assert inspect(tmp_path / f"out-{name}" / "main").ok


# -- issue #14: a variant's `source` follows the entry-path rule; --from DIR is the user's own argument ----------

@pytest.mark.parametrize("source", ["../elsewhere/main", "absolute", "link"])
def test_a_source_outside_the_entry_folder_is_refused_unless_the_registry_root_holds_it(
        tmp_path: Path, tiny_cfg: dict, source: str) -> None:
    reg = tmp_path / "reg"
    reg.mkdir()
    entry = custom_entry(reg, tiny_cfg)
    (tmp_path / "elsewhere").mkdir()
    shutil.move(reg / "quantized" / "q4", tmp_path / "elsewhere" / "main")
    (reg / "link").symlink_to(tmp_path / "elsewhere" / "main")  # inside the folder, pointing out of it
    value = str(tmp_path / "elsewhere" / "main") if source == "absolute" else source
    entry.write_text(entry.read_text().replace('source = "quantized/q4"', f'source = "{value}"'))
    run = _cli("package", str(entry), "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "variants[0].source" in _one_line(run) and not (tmp_path / "out").exists()
    wider = _cli("package", str(entry), "--out", str(tmp_path / "out"), "--registry-root", str(tmp_path))
    if source == "absolute":  # never, whatever the root
        assert wider.returncode == 2 and "must be a relative path" in _one_line(wider)
    else:
        assert wider.returncode == 0, wider.stderr
        assert _sha(tmp_path / "out" / "main" / "model.safetensors") == _sha(
            next((tmp_path / "elsewhere" / "main").glob("*.safetensors")))
    entry.write_text(entry.read_text().replace(f'source = "{value}"', ""))  # --from DIR may lie anywhere
    free = _cli("package", str(entry), "--from", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "out2"))
    assert free.returncode == 0, free.stderr


# -- issue #14: the package folder is written through the path guard ------------------------------------------

def test_a_planted_staging_symlink_or_a_symlinked_out_never_leads_writes_outside(tmp_path: Path,
                                                                                 tiny_cfg: dict) -> None:
    entry = custom_entry(tmp_path, tiny_cfg)
    outside = tmp_path / "outside"
    outside.mkdir()
    # the staging name an older mcard used (OUT's parent, this process id), planted as a link out of it
    (tmp_path / f".out.partial-{os.getpid()}").symlink_to(outside)
    pkg = package(entry, out=tmp_path / "out")
    assert pkg.root == tmp_path / "out" and (tmp_path / "out" / "main" / "model.safetensors").is_file()
    assert list(outside.iterdir()) == [] and (tmp_path / f".out.partial-{os.getpid()}").is_symlink()
    (tmp_path / "linked").symlink_to(outside, target_is_directory=True)
    run = _cli("package", str(entry), "--out", str(tmp_path / "linked"))
    assert run.returncode == 2 and "is a symlink" in _one_line(run) and list(outside.iterdir()) == []
    assert (tmp_path / "linked").is_symlink()


def test_verify_refuses_a_symlink_in_the_package(tmp_path: Path, tiny_cfg: dict) -> None:
    package(custom_entry(tmp_path, tiny_cfg), out=tmp_path / "out")
    config = tmp_path / "out" / "main" / "config.json"
    shutil.copyfile(config, tmp_path / "same-bytes.json")
    config.unlink()
    config.symlink_to(tmp_path / "same-bytes.json")  # the same bytes, but read through a link out of the package
    with pytest.raises(UnusableInput, match="symlink"):
        load_package(tmp_path / "out").verify()
