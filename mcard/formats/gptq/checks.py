"""``validate`` for GPTQ: config, tensor set, g_idx, zero points, size, runtimes.

Reads headers, configs and the small ``g_idx`` / ``qzeros`` tensors, one linear
at a time; never ``qweight``. Per-linear problems of one kind are reported as
one finding naming the first linear and the count.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.arch import ModelShape
from ...core.report import Report
from ...core.variant import Variant
from .. import common as _common, gptq
from ..packing import groups_of, pack_cols, period, unpack_cols
from .config import V1, V2, VALID_BITS, params_ok, read_quant_config

_PARAM_KEYS = ("bits", "group_size", "desc_act", "sym", "checkpoint_format", "damp_percent")


@dataclass(frozen=True)
class _Lin:
    name: str
    k: int
    n: int
    bias: bool  # bias required


def _linears(variant: Variant, shape: ModelShape | None) -> list[_Lin]:
    if shape is not None:
        return [_Lin(lin.name, lin.in_features, lin.out_features, lin.bias) for lin in shape.linears()]
    out = []
    for name in gptq.quantized_linears(variant):  # no config.json: dimensions from g_idx and scales
        g_idx, scales = variant.tensors.get(f"{name}.g_idx"), variant.tensors.get(f"{name}.scales")
        if g_idx and scales and len(g_idx[1].shape) == 1 and len(scales[1].shape) == 2:
            out.append(_Lin(name, g_idx[1].shape[0], scales[1].shape[1], False))
    return out


def _implied(variant: Variant, lin: _Lin) -> tuple[int, int] | None:
    """(bits, group size) the headers of one linear imply, or None when they do not say."""
    qw, qz, sc = (variant.tensors.get(lin.name + s) for s in (".qweight", ".qzeros", ".scales"))
    if not (qw and sc) or len(qw[1].shape) != 2 or len(sc[1].shape) != 2 or lin.k <= 0 or lin.n <= 0:
        return None
    rows, groups = qw[1].shape[0], sc[1].shape[0]
    bits = rows * 32 // lin.k if rows * 32 % lin.k == 0 else None
    if bits not in VALID_BITS and qz and len(qz[1].shape) == 2 and qz[1].shape[1] * 32 % lin.n == 0:
        bits = qz[1].shape[1] * 32 // lin.n
    if bits not in VALID_BITS or groups < 1:
        return None
    return bits, -1 if groups == 1 else -(-lin.k // groups)


def _consistent(lin: _Lin, bits: int, group_size: int, implied: tuple[int, int]) -> bool:
    ib, ig = implied
    return ib == bits and groups_of(lin.k, group_size)[1] == groups_of(lin.k, ig)[1]


def _effective(variant: Variant, report: Report, lins: list[_Lin], params: dict[str, Any],
               source: str | None) -> tuple[int, int] | None:
    """The (bits, group size) to check against: the config's, unless the tensors clearly say otherwise."""
    implied = {lin.name: _implied(variant, lin) for lin in lins}
    votes = Counter(v for v in implied.values() if v is not None)
    top = votes.most_common(1)[0][0] if votes else None
    if not params_ok(params):
        return top
    bits, gs = int(params["bits"]), int(params["group_size"])
    bad = [lin for lin in lins if (imp := implied[lin.name]) is not None and not _consistent(lin, bits, gs, imp)]
    if top is None or len(bad) * 2 <= len(lins):
        return bits, gs
    first = bad[0]
    qw, sc = variant.tensors[first.name + ".qweight"][1], variant.tensors[first.name + ".scales"][1]
    report.error(
        "config-mismatch", source or "", "bits/group_size",
        f"config says bits {bits} group_size {gs}, but the tensors of {len(bad)}/{len(lins)} linears imply "
        f"bits {top[0]} group_size {top[1]} (e.g. {first.name}: qweight {list(qw.shape)}, scales "
        f"{list(sc.shape)} for {first.k} inputs)",
    )
    return top


def _check_g_idx(g_idx: np.ndarray, lin: _Lin, group_size: int, desc_act: bool) -> tuple[str, str] | None:
    g, groups = groups_of(lin.k, group_size)
    trivial = np.arange(lin.k) // g
    if g_idx.min() < 0 or g_idx.max() >= groups:
        return "g_idx-mismatch", f"g_idx values span [{g_idx.min()}, {g_idx.max()}], outside [0, {groups})"
    if not desc_act:
        if not np.array_equal(g_idx, trivial):
            k = int(np.flatnonzero(g_idx != trivial)[0])
            return "g_idx-mismatch", f"desc_act is false but g_idx[{k}] = {g_idx[k]}, not {k} // {g} = {trivial[k]}"
        return None
    counts = np.bincount(g_idx, minlength=groups)
    want = np.full(groups, g)
    want[-1] = lin.k - (groups - 1) * g
    if not np.array_equal(counts, want):
        j = int(np.flatnonzero(counts != want)[0])
        return "g_idx-mismatch", f"act-order group {j} has {counts[j]} members, expected {want[j]}"
    if groups > 1 and np.array_equal(g_idx, trivial):
        return "act-order-trivial", "desc_act is true but g_idx is k // group_size: act-order metadata without a reordering"
    return None


def _check_zeros(stored: np.ndarray, bits: int, sym: bool, fmt: str) -> tuple[str, str] | None:
    maxq = (1 << bits) - 1
    true = stored if fmt == V2 else (stored + 1) % (maxq + 1)
    if sym:
        mid = 1 << (bits - 1)
        if not np.all(true == mid):
            vals = sorted({int(v) for v in np.unique(stored)[:4]})
            hint = " (these are v2 zero points under a v1 checkpoint_format)" if fmt == V1 and np.all(stored == mid) else ""
            symmetric = f"{mid}{' - 1' if fmt == V1 else ''}"
            return "sym-zeros", f"sym is true but stored zeros {vals} are not the symmetric {symmetric}{hint}"
        return None
    if fmt == V1 and np.any(stored == maxq):
        count = int(np.count_nonzero(stored == maxq))
        return "lossy-zero-wrap", (
            f"{count} stored zeros are {maxq}: a true zero of 0 wraps to -1 in the v1 format, "
            "and writers that OR the wrapped value in corrupt the neighbouring zeros of that word"
        )
    return None


_SEVERITY = {"act-order-trivial": "warning", "lossy-zero-wrap": "warning"}


@functools.lru_cache(maxsize=32)
def _sym_zero_words(bits: int, fmt: str, width: int) -> np.ndarray:
    """The one packed qzeros row a symmetric checkpoint has (v1: 2^(b-1) - 1 in every slot, e.g. 0x77777777)."""
    mid = 1 << (bits - 1)
    stored = mid - 1 if fmt == V1 else mid
    n_val, n_word = period(bits)
    row = pack_cols(np.full((1, width // n_word * n_val), stored, dtype=np.int64), bits)
    row.setflags(write=False)
    return row


def _per_linear(variant: Variant, report: Report, lins: list[_Lin], bits: int, gs: int, params: dict[str, Any]) -> None:
    found: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    desc_act, sym, fmt = bool(params.get("desc_act")), bool(params.get("sym", True)), str(params.get("checkpoint_format", V1))
    for lin in lins:
        shapes = gptq.tensor_shapes(lin.k, lin.n, bits, gs)
        gi = variant.tensors.get(lin.name + ".g_idx")
        if gi and gi[1].dtype == "I32" and gi[1].shape == shapes[".g_idx"]:
            hit = _check_g_idx(variant.read(lin.name + ".g_idx").astype(np.int64), lin, gs, desc_act)
            if hit:
                found[hit[0]].append((gi[0], lin.name + ".g_idx", hit[1]))
        qz = variant.tensors.get(lin.name + ".qzeros")
        if qz and qz[1].dtype == "I32" and qz[1].shape == shapes[".qzeros"] and fmt in (V1, V2):
            raw = variant.read(lin.name + ".qzeros")
            if sym and np.array_equal(raw, np.broadcast_to(_sym_zero_words(bits, fmt, raw.shape[1]), raw.shape)):
                continue  # the common case, checked on the packed words without unpacking
            stored = unpack_cols(raw, bits)[:, :lin.n]
            hit = _check_zeros(stored, bits, sym, fmt)
            if hit:
                found[hit[0]].append((qz[0], lin.name + ".qzeros", hit[1]))
    for code, hits in found.items():
        file, where, message = hits[0]
        if len(hits) > 1:
            message += f" ({len(hits)} linears in all)"
        add = report.warning if _SEVERITY.get(code) == "warning" else report.error
        add(code, file, where, message)


def check(variant: Variant, report: Report) -> None:
    report.format = gptq.NAME
    params, source, findings = read_quant_config(variant)
    report.findings.extend(findings)
    report.config_source = source
    if source is None and not any(f.code == "bad-config" for f in findings):  # an unparseable one is its own finding
        report.warning("no-quant-config", "", "", "no quantize_config.json or quantization_config: parameters read from tensors")
    shape = _common.model_shape(variant, report)
    lins = _linears(variant, shape)
    eff = _effective(variant, report, lins, params, source)
    report.params = {k: params[k] for k in _PARAM_KEYS if k in params}
    if eff is None:
        report.error("no-linears", "", "", "no GPTQ linear with usable qweight/scales tensors")
        return
    bits, gs = eff
    report.params.update(bits=bits, group_size=gs)
    if shape is not None:
        expected, optional = gptq.expected_tensors(shape, bits, gs, bias=True)
        _common.check_tensor_set(variant, report, expected, optional, ignore=lambda n: n.endswith((".rotary_emb.inv_freq",)))
    else:
        expected, optional = {}, set()
        for lin in lins:
            for suffix, dims in gptq.tensor_shapes(lin.k, lin.n, bits, gs).items():
                expected[lin.name + suffix] = ((gptq._DTYPES[suffix],), dims)
                if suffix == ".bias":
                    optional.add(lin.name + suffix)
        _common.check_tensor_set(variant, report, expected, optional, ignore=lambda n: not n.endswith(gptq.SUFFIXES))
    _per_linear(variant, report, lins, bits, gs, params)
    if shape is not None:
        has_bias = any(variant.has(f"{lin.name}.bias") for lin in lins if not lin.bias)
        dtype = _common.linear_weight_dtype(variant.config("config.json"))
        est = gptq.predict_size(shape, bits, gs, bool(params.get("desc_act")), bool(params.get("sym", True)), has_bias, dtype)
        if len(variant.headers) == 1:  # the prediction follows the file: its bias choice and its writer's order
            sized, _opt = gptq.expected_tensors(shape, bits, gs, has_bias, dtype)
            expected_now = {n: (d[0], s) for n, (d, s) in sized.items()}
            predicted = _common.predicted_file_bytes(expected_now, gptq.METADATA, _common.file_order(variant))
            _common.check_predicted_size(report, variant, predicted)
        else:
            report.predicted_bytes = est.total_bytes
    fmt = str(params.get("checkpoint_format", V1))
    report.runtimes = gptq.runtimes(bits, gs, bool(params.get("sym", True)), bool(params.get("desc_act")), fmt)
