"""``validate`` for GGUF: layout, split sets, tensor set, llama.cpp's mix, size and runtimes.

Private to :mod:`mcard.formats.gguf` (its ``check``). Reads headers only; a model split
over several files (gguf-split shards, raw ``-split-a`` parts) is checked as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.arch import ModelShape
from ...core.report import FileEntry, Report
from ...core.variant import Variant, sniff
from .. import common as _common, ggml_types as gt
from . import NAME, _models, _pad, expected_tensors, expected_types, mix as gguf_mix, runtimes, shape_from_kv, split
from .header import GgufFile, GgufTensor, read


def check(variant: Variant, report: Report) -> None:
    report.format = NAME
    models = _models(variant)
    listed = {e.path for e in report.files}
    for m in models:  # shards or parts beside a single named one
        for rel in m.files:
            if rel not in listed:
                report.files.append(FileEntry(rel, variant.size(rel), sniff(variant.abspath(rel))))
    if len(models) == 1:
        _check_model(variant, models[0], report)
        return
    by_name = {m.name: m for m in models}
    report.params = {"files": sum(len(m.files) for m in models), "models": len(models)}
    _common.file_parts(variant, report, {m.name: m.files for m in models},
                       lambda variant, name, part: _check_model(variant, by_name[name], part))


@dataclass
class _Model:
    """One model's parsed headers: (label, file) per GGUF file, and every tensor with its file's label."""

    files: list[tuple[str, GgufFile]]
    tensors: dict[str, tuple[str, GgufTensor]]

    @property
    def kv(self) -> dict[str, Any]:
        return self.files[0][1].kv


def _open_model(variant: Variant, m: split.GgufModel, report: Report) -> _Model | None:
    """Read every header of the model; findings for missing or inconsistent shards and parts."""
    if m.kind == "parts":
        for name in m.missing:
            report.error("missing-part", name, "", f"raw part {name} of {m.name} is missing: `cat` cannot join the file")
        first = m.files[0]
        part = split.parse_raw_part(first)
        if part is None or part[1] != 0 or sniff(variant.abspath(first)) != "gguf":
            report.error("missing-part", f"{m.name}-split-a", "", f"the first part of {m.name} (with its GGUF header) is missing")
            return None
        total = sum(variant.size(rel) for rel in m.files)
        g = read(variant.abspath(first), file_size=total)
        report.info("split", m.name, "", f"raw byte parts {', '.join(m.files)} ({total} bytes) joined with cat as {m.name}")
        files = [(m.name, g)]
    else:
        files = [(rel, read(variant.abspath(rel))) for rel in m.files]
    if m.kind == "shards":
        _check_shards(m, files, report)
    tensors: dict[str, tuple[str, GgufTensor]] = {}
    for rel, g in files:
        for t in g.tensors:
            if t.name in tensors:
                report.error("duplicate-tensor", rel, t.name, f"tensor also stored in {tensors[t.name][0]}")
                continue
            tensors[t.name] = (rel, t)
    return _Model(files, tensors)


def _check_shards(m: split.GgufModel, files: list[tuple[str, GgufFile]], report: Report) -> None:
    """gguf-split's kv keys: split.no matches the name, split.count and split.tensors.count agree."""
    for name in m.missing:
        report.error("missing-shard", name, "", f"shard {name} of {m.name} is missing: llama.cpp needs all {m.count}")
    total = sum(len(g.tensors) for _rel, g in files)
    for rel, g in files:
        shard = split.parse_shard_name(rel)
        assert shard is not None, rel  # split.group made this model of files named as shards
        _prefix, index, count = shard
        info = g.split
        if info is None:
            report.error("bad-split", rel, "split.no", f"named as shard {index + 1} of {count} but has no "
                         f"{split.KV_SPLIT_NO}/{split.KV_SPLIT_COUNT}/{split.KV_SPLIT_TENSORS_COUNT} keys")
            continue
        no, n, n_tensors = info
        if no != index:
            report.error("bad-split", rel, split.KV_SPLIT_NO,
                         f"split.no {no}, but the name says shard {index + 1} (split.no {index})")
        if n != count:
            report.error("bad-split", rel, split.KV_SPLIT_COUNT, f"split.count {n}, but the name says {count} shards")
        if not m.missing and n_tensors != total:
            report.error("bad-split", rel, split.KV_SPLIT_TENSORS_COUNT,
                         f"split.tensors.count {n_tensors}, but the {len(files)} shards hold {total} tensors")
    report.info("split", m.name, "", f"gguf-split shard set: {len(files)} of {m.count} shards, {total} tensors")


def _has_imatrix(kv: dict[str, Any]) -> bool:
    """llama-quantize records an importance matrix in the ``quantize.imatrix.*`` keys."""
    return any(k.startswith("quantize.imatrix.") for k in kv)


def _check_model(variant: Variant, m: split.GgufModel, report: Report) -> None:
    model = _open_model(variant, m, report)
    report.config_source = m.files[0] if m.kind != "parts" else m.name
    if model is None:
        return
    kv = model.kv
    file_type = kv.get("general.file_type")
    ftype = gt.FTYPE_BY_ID.get(file_type) if isinstance(file_type, int) else None
    report.params = {"version": model.files[0][1].version, "architecture": kv.get("general.architecture"),
                     "file_type": ftype or kv.get("general.file_type"), "tensors": len(model.tensors)}
    if len(m.files) > 1:
        report.params.update(split=m.kind, files=len(m.files))
    if _has_imatrix(kv):
        report.params["imatrix"] = True
    for entry in report.files:
        if entry.path in m.files:
            entry.expected_size = None
    for rel, g in model.files:
        _check_layout(g, rel, report)
    unknown = [(rel, t) for rel, t in model.tensors.values() if not t.known]
    for rel, t in unknown:
        report.error("bad-type", rel, t.name, f"unknown ggml type id {t.type_id} (a newer llama.cpp's?): "
                     f"not checked; it occupies {t.nbytes} bytes up to the next tensor "
                     f"({t.nbytes * 8 / max(1, t.rows * t.cols):.2f} bits per weight)")
    for rel, t in model.tensors.values():
        if t.known and t.cols % gt.block(t.type)[0]:
            report.error("bad-shape", rel, t.name,
                         f"row length {t.cols} is not a multiple of {t.type}'s block of {gt.block(t.type)[0]}")
    shape = shape_from_kv(kv, set(model.tensors))
    if shape is None:
        report.info("unknown-architecture", model.files[0][0], "general.architecture",
                    f"architecture {kv.get('general.architecture')!r}: tensor set and mix not checked")
    else:
        _check_tensor_set(model, shape, report)
        if ftype is not None:
            _check_mix(model, shape, ftype, report)
            if m.missing:
                report.info("size", m.name, "", f"size not predicted: {len(m.missing)} of the set's {m.count} files are missing")
            else:
                _check_predicted(model, shape, ftype, report)
        else:
            report.info("mix-mismatch", model.files[0][0], "general.file_type",
                        f"general.file_type {kv.get('general.file_type')!r} not modelled: mix not checked")
    report.runtimes = runtimes({t.type for _rel, t in model.tensors.values()})


def _check_layout(g: GgufFile, rel: str, report: Report) -> None:
    end = g.data_start
    prev: GgufTensor | None = None
    for t in sorted(g.tensors, key=lambda t: t.offset):
        if (t.offset - g.data_start) % g.alignment:
            report.error("bad-offsets", rel, t.name, f"offset {t.offset - g.data_start} is not aligned to {g.alignment}")
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            report.error("bad-offsets", rel, t.name, f"data overlaps {prev.name}")
        if t.offset + t.nbytes > g.file_size:
            report.error("bad-offsets", rel, t.name,
                         f"data ends at {t.offset + t.nbytes}, past the end of the file ({g.file_size})")
        end = max(end, t.offset + t.nbytes)
        prev = t
    padded = g.data_start + _pad(end - g.data_start, g.alignment)
    for entry in report.files:
        if entry.path == rel:
            entry.expected_size = padded
    if g.file_size < end:
        report.error("file-size", rel, "", f"file is {g.file_size} bytes but its header implies {padded}: truncated")
    elif g.file_size > padded:
        report.warning("file-size", rel, "", f"file is {g.file_size} bytes, {g.file_size - padded} more than its header implies")


def _check_tensor_set(model: _Model, shape: ModelShape, report: Report) -> None:
    expected = expected_tensors(shape)
    first = model.files[0][0]
    for name, (dims, _role, _layer) in expected.items():
        found = model.tensors.get(name)
        if found is None:
            report.error("missing-tensor", first, name, f"expected from the hparams, dims {list(dims)}")
        elif tuple(found[1].shape) != dims:
            report.error("wrong-shape", found[0], name, f"dims {list(found[1].shape)}, the hparams imply {list(dims)}")
    for name, (rel, _t) in model.tensors.items():
        if name not in expected and name != "rope_freqs.weight":
            report.error("unexpected-tensor", rel, name, "not a tensor llama.cpp expects for these hparams")


def _rule_sets(shape: ModelShape, ftype: str, imatrix: bool) -> list[tuple[str, dict[str, str]]]:
    """(label, expected types) per rule version llama.cpp has used, newest first (see :mod:`.mix`)."""
    out = []
    for rules in gguf_mix.RULES:
        for with_imatrix in (imatrix, not imatrix):
            try:
                types = expected_types(shape, ftype, rules, has_imatrix=with_imatrix)
            except gguf_mix.NoFallback:
                continue
            label = ("" if rules == "current" else "older ") + gguf_mix.RULE_LABELS[rules] + ("" if with_imatrix == imatrix else
                                            " with an importance matrix" if with_imatrix else " without an importance matrix")
            out.append((label, types))
            if rules == "2023" and "output.weight" in types:  # early GGUF: 2023 mixes with a Q6_K output
                current = expected_types(shape, ftype, "current")
                out.append(("older 2023 GGUF (output Q6_K)", dict(types, **{"output.weight": current["output.weight"]})))
    return out


def _check_mix(model: _Model, shape: ModelShape, ftype: str, report: Report) -> None:
    first = model.files[0][0]
    have = {n: t.type for n, (_rel, t) in model.tensors.items() if t.known}
    imatrix = _has_imatrix(model.kv)
    sets = _rule_sets(shape, ftype, imatrix)
    if not sets:
        report.info("mix", first, "", f"llama-quantize cannot write {ftype} for these row lengths "
                    "(no fallback type): tensor types not checked against a mix")
        return
    label, current = sets[0]
    diffs = {n: (have[n], e) for n, e in current.items() if n in have and have[n] != e}
    if not diffs:
        report.info("mix", first, "", f"tensor types match llama.cpp's {label} {ftype} mix")
        return
    for label, rules in sets[1:]:
        if all(have.get(n, e) == e for n, e in rules.items()):
            report.warning("mix-mismatch", first, "",
                           f"{len(diffs)} tensor types follow llama.cpp's {label} {ftype} rules, not the current "
                           f"ones{' with the importance matrix the file records' if imatrix else ''}")
            return
    if set(diffs) <= {"output.weight", "token_embd.weight"}:
        report.warning("mix-mismatch", first, ", ".join(sorted(diffs)),
                       "types differ from the mix only where llama-quantize allows overrides "
                       + "; ".join(f"{n}: {a} (mix {e})" for n, (a, e) in sorted(diffs.items())))
        return
    for name, (actual, exp) in sorted(diffs.items())[:20]:
        report.error("mix-mismatch", model.tensors[name][0], name, f"type {actual}, llama.cpp's {ftype} mix gives {exp}")
    if len(diffs) > 20:
        report.error("mix-mismatch", first, "", f"... and {len(diffs) - 20} more tensors differ from the {ftype} mix")


def _check_predicted(model: _Model, shape: ModelShape, ftype: str, report: Report) -> None:
    """Each file's own header size plus its tensors' data at the mix's types, padded."""
    try:
        mix = expected_types(shape, ftype, has_imatrix=_has_imatrix(model.kv))
    except gguf_mix.NoFallback:
        return
    dims = {n: d for n, (d, _r, _l) in expected_tensors(shape).items()}
    predicted = with_own = 0
    for _rel, g in model.files:
        predicted += g.data_start
        with_own += g.data_start
        for t in g.tensors:
            if t.name in dims:
                predicted += _pad(gt.tensor_bytes(mix[t.name], dims[t.name]), g.alignment)
            with_own += _pad(t.nbytes, g.alignment)
    report.predicted_bytes = predicted
    actual = sum(g.file_size for _rel, g in model.files)
    where = model.files[0][0] if len(model.files) == 1 else ""
    if actual == predicted:
        report.info("size", where, "", f"size {actual} bytes equals the prediction for {ftype} exactly")
    else:
        delta = actual - predicted
        sev = report.warning if abs(delta) > 0.01 * predicted else report.info
        sev("size", where, "", f"size {actual} bytes vs predicted {predicted} for {ftype} ({delta:+d}); "
            f"with the file's own tensor types: {with_own}")
