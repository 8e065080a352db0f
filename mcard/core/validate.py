"""``mcard validate``: inspect a variant from its headers and configs alone.

The checks shared by every safetensors-based format (header layout, shard
index, duplicate tensors, pickle files) live here; everything specific to a
format is asked of its spec (:mod:`mcard.formats`).
"""

from __future__ import annotations

from pathlib import Path

from .. import formats
from .errors import UnusableInput
from .jsonio import load_json_object
from .report import FileEntry, Report
from .variant import Variant, misnamed_files


def inspect(path: str | Path) -> Report:
    """Inspect a variant folder or file. Raises :class:`UnusableInput` when nothing can be read."""
    variant = Variant.open(path)
    report = Report(path=str(variant.path))
    if not variant.files:
        raise UnusableInput("empty folder: no model files in it", variant.path)

    for rel in variant.files:
        report.files.append(FileEntry(rel, variant.size(rel), variant.kinds[rel]))

    spec = formats.detect(variant)
    misnamed = misnamed_files(variant)
    if spec is None and not variant.headers:
        if misnamed:  # say what is wrong with the file, not that there is no model
            rel, problem = misnamed[0]
            raise UnusableInput(problem, variant.abspath(rel) if variant.single_file is None else variant.path)
        raise UnusableInput(
            "no model in it (no safetensors, GGUF, GGML or adapter files found)", variant.path
        )
    for rel, problem in misnamed:  # next to a readable model: a finding, not silence
        report.error("bad-magic", rel, "", problem)
    if variant.headers:  # safetensors-based: shared structural checks first
        _check_safetensors_layout(variant, report)
        _check_shard_index(variant, report)
    if spec is None:
        report.format = "safetensors"
        report.warning(
            "unknown-layout", "", "",
            "safetensors tensors match no known model layout (no .weight, .qweight or adapter tensors); "
            "only the file structure was checked",
        )
    else:
        spec.check(variant, report)
    _check_pickles(variant, report)
    return report


def _check_safetensors_layout(variant: Variant, report: Report) -> None:
    for rel, header in variant.headers.items():
        for where, message in header.problems:
            report.error("bad-offsets", rel, where, message)
        for entry in report.files:
            if entry.path == rel:
                entry.expected_size = header.expected_file_size
        if header.expected_file_size != header.file_size:
            report.error(
                "file-size",
                rel,
                "",
                f"file is {header.file_size} bytes but its header implies {header.expected_file_size}",
            )
    for name, first, second in variant.duplicates:
        report.error("duplicate-tensor", second, name, f"tensor also stored in {first}")


def _check_shard_index(variant: Variant, report: Report) -> None:
    for rel in variant.files:
        if not rel.endswith(".safetensors.index.json"):
            continue
        index = load_json_object(variant.abspath(rel))
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            report.error("bad-index", rel, "weight_map", "index has no weight_map object")
            continue
        base = Path(rel).parent
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            shard_rel = (base / shard).as_posix()
            if shard_rel not in variant.headers:
                report.error("missing-shard", rel, shard, f"shard {shard} named in the index is not present")
        for name, shard in weight_map.items():
            shard_rel = (base / shard).as_posix()
            header = variant.headers.get(shard_rel)
            if header is not None and name not in header.tensors:
                report.error("index-mismatch", rel, name, f"index places it in {shard}, which does not hold it")
        mapped = set(weight_map)
        for name, (file, _info) in variant.tensors.items():
            if name not in mapped:
                report.error("index-mismatch", file, name, f"tensor is not listed in {rel}")
        total = index.get("metadata", {}).get("total_size") if isinstance(index.get("metadata"), dict) else None
        if isinstance(total, int):
            actual = sum(
                info.nbytes_declared for name, (file, info) in variant.tensors.items() if name in mapped
            )
            if total != actual:
                report.warning(
                    "index-total-size", rel, "metadata.total_size",
                    f"index says {total} bytes of tensors, the shards hold {actual}",
                )


def _check_pickles(variant: Variant, report: Report) -> None:
    pickles = variant.files_of("pickle")
    has_safe = bool(variant.files_of("safetensors"))
    for rel in pickles:
        if has_safe:
            report.warning(
                "pickle-file", rel, "",
                "pickle weights next to safetensors: loaders prefer safetensors; this file is obsolete and unsafe to load "
                "(never unpickled here)",
            )
