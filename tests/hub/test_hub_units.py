"""Unit tests of the hub helpers that need no server: specs, branch names, configs, selection, paths, env."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mcard.core.errors import UnusableInput
from mcard.hub.env import resolve_env
from mcard.hub.model import RemoteFile, safe_relpath
from mcard.hub.refs import QuantParams, compare_params, params_from_branch, params_from_configs, parse_repo_spec
from mcard.hub.selection import is_pickle, select_files
from mcard.hub.transfer import RetryPolicy, Verifier, parse_retry_after
from mcard.testing.hubserver import git_blob_id, lfs_pointer


@pytest.mark.parametrize("text, repo, rev", [
    ("TheBloke/Llama-2-7B-GPTQ", "TheBloke/Llama-2-7B-GPTQ", None),
    ("TheBloke/Llama-2-7B-GPTQ:gptq-4bit-32g-actorder_True", "TheBloke/Llama-2-7B-GPTQ", "gptq-4bit-32g-actorder_True"),
    ("https://huggingface.co/TheBloke/X-GPTQ/tree/gptq-3bit--1g-actorder_True", "TheBloke/X-GPTQ",
     "gptq-3bit--1g-actorder_True"),
    ("https://huggingface.co/TheBloke/X-GPTQ", "TheBloke/X-GPTQ", None),
    ("https://huggingface.co/TheBloke/X-GPTQ/blob/v1.0/config.json", "TheBloke/X-GPTQ", "v1.0"),
    ("https://huggingface.co/gpt2/tree/main", "gpt2", "main"),
    ("https://huggingface.co/org/name/tree/refs%2Fpr%2F1", "org/name", "refs/pr/1"),
])
def test_parse_repo_spec(text: str, repo: str, rev: str | None) -> None:
    spec = parse_repo_spec(text)
    assert (spec.repo_id, spec.revision) == (repo, rev)


@pytest.mark.parametrize("text", ["../etc", "a/b/c", "org--x/y", "org/x:../../refs", "org/x:", "",
                                  "https://huggingface.co/datasets/a/b", "org/x:/abs", "org/.."])
def test_parse_repo_spec_refuses(text: str) -> None:
    with pytest.raises(UnusableInput):
        parse_repo_spec(text)


def test_revision_option_conflicts_and_merges() -> None:
    assert parse_repo_spec("org/x", "v2").revision == "v2"
    assert parse_repo_spec("org/x:v2", "v2").revision == "v2"
    with pytest.raises(UnusableInput, match="--revision"):
        parse_repo_spec("org/x:main", "v2")


@pytest.mark.parametrize("name, bits, group, act, method", [
    ("gptq-4bit-32g-actorder_True", 4, 32, True, "gptq"),
    ("gptq-4bit-128g-actorder_False", 4, 128, False, "gptq"),
    ("gptq-3bit--1g-actorder_True", 3, -1, True, "gptq"),
    ("gptq-8bit-64g-actorder_True", 8, 64, True, "gptq"),
    ("4.65bpw", 4.65, None, None, "exl2"),
])
def test_params_from_branch(name: str, bits: float, group: int | None, act: bool | None, method: str) -> None:
    p = params_from_branch(name)
    assert (p.bits, p.group_size, p.desc_act, p.method) == (bits, group, act, method)


@pytest.mark.parametrize("name", ["main", "awq", "gguf", "dev"])
def test_plain_branch_names_state_nothing(name: str) -> None:
    assert params_from_branch(name).is_empty()


def test_configs_and_disagreements() -> None:
    got = params_from_configs({"bits": 4, "group_size": 64, "desc_act": True, "sym": True},
                              {"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 64}})
    assert got["quantize_config.json"] == QuantParams("gptq", 4.0, 64, True)
    assert got["config.json"].bits == 8.0
    diffs = compare_params(params_from_branch("gptq-4bit-32g-actorder_True"), got["quantize_config.json"],
                           "branch name", "quantize_config.json")
    assert [d.key for d in diffs] == ["group_size"]
    assert "branch name says 32, quantize_config.json says 64" in str(diffs[0])
    awq = params_from_configs(None, {"quantization_config": {"quant_method": "awq", "w_bit": 4, "q_group_size": 128}})
    assert awq["config.json"] == QuantParams("awq", 4.0, 128, None)
    assert params_from_configs(None, {"model_type": "llama"}) == {}


def test_safe_relpath() -> None:
    assert safe_relpath("a/b/c.json", "x") == "a/b/c.json"
    for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "C:/x", "a\\..\\b", "a/\x00b", ""]:
        with pytest.raises(UnusableInput, match="unsafe path"):
            safe_relpath(bad, "listing")


def _rf(path: str) -> RemoteFile:
    return RemoteFile(path, 10, "0" * 40, "1" * 64 if path.endswith((".bin", ".safetensors", ".gguf")) else None)


def test_pickle_policy() -> None:
    mixed = [_rf("config.json"), _rf("model.safetensors"), _rf("pytorch_model.bin"), _rf("training_args.bin")]
    sel = select_files(mixed, "r")
    assert [f.path for f in sel.files] == ["config.json", "model.safetensors"]
    assert {f.path for f, _ in sel.skipped} == {"pytorch_model.bin", "training_args.bin"}
    pickle_only = [_rf("config.json"), _rf("pytorch_model.bin")]
    with pytest.raises(UnusableInput, match="only pickle weights.*--allow-pickle"):
        select_files(pickle_only, "r")
    assert len(select_files(pickle_only, "r", allow_pickle=True).files) == 2
    ggml = [_rf("config.json"), _rf("llama-7b.ggmlv3.q4_0.bin")]
    assert not is_pickle("llama-7b.ggmlv3.q4_0.bin") and is_pickle("model.pt")
    assert len(select_files(ggml, "r").files) == 2  # a GGML .bin is not a pickle
    # --include narrowing the selection to pickles makes it pickle-only
    with pytest.raises(UnusableInput, match="pickle"):
        select_files(mixed, "r", include=["*.bin"])


def test_selection_names_and_globs() -> None:
    files = [_rf("config.json"), _rf("model.safetensors"), _rf("sub/a.txt"), _rf("sub/b.txt")]
    assert [f.path for f in select_files(files, "r", include=["sub/"]).files] == ["sub/a.txt", "sub/b.txt"]
    assert [f.path for f in select_files(files, "r", exclude=["*.txt", "*.safetensors"]).files] == ["config.json"]
    assert [f.path for f in select_files(files, "r", names=["sub/b.txt"]).files] == ["sub/b.txt"]
    with pytest.raises(UnusableInput, match="no file nope.json"):
        select_files(files, "r", names=["nope.json"])
    with pytest.raises(UnusableInput, match="no file matches"):
        select_files(files, "r", include=["*.gguf"])


def test_verifier_git_blob_and_sha256() -> None:
    data = b"hello world\n" * 100
    plain = RemoteFile("a.txt", len(data), git_blob_id(data))
    v = Verifier(plain)
    v.update(data[:7])
    v.update(data[7:])
    assert v.mismatch() is None
    lfs = RemoteFile("w.safetensors", len(data), git_blob_id(lfs_pointer("0" * 64, len(data))),
                     hashlib.sha256(data).hexdigest())
    v = Verifier(lfs)
    v.update(data[:-1] + b"X")
    assert "sha256 mismatch: expected" in (v.mismatch() or "")
    v = Verifier(plain)
    v.update(data[:-1] + b"X")
    assert "git blob id mismatch" in (v.mismatch() or "")


def test_retry_policy_and_retry_after() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0, max_retry_after=30.0)
    assert 0.5 <= policy.delay(1) <= 1.0 and policy.delay(10) <= 5.0
    assert policy.delay(1, retry_after=7.0) == 7.0 and policy.delay(1, retry_after=999.0) == 30.0
    assert parse_retry_after("3") == 3.0 and parse_retry_after("soon") is None
    assert 0 <= (parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") or 0.0) <= 0.0


def test_env_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    env = resolve_env()
    assert env.cache_dir == tmp_path / "home" / "hub" and env.endpoint == "http://127.0.0.1:9"
    assert env.token == "hf_secret_value" and "hf_secret_value" not in repr(env)
    assert env.scrub("token hf_secret_value leaked") == "token *** leaked"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = resolve_env()
    assert env.cache_dir == tmp_path / "c" and env.offline
    assert resolve_env(endpoint="http://x", cache_dir=tmp_path, offline=False).endpoint == "http://x"
