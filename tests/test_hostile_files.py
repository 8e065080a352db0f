"""Hostile local inputs: registry entries, cards, configs, evaluation files, adapters and checkpoints (issue #14).

Each test reproduces a hole mcard had: a path that reads outside the registry, a name that runs in CI's shell, a
FIFO or /dev/zero that hangs or fills memory, counts and expansions that blow up, a regex that never ends, inputs
that ended in an internal error. Every answer is one line or a finding, with exit 0, 1 or 2.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mcard import untrusted
from mcard.arch import tiny_config
from mcard.cli import app
from mcard.formats import lora

ROOT = Path(__file__).resolve().parent.parent
VARIANT = '[[variants]]\nformat = "gptq"\nbranch = "main"\nbits = 4\ngroup_size = 128\n'


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"internal error: {result.exception!r}\n{result.output}") from result.exception
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _entry(folder: Path, model_extra: str = "", body: str = VARIANT, name: str = "e.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f'[model]\nrepo = "org/tiny"\nname = "Tiny"\nlicense = "mit"\n{model_extra}\n{body}')
    return path


def _arch(cfg: str) -> str:
    return f'[[variants]]\nformat = "gptq"\nbranch = "main"\nbits = 4\ngroup_size = 128\n\n[architecture]\nconfig = "{cfg}"\n'


# -- 3. paths in an entry stay inside its folder (or --registry-root) -------------------------------------------
@pytest.mark.parametrize("model_extra, body", [
    ('original_card = "/etc/passwd"', VARIANT),
    ('original_card = "../../../../../../etc/passwd"', VARIANT),
    ("", _arch("/proc/self/environ")),
    ("", VARIANT + '\n[[evaluations]]\npath = "/etc/hostname"\n'),
    ('original_card = "link.md"', VARIANT),  # a symlink in the folder that points out of it
], ids=["card-absolute", "card-dotdot", "config-environ", "eval-absolute", "card-symlink"])
def test_entry_paths_outside_the_entry_folder_are_refused(tmp_path, model_extra, body):
    (tmp_path / "reg" / "link.md").parent.mkdir(parents=True)
    (tmp_path / "reg" / "link.md").symlink_to("/etc/passwd")
    entry = _entry(tmp_path / "reg", model_extra, body)
    code, out = _cli("card", "render", entry)
    assert code == 2 and ("resolves outside" in out or "must be a relative path" in out)
    assert "root:" not in out


def test_registry_root_widens_the_allowed_folder(tmp_path):
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "orig.md").write_text("# The original card\n")
    entry = _entry(tmp_path / "registry" / "examples", 'original_card = "../../cards/orig.md"')
    assert _cli("card", "render", entry)[0] == 2
    code, out = _cli("card", "render", entry, "--registry-root", tmp_path)
    assert code == 0 and "The original card" in out


# -- 4. names are checked at load time; the documented workflow never pastes them into a shell -----------------
@pytest.mark.parametrize("body, key", [
    ('[[variants]]\nformat = "gptq"\nbranch = "main\\"; touch x; echo \\""\nbits = 4\ngroup_size = 128\n',
     "variants[0].branch"),
    ('[[variants]]\nformat = "gguf"\nfile = "$(touch x).gguf"\ntype = "Q4_0"\n', "variants[0].file"),
    ('[[variants]]\nformat = "gguf"\nfile = "../x.gguf"\ntype = "Q4_0"\n', "variants[0].file"),
], ids=["branch", "file-shell", "file-dotdot"])
def test_registry_names_that_break_hub_rules_are_refused(tmp_path, body, key):
    entry = _entry(tmp_path, "", body)
    code, out = _cli("plan", entry)
    assert code == 2 and key in out and "touch" not in out.split(key)[0]


def test_registry_repo_id_is_checked(tmp_path):
    entry = tmp_path / "e.toml"
    entry.write_text('[model]\nrepo = "org/x\\"; echo pwned"\nname = "T"\nlicense = "mit"\n' + VARIANT)
    code, out = _cli("plan", entry)
    assert code == 2 and "model.repo" in out


def test_documented_workflow_passes_matrix_values_through_env():
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if "mcard plan" in b)
    steps = [s for job in yaml.safe_load(block)["jobs"].values() for s in job.get("steps", [])]
    runs = [s["run"] for s in steps if "run" in s]
    assert any("mcard sync" in r for r in runs)
    assert not [r for r in runs if "${{" in r], "a run: script pastes ${{ }} values into the shell"


# -- 7. only regular files are read, with a cap -----------------------------------------------------------------
def test_fifo_and_devices_are_refused_before_reading(tmp_path):
    os.mkfifo(tmp_path / "cfg.json")
    os.mkfifo(tmp_path / "eval.json")
    started = time.monotonic()
    code, out = _cli("card", "render", _entry(tmp_path, "", _arch("cfg.json")))
    assert code == 2 and "a FIFO" in out
    code, out = _cli("card", "render", _entry(tmp_path, "", VARIANT + '\n[[evaluations]]\npath = "eval.json"\n'))
    assert code == 2 and "a FIFO" in out
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    code, out = _cli("card", "render", _entry(tmp_path, "", _arch("zero.json")), "--registry-root", "/")
    assert code == 2 and "a device" in out
    os.mkfifo(tmp_path / "fifo.toml")
    code, out = _cli("card", "render", tmp_path / "fifo.toml")
    assert code == 2 and "a FIFO" in out
    for config in ("/dev/zero", tmp_path / "cfg.json"):
        code, out = _cli("size", config, "-f", "gguf", "-t", "Q4_0")
        assert code == 2 and "only regular files" in out
    assert time.monotonic() - started < 10


# -- 8. counts and expansion are capped, not only bytes ---------------------------------------------------------
def test_eval_file_with_too_many_tasks_or_bytes_is_refused(tmp_path):
    results = {f"task{i}": {"acc,none": 0.5} for i in range(3000)}
    (tmp_path / "evals.json").write_text(json.dumps({"results": results}))
    with open(tmp_path / "huge.json", "wb") as fh:
        fh.truncate(40_000_000)
    code, out = _cli("card", "render", _entry(tmp_path, "", VARIANT + '\n[[evaluations]]\npath = "evals.json"\n'))
    assert code == 2 and "3000 tasks" in out
    code, out = _cli("card", "render", _entry(tmp_path, "", VARIANT + '\n[[evaluations]]\npath = "huge.json"\n'))
    assert code == 2 and "more than the 16777216 allowed" in out


def _card(tmp_path: Path, front: str) -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"---\n{front}\n---\n# Card\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("front, words", [
    ("license: mit\ntags:\n" + "".join(f"- t{i}\n" for i in range(100_000)), "more than 20000 YAML nodes"),
    ("license: mit\ntags: [" + ", ".join(f"t{i}" for i in range(3000)) + "]", "a list of 3000 items"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "license: [*d, *d, *d, *d, *d, *d, *d, *d, *d]", "aliases"),
    ("license: mit\ntags: " + "[" * 5000 + "]" * 5000, "nested deeper than 64"),
], ids=["100k-tags", "3000-tags", "alias-bomb", "deep"])
def test_card_front_matter_over_the_limits_is_a_finding(tmp_path, front, words):
    started = time.monotonic()
    code, out = _cli("card", "check", _card(tmp_path, front), "--json")
    data = json.loads(out)
    assert code == 1 and any(words in f["message"] for f in data["findings"] if f["code"] == "bad-metadata")
    assert time.monotonic() - started < 10


def test_a_date_as_license_prints_json(tmp_path):
    code, out = _cli("card", "check", _card(tmp_path, "license: 2024-01-01\npipeline_tag: text-generation"), "--json")
    assert code == 0 and json.loads(out)["params"]["license"] == "2024-01-01"


def test_deep_toml_is_one_line(tmp_path):
    entry = tmp_path / "deep.toml"
    entry.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    code, out = _cli("plan", entry)
    assert code == 2 and "nested too deeply" in out


# -- 9. regexes from files are bounded ---------------------------------------------------------------------------
def _adapter(tmp_path: Path, **changes: object) -> Path:
    lora.write_variant(tmp_path, tiny_config(), r=8, base_config=True)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg.update(changes)
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_catastrophic_target_modules_regex_finishes(tmp_path):
    started = time.monotonic()
    code, out = _cli("validate", _adapter(tmp_path, target_modules="(.+)+X"), "--json")
    assert code == 1 and time.monotonic() - started < 10
    assert json.loads(out)["findings"]


def test_regex_matching_has_a_time_limit():
    with pytest.raises(untrusted.PatternError, match="catastrophic backtracking"):
        untrusted.fullmatch(r"(x+x+)+y", "x" * 5000)
    with pytest.raises(untrusted.PatternError, match="characters"):
        untrusted.compile_pattern("a" * 2000)


# -- 11. inputs that ended in internal errors ----------------------------------------------------------------------
def test_rich_markup_in_names_and_values_is_printed_as_written(tmp_path):
    card = _card(tmp_path, 'license: "[/]"\nbase_model: "[bold]org/x"\npipeline_tag: "[/red]"')
    code, out = _cli("card", "check", card)
    assert code in (0, 1) and "[/]" in out and "[/red]" in out
    from mcard.formats import gptq

    gptq.write_variant(tmp_path / "v", tiny_config())
    cfg = json.loads((tmp_path / "v" / "quantize_config.json").read_text())
    cfg["checkpoint_format"] = "[/]"
    (tmp_path / "v" / "quantize_config.json").write_text(json.dumps(cfg))
    code, out = _cli("validate", tmp_path / "v")
    assert code in (0, 1) and "[/]" in out

def test_rank_pattern_key_that_is_not_a_regex_is_a_finding(tmp_path):
    code, out = _cli("validate", _adapter(tmp_path, rank_pattern={"(": 4}), "--json")
    found = [f for f in json.loads(out)["findings"] if f["code"] == "bad-adapter-config"]
    assert code == 1 and found and "rank_pattern" in found[0]["where"]


def test_adapter_tensor_with_an_empty_dtype_is_a_finding(tmp_path):
    folder = _adapter(tmp_path)
    path = folder / "adapter_model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    for key, value in header.items():
        if key != "__metadata__":
            value["dtype"] = ""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    code, out = _cli("validate", folder)
    assert code == 1 and "dtype" in out


@pytest.mark.parametrize("qtype", ["NVFP4", "", "Q4_K_Z", "IQ2_XS_" * 20])
def test_unknown_size_types_are_one_line(tmp_path, qtype):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config()))
    code, out = _cli("size", tmp_path / "config.json", "-f", "gguf", "--type", qtype)
    assert code == 2 and ("GGUF/GGML type" in out or "llama.cpp type" in out)
    assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("corrupt", [False, True], ids=["lzma", "corrupt-lzma"])
def test_lzma_member_in_a_pickle_zip(tmp_path, corrupt):
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 500)
    if corrupt:
        data = bytearray(path.read_bytes())
        start = data.index(b"archive/data.pkl") + len("archive/data.pkl")
        data[start + 7:start + 15] = b"\xff" * 8  # inside the LZMA stream: "Corrupt input data"
        path.write_bytes(bytes(data))
    code, out = _cli("validate", tmp_path)
    assert code == 1 and "pickle" in out


def test_sync_variant_and_batch_checks_load_entries_with_the_registry_root(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.json").write_text(json.dumps(tiny_config()))
    entry = _entry(tmp_path / "registry", "", _arch("../configs/c.json"))
    code, out = _cli("sync", entry, "--variant", "nope", "--registry-root", tmp_path)
    assert code == 2 and "no such variant" in out and "main" in out
    code, out = _cli("sync", entry, "--batch", "7", "--registry-root", tmp_path)
    assert code == 2 and "the plan has jobs 1 to 1" in out
