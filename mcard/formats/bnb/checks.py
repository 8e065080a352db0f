"""``validate`` for bitsandbytes 4-bit: quant config, per-linear quant states and code books, tensor set, size, runtimes."""

from __future__ import annotations

import math

import numpy as np

from ...core import untrusted
from ...core.arch import Linear
from ...core.errors import UnusableInput
from ...core.report import Report
from ...core.variant import Variant
from .. import common as _common
from . import (
    NAME,
    SAFETENSORS_METADATA,
    TORCH_DTYPES,
    _fp_entries,
    _kept_linear_entries,
    _linear_entries,
    _parse_state,
    _quant_config,
    _skip_list,
    _state_key,
    _state_len,
    _storage,
    load_linear,
    predict_size,
    quantized_linears,
    runtimes,
    skipped,
)
from .quant import (
    CODE_BOOKS,
    DEFAULT_BLOCKSIZE,
    DYNAMIC_MAP,
    NESTED_BLOCKSIZE,
    QUANT_TYPES,
    SUFFIX_NESTED_ABSMAX,
    SUFFIX_NESTED_QUANT_MAP,
    SUFFIX_QUANT_MAP,
)


def _read_small(variant: Variant, name: str) -> np.ndarray | None:
    try:
        return variant.read(name) if variant.has(name) else None
    except UnusableInput:  # bad offsets: reported by the layout checks
        return None


def _check_state(variant: Variant, report: Report, key: str, lin: Linear, qt: str, cfg_qt: str | None, dq: bool) -> None:
    """quant_state JSON: parses, and agrees with the key, the config and the linear's shape."""
    rel = variant.tensors[key][0]
    try:
        raw = _read_small(variant, key)
        if raw is None:
            return
        doc = _parse_state(variant, key)
    except ValueError as exc:
        report.error("bad-quant-state", rel, key, str(exc))
        return
    problems = []
    if doc.get("quant_type") != qt:
        problems.append(f"quant_type {doc.get('quant_type')!r} but the tensor is named for {qt}")
    if cfg_qt is not None and qt != cfg_qt:
        problems.append(f"quant_type {qt} but config.json says bnb_4bit_quant_type {cfg_qt}")
    if doc.get("blocksize") != DEFAULT_BLOCKSIZE:
        problems.append(f"blocksize {doc.get('blocksize')!r}, expected {DEFAULT_BLOCKSIZE}")
    if doc.get("shape") != [lin.out_features, lin.in_features]:
        problems.append(f"shape {doc.get('shape')!r}, expected {[lin.out_features, lin.in_features]}")
    if doc.get("dtype") not in TORCH_DTYPES:
        problems.append(f"dtype {doc.get('dtype')!r} is not one of {', '.join(TORCH_DTYPES)}")
    if dq:
        if doc.get("nested_blocksize") != NESTED_BLOCKSIZE:
            problems.append(f"nested_blocksize {doc.get('nested_blocksize')!r}, expected {NESTED_BLOCKSIZE}")
        off = doc.get("nested_offset")
        if not isinstance(off, (int, float)) or isinstance(off, bool) or not math.isfinite(off):
            problems.append(f"nested_offset {off!r} is not a finite number")
    elif any(k.startswith("nested_") for k in doc):
        problems.append("nested_* fields present but there are no nested_absmax tensors")
    for message in problems:
        report.error("bad-quant-state", rel, key, message)


def _check_code_books(variant: Variant, report: Report, module: str, qt: str, dq: bool) -> None:
    name = f"{module}.{SUFFIX_QUANT_MAP}"
    qmap = _read_small(variant, name)
    if qmap is not None and qmap.shape == (16,):
        if not np.array_equal(qmap.astype(np.float32), np.array(CODE_BOOKS[qt], np.float32)):
            report.error("bad-code-book", variant.tensors[name][0], name, f"quant_map is not the {qt.upper()} code book")
    name = f"{module}.{SUFFIX_NESTED_QUANT_MAP}"
    nmap = _read_small(variant, name) if dq else None
    if nmap is not None and nmap.shape == (256,):
        if not np.allclose(nmap.astype(np.float32), DYNAMIC_MAP, rtol=0, atol=1e-6):
            report.error("bad-code-book", variant.tensors[name][0], name, "nested_quant_map is not bitsandbytes' dynamic map")


def check(variant: Variant, report: Report) -> None:
    report.format = NAME
    cfg = variant.config("config.json")
    qc = _quant_config(cfg)
    report.config_source = "config.json" if qc is not None else None
    cfg_qt: str | None = None
    cfg_dq: bool | None = None
    if qc is None:
        report.warning("no-quant-config", "config.json", "quantization_config",
                       "no bitsandbytes quantization_config: transformers will not load these tensors as 4-bit")
    else:
        if qc.get("load_in_8bit") and not qc.get("load_in_4bit"):
            report.error("unsupported-mode", "config.json", "quantization_config.load_in_8bit",
                         "bitsandbytes 8-bit (LLM.int8) checkpoints are not checked by mcard")
            return
        cfg_qt = str(qc.get("bnb_4bit_quant_type", "fp4"))  # BitsAndBytesConfig defaults
        cfg_dq = bool(qc.get("bnb_4bit_use_double_quant", False))
        if cfg_qt not in QUANT_TYPES:
            report.error("bad-quant-config", "config.json", "quantization_config.bnb_4bit_quant_type",
                         f"{cfg_qt!r} is not one of {', '.join(QUANT_TYPES)}")
            cfg_qt = None
    compute = str((qc or {}).get("bnb_4bit_compute_dtype") or "float32")
    dtype = _common.linear_weight_dtype(cfg)
    shape = _common.model_shape(variant, report) if cfg is not None else None
    if shape is None:  # consistency only: shapes come from each quant_state
        linears = []
        for module in quantized_linears(variant):
            try:
                lin4 = load_linear(variant, module)
            except UnusableInput as exc:
                report.error("bad-quant-state", "", module, exc.message)
                continue
            linears.append(Linear(module, -1, module.rsplit(".", 1)[-1], lin4.in_features, lin4.out_features))
    else:
        linears = shape.linears()
    expected: _common.Expected = _fp_entries(shape, dtype) if shape is not None else {}
    seen_qt: set[str] = set()
    dq_mismatch: list[str] = []
    skip, storage = _skip_list(qc), _storage(qc)
    try:
        kept = [lin for lin in linears if skipped(lin.name, skip)]
    except untrusted.PatternError as exc:
        report.error("bad-quant-config", "config.json", "quantization_config.llm_int8_skip_modules", exc.message)
        return
    for lin in kept:
        expected.update(_kept_linear_entries(lin, dtype))
    linears = [lin for lin in linears if lin not in kept]
    for lin in linears:
        found = _state_key(variant, lin.name)
        qt = found[1] if found else (cfg_qt or "nf4")
        seen_qt.add(qt)
        dq = variant.has(f"{lin.name}.{SUFFIX_NESTED_ABSMAX}") or variant.has(f"{lin.name}.{SUFFIX_NESTED_QUANT_MAP}")
        if found is None and cfg_dq is not None:
            dq = cfg_dq
        if cfg_dq is not None and dq != cfg_dq:
            dq_mismatch.append(lin.name)
        qs_len = variant.tensors[found[0]][1].shape[0] if found and len(variant.tensors[found[0]][1].shape) == 1 else 0
        expected.update(_linear_entries(lin, qt, dq, dtype, qs_len or _state_len(lin, qt, dq, compute), storage=storage))
        if found:
            _check_state(variant, report, found[0], lin, qt, cfg_qt, dq)
        _check_code_books(variant, report, lin.name, qt, dq)
    if dq_mismatch:
        said = "uses" if cfg_dq else "does not use"
        report.error("config-mismatch", "config.json", "quantization_config.bnb_4bit_use_double_quant",
                     f"config {said} double quantization but {len(dq_mismatch)} linear(s) disagree, "
                     f"first {dq_mismatch[0]}")
    report.params = {"quant_type": cfg_qt or ",".join(sorted(seen_qt)) or None, "double_quant": cfg_dq,
                     "compute_dtype": compute, "blocksize": DEFAULT_BLOCKSIZE, "linears": len(linears)}
    if kept:
        report.params["skipped_linears"] = len(kept)
    if storage != "U8":
        report.params["quant_storage"] = storage
    if shape is not None:
        _common.check_tensor_set(variant, report, expected, ignore=lambda n: n.endswith(".rotary_emb.inv_freq"))
        if len(variant.headers) == 1:
            predicted = _common.predicted_file_bytes({n: (d[0], s) for n, (d, s) in expected.items()}, SAFETENSORS_METADATA)
            _common.check_predicted_size(report, variant, predicted)
        else:
            report.predicted_bytes = predict_size(shape, quant_type=cfg_qt or "nf4", double_quant=bool(cfg_dq),
                                                  dtype=dtype, compute_dtype=compute, skip_modules=skip,
                                                  quant_storage=storage).total_bytes
    report.runtimes = runtimes(cfg_qt or "nf4", bool(cfg_dq))
