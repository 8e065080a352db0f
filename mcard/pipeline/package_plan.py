"""What ``mcard package`` will write for each branch, decided before anything is written.

For every branch of an entry: where each variant's quantized output is
(:func:`source_of`), which of its files become which files of the branch
(renamed or sharded weights, configs built from the entry, tokenizer and
generation files, the license), what is left out and why. Everything that
can refuse the package (a missing output, a pickle, two files landing on one
path, a file over the Hub's limit) does so here, before a byte is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UnusableInput
from ..core.jsonio import load_json_object
from ..hub.rules import check_path
from ..registry.entry import Entry, RegistryVariant
from .package_configs import TOKENIZER_FILES, model_config, quantization_config

GENERATED = ("README.md", ".gitattributes")  # written after planning, for every branch


@dataclass
class Item:
    """A file of a branch about to be written: copied or linked from ``src``, ``data``, or ``shards``."""

    path: str
    origin: str
    src: Path | None = None
    data: bytes | None = None
    shards: Any = None  # (SafetensorsHeader, stem, max shard bytes) for a weights file to shard


def branch_groups(entry: Entry) -> dict[str, list[RegistryVariant]]:
    """Branch -> its variants, in entry order with main first."""
    groups: dict[str, list[RegistryVariant]] = {}
    for v in entry.variants:
        groups.setdefault(v.branch, []).append(v)
    return dict(sorted(groups.items(), key=lambda kv: kv[0] != "main"))


def branch_folder(branch: str) -> str:
    return branch.replace("/", "%2F")


def source_of(entry: Entry, v: RegistryVariant, from_dir: Path | None) -> Path:
    """Where the quantizer left variant ``v``: its ``source`` in the entry, else ``DIR/<branch>`` / ``DIR/<file>``."""
    if v.source:  # inside the entry's folder or --registry-root, as every path in an entry
        path, how = entry.file(v.source, f"variant {v.key}: source"), f"variants source {v.source!r}"
    elif from_dir is None:
        raise UnusableInput(f"variant {v.key}: no --from DIR given and no `source` for it in the entry", entry.path)
    else:
        name = v.file if v.spec.files_are_variants else v.branch
        assert name is not None, "a file variant has `file`: its format requires the key"
        path = from_dir / name
        how = "DIR/<file>" if v.spec.files_are_variants else "DIR/<branch>/"
    if not path.exists():
        raise UnusableInput(f"variant {v.key}: its quantized output is missing (expected {how})", path)
    return path


def _refuse_pickle(path: Path, v: RegistryVariant) -> None:
    from ..core.variant import sniff

    if sniff(path) == "pickle":
        raise UnusableInput(f"variant {v.key}: a pickle file; mcard never packages pickles "
                            "(convert it to safetensors, or move it out of the folder)", path)


def _check_size(path: Path, size: int, limit: int, hint: str) -> None:
    if size > limit:
        raise UnusableInput(f"{size:,} bytes is over the Hub's limit of {limit:,} bytes per file; {hint}", path)


def _plan_weights(v: RegistryVariant, src: Path, files: list[Path], max_shard: int, limit: int
                  ) -> tuple[list[Item], str, set[Path]]:
    """The weights of a branch variant: (items, model_file_base_name, source files used)."""
    from ..core.safetensors_io import read_header
    from ..core.variant import sniff

    weights = [p for p in files if sniff(p) == "safetensors"]
    index = [p for p in files if p.name.endswith(".safetensors.index.json")]
    name = v.file or v.spec.weights_name
    if len(index) > 1:
        raise UnusableInput(f"variant {v.key}: {index[0].name} and {index[1].name} would both index branch "
                            f"{v.branch}; keep one", src)
    if index:
        for p in weights:
            _check_size(p, p.stat().st_size, limit, "shard it with a smaller max_shard_size")
        items = [Item(p.name, str(p), src=p) for p in [*index, *weights]]
        return items, index[0].name[: -len(".safetensors.index.json")], {*index, *weights}
    if len(weights) > 1:
        raise UnusableInput(f"variant {v.key}: {weights[0].name} and {weights[1].name} would both become {name} on "
                            f"branch {v.branch}; keep one, or add the .safetensors.index.json that shards them", src)
    if not weights:
        raise UnusableInput(f"variant {v.key}: no safetensors weights in the quantized output", src)
    w, stem = weights[0], name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    size = w.stat().st_size
    if size > max_shard and v.spec.adapter_config is None and not v.file:  # an adapter is never sharded
        header = read_header(w)
        for t in header.tensors.values():
            _check_size(w, t.nbytes_declared, limit, f"tensor {t.name} alone is too big for one file")
        return [Item(f"{stem}.safetensors.index.json", f"{w} (sharded)", shards=(header, stem, max_shard))], stem, {w}
    _check_size(w, size, limit, "pass a smaller --max-shard-size to shard it")
    return [Item(name, str(w) + ("" if w.name == name else " (renamed)"), src=w)], stem, {w}


def _base_config(entry: Entry, src: Path, base_dir: Path | None) -> tuple[dict[str, Any], str]:
    for folder, what in ((src, "the quantized output"), (base_dir, "the base model")):
        if folder is not None and (folder / "config.json").is_file():
            return load_json_object(folder / "config.json"), f"{what}'s config.json"
    if entry.architecture is not None:
        return dict(entry.architecture), "the entry's [architecture]"
    raise UnusableInput("no config.json in the quantized output or the base model folder, and no [architecture] "
                        "in the entry", src)


def plan_branch_variant(entry: Entry, v: RegistryVariant, src: Path, base_dir: Path | None, max_shard: int,
                         limit: int) -> tuple[list[Item], list[tuple[str, str]]]:
    if not src.is_dir():
        raise UnusableInput(f"variant {v.key}: a {v.format} variant is a folder (the quantizer's output), "
                            "not a file", src)
    files = sorted(p for p in src.iterdir() if p.is_file())
    for p in files:
        _refuse_pickle(p, v)
    items, base_name, used = _plan_weights(v, src, files, max_shard, limit)
    spec = v.spec
    if spec.adapter_config is not None:  # an adapter's own config instead of config.json
        adapter = src / spec.adapter_config
        if not adapter.is_file():
            raise UnusableInput(f"variant {v.key}: no {spec.adapter_config} in the adapter's folder", src)
        items.append(Item(spec.adapter_config, str(adapter), src=adapter))
        used.add(adapter)
    else:
        cfg, cfg_origin = _base_config(entry, src, base_dir)
        if (src / "config.json").is_file():
            used.add(src / "config.json")
        qsource = cfg.get("quantization_config") if isinstance(cfg.get("quantization_config"), dict) else None
        qfile = spec.quant_config_file  # the quantizer's own quant config beside config.json (GPTQ)
        if qfile is not None and (src / qfile).is_file():
            qsource = load_json_object(src / qfile)
            used.add(src / qfile)
        qc = quantization_config(v, qsource, base_name)
        items.append(Item("config.json", f"{cfg_origin} + the entry's parameters",
                           data=(json.dumps(model_config(v, cfg, qc), indent=2) + "\n").encode()))
        if qfile is not None:
            items.append(Item(qfile, "the entry's parameters",
                               data=(json.dumps(quantization_config(v, qsource, base_name), indent=2) + "\n").encode()))
    for name in TOKENIZER_FILES:
        for folder in (src, base_dir):
            if folder is not None and (folder / name).is_file():
                items.append(Item(name, str(folder / name), src=folder / name))
                used.add(folder / name)
                break
    ignored = [(str(p), "not a file the runtimes load") for p in files if p not in used]
    ignored += [(str(p), "a subfolder") for p in sorted(src.iterdir()) if p.is_dir()]
    return items, ignored


def plan_file_variant(v: RegistryVariant, src: Path, limit: int) -> list[Item]:
    """The files of a GGUF/GGML variant: its one file, or every file of its gguf-split shard set (raw parts).

    A split variant is named by one of its files (the first shard); the whole set goes on the
    branch under its own names, as llama.cpp finds the shards by name.
    """
    from ..core.variant import sniff
    from ..formats.gguf.split import expand, is_split_name

    if not src.is_file():
        raise UnusableInput(f"variant {v.key}: a {v.format} variant is one file, not a folder", src)
    _refuse_pickle(src, v)
    from .. import formats

    if sniff(src) not in {kind for s in formats.specs() if s.files_are_variants for kind in s.file_kinds}:
        raise UnusableInput(f"variant {v.key}: not a GGUF or GGML file", src)
    hint = ("split it with llama.cpp (`llama-gguf-split --split-max-size 48G IN OUT`), which writes "
            "OUT-00001-of-0000N.gguf shards, and name the first shard as the variant's file (the set is one variant)")
    if not is_split_name(src.name):
        _check_size(src, src.stat().st_size, limit, hint)
        return [Item(v.file or src.name, str(src), src=src)]
    if v.file and v.file != src.name:
        raise UnusableInput(f"variant {v.key}: the files of a split GGUF keep their names (llama.cpp finds the "
                            f"shards by name): name the variant's file {src.name!r}", src)
    siblings = expand(src.name, sorted(p.name for p in src.parent.iterdir() if p.is_file()))
    for name in siblings:
        _check_size(src.parent / name, (src.parent / name).stat().st_size, limit, hint)
    return [Item(name, str(src.parent / name), src=src.parent / name) for name in siblings]


def license_item(entry: Entry) -> Item | None:
    if not entry.model.license_file:
        return None
    path = entry.file(entry.model.license_file, "model.license_file")
    if not path.is_file():
        raise UnusableInput(f"model.license_file: no such file {entry.model.license_file!r}", entry.path)
    name = path.name if path.name.upper().startswith("LICENSE") else "LICENSE"
    return Item(name, str(path), src=path)


def check_collisions(branch: str, items: list[Item]) -> None:
    from .package_shard import plan_shards, shard_name

    paths: list[str] = list(GENERATED)
    for item in items:
        if item.shards is not None:
            header, stem, max_shard = item.shards
            n = len(plan_shards(header, max_shard))
            paths += [shard_name(stem, i + 1, n) for i in range(n)]
        paths.append(item.path)
    seen: dict[str, str] = {}
    for p in paths:
        check_path(p)
        if p.lower() in seen:
            raise UnusableInput(f"branch {branch}: {seen[p.lower()]!r} and {p!r} would be the same file on the branch "
                                "(names must differ in more than letter case)")
        seen[p.lower()] = p
