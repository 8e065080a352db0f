"""``mcard demo``: the whole pipeline on tiny models, end to end, with no network.

It builds small but format-exact repos with the format builders (a GPTQ repo
with several branches, one of them act-order; an AWQ repo; a GGUF repo with
several files on main; a QLoRA adapter), serves them with a real Hub-API
server (olah) on loopback, runs ``sync --render`` against it and leaves the
reports and rendered cards in the output folder.

The same builders give the sync tests their good and broken variants
(``broken=True``: a truncated weights file, a quantize_config that lies about
the group size, an LFS object corrupted on the server).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.arch import tiny_config

ORG = "mcard-demo"
GPTQ_REPO, AWQ_REPO, GGUF_REPO, LORA_REPO = (
    f"{ORG}/tiny-llama-GPTQ", f"{ORG}/tiny-llama-AWQ", f"{ORG}/tiny-llama-GGUF", f"{ORG}/tiny-llama-qlora")
# GPTQ branches: name -> (bits, group size, act-order)
GPTQ_BRANCHES: dict[str, tuple[int, int, bool]] = {
    "main": (4, 128, False),
    "gptq-4bit-32g-actorder_True": (4, 32, True),
    "gptq-4bit-64g-actorder_False": (4, 64, False),
}
GGUF_TYPES = ("Q4_0", "Q4_K_M", "Q8_0")
# Broken GPTQ branches for tests: name -> what is wrong with it
BROKEN_BRANCHES: dict[str, str] = {
    "gptq-4bit-128g-truncated": "weights file truncated before upload",
    "gptq-4bit-32g-wrongconfig": "quantize_config.json says group_size 128, tensors are 32g",
    "gptq-4bit-128g-corrupt": "LFS object corrupted on the server (sha256 mismatch)",
}


@dataclass
class DemoRepos:
    mirrors: Path
    registry: Path
    config: dict[str, Any]


def _files(folder: Path) -> dict[str, bytes | Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def build(workdir: str | Path, broken: bool = False) -> DemoRepos:
    """Write the demo repos under ``workdir/mirrors`` and registry entries under ``workdir/registry``."""
    from ..formats import awq, gguf, gptq, lora
    from ..testing.hubserver import build_git_repo

    workdir = Path(workdir)
    staging, mirrors, registry = workdir / "staging", workdir / "mirrors", workdir / "registry"
    registry.mkdir(parents=True, exist_ok=True)
    config = tiny_config()

    branches: dict[str, dict[str, bytes | Path]] = {}
    for i, (name, (bits, group, act)) in enumerate(GPTQ_BRANCHES.items()):
        folder = staging / "gptq" / name
        gptq.write_variant(folder, config, bits=bits, group_size=group, desc_act=act, seed=i)
        branches[name] = _files(folder)
    if broken:
        branches.update(_broken_gptq(staging / "gptq-broken", config))
    built_gptq = build_git_repo(mirrors, GPTQ_REPO, branches)
    if broken:  # corrupt the stored LFS object behind the pointer: the server now sends bad bytes
        info = next(f for f in built_gptq.files["gptq-4bit-128g-corrupt"].values() if f.path.endswith(".safetensors"))
        obj = built_gptq.path / ".git" / "lfs" / "objects" / info.sha256[:2] / info.sha256[2:4] / info.sha256
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF
        obj.write_bytes(bytes(data))

    awq.write_variant(staging / "awq", config, group_size=128)
    build_git_repo(mirrors, AWQ_REPO, {"main": _files(staging / "awq")})

    gguf_dir = staging / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    for t in GGUF_TYPES:
        gguf.write_variant(gguf_dir / f"tiny-llama.{t}.gguf", config, ftype=t)
    build_git_repo(mirrors, GGUF_REPO, {"main": _files(gguf_dir)})

    lora.write_variant(staging / "lora", config, r=8, lora_alpha=16, base_model=f"{ORG}/tiny-llama")
    build_git_repo(mirrors, LORA_REPO, {"main": _files(staging / "lora")})

    _write_registry(registry, config, broken)
    return DemoRepos(mirrors, registry, config)


def _broken_gptq(staging: Path, config: dict[str, Any]) -> dict[str, dict[str, bytes | Path]]:
    from ..formats import gptq

    out: dict[str, dict[str, bytes | Path]] = {}
    trunc = staging / "truncated"
    gptq.write_variant(trunc, config, bits=4, group_size=128, seed=11)
    weights = next(trunc.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 4096])
    out["gptq-4bit-128g-truncated"] = _files(trunc)

    wrong = staging / "wrongconfig"
    gptq.write_variant(wrong, config, bits=4, group_size=32, seed=12)
    qc = json.loads((wrong / "quantize_config.json").read_text())
    qc["group_size"] = 128
    (wrong / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n")
    out["gptq-4bit-32g-wrongconfig"] = _files(wrong)

    corrupt = staging / "corrupt"
    gptq.write_variant(corrupt, config, bits=4, group_size=128, seed=13)
    out["gptq-4bit-128g-corrupt"] = _files(corrupt)
    return out


# -- registry entries -------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _table(name: str, values: dict[str, Any], array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    return head + "\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"


def _architecture(config: dict[str, Any]) -> str:
    keep = {k: v for k, v in config.items() if not isinstance(v, (list, dict))}
    return _table("architecture", keep)


def _model(repo: str, name: str, description: str, prompt: str = "alpaca") -> str:
    return _table("model", {
        "repo": repo, "name": name, "license": "apache-2.0", "creator": "mcard",
        "base_model": f"{ORG}/tiny-llama", "quantized_by": "mcard demo", "description": description,
        "prompt": prompt,
    })


def _write_registry(registry: Path, config: dict[str, Any], broken: bool) -> None:
    arch = _architecture(config)
    gptq_text = _model(GPTQ_REPO, "Tiny Llama GPTQ",
                       "A tiny llama-shaped model quantized with GPTQ, one branch per parameter set.") + arch
    for name, (bits, group, act) in GPTQ_BRANCHES.items():
        gptq_text += _table("variants", {
            "branch": name, "format": "gptq", "bits": bits, "group_size": group, "desc_act": act,
            "made_with": "mcard builders", "description": f"{bits}-bit, group size {group}" + (", act-order" if act else ""),
        }, array=True)
    if broken:
        for name, why in BROKEN_BRANCHES.items():
            group = 32 if "32g" in name else 128
            gptq_text += _table("variants", {
                "branch": name, "format": "gptq", "bits": 4, "group_size": group, "desc_act": False,
                "made_with": "mcard builders", "description": f"broken on purpose: {why}",
            }, array=True)
    (registry / "tiny-llama-gptq.toml").write_text(gptq_text)

    awq_text = _model(AWQ_REPO, "Tiny Llama AWQ", "A tiny llama-shaped model quantized with AWQ (GEMM).") + arch
    awq_text += _table("variants", {"branch": "main", "format": "awq", "bits": 4, "group_size": 128,
                                    "made_with": "mcard builders", "description": "4-bit AWQ, GEMM layout"}, array=True)
    (registry / "tiny-llama-awq.toml").write_text(awq_text)

    gguf_text = _model(GGUF_REPO, "Tiny Llama GGUF", "A tiny llama-shaped model in GGUF, several quant types on main.") + arch
    for t in GGUF_TYPES:
        gguf_text += _table("variants", {"file": f"tiny-llama.{t}.gguf", "format": "gguf", "type": t,
                                         "description": f"{t} mix as llama.cpp assigns it"}, array=True)
    (registry / "tiny-llama-gguf.toml").write_text(gguf_text)

    lora_text = _model(LORA_REPO, "Tiny Llama QLoRA adapter", "A LoRA adapter (r 8) over all linears of the tiny llama.",
                       prompt="guanaco") + arch
    lora_text += _table("variants", {"branch": "main", "format": "lora", "r": 8, "alpha": 16,
                                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"],
                                     "description": "adapter weights only"}, array=True)
    (registry / "tiny-llama-qlora.toml").write_text(lora_text)


def run_demo(out: str | Path, broken: bool = False, smoke: bool = True,
             progress: Any = None, publish: bool = True, republished: list[Any] | None = None,
             while_serving: Any = None) -> tuple[list[Any], Path]:
    """Build, serve, ``sync --render``, then the publish step; returns the sync results and the output folder.

    With ``publish``, :func:`mcard.pipeline.demo_publish.publish_step` packages the tiny
    variants, publishes them to the local Hub and fetches them back; its sync
    results follow the others, and the unchanged republish of each repo
    (:class:`mcard.pipeline.publish.PublishResult`) is appended to ``republished``.
    ``while_serving(endpoint, results)``, when given, is called last with the local Hub
    still running (``mcard demo --serve`` blocks there until Ctrl-C); the server stops when it returns.
    Downloaded variants stay in ``out/hf-cache`` (the Hugging Face cache layout).
    """
    from ..testing.hub import LocalHub
    from .demo_publish import DEMO_TOKEN, publish_step
    from .sync import SyncOptions, sync

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mcard-demo-") as tmp:
        repos = build(tmp, broken=broken)
        registry = out / "registry"
        registry.mkdir(exist_ok=True)
        for entry in repos.registry.glob("*.toml"):
            (registry / entry.name).write_text(entry.read_text())
        with LocalHub(repos.mirrors, token=DEMO_TOKEN) as hub:
            options = SyncOptions(render=True, smoke=smoke, report_dir=out / "reports", force=True,
                                  endpoint=hub.endpoint, cache_dir=out / "hf-cache")
            results = sync(registry, options, progress=progress)
            if publish:
                published, again = publish_step(Path(tmp), out, hub.endpoint, smoke, progress)
                results += published
                if republished is not None:
                    republished.extend(again)
            if while_serving is not None:
                while_serving(hub.endpoint, results)
    return results, out
