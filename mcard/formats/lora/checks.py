"""``validate`` for PEFT LoRA adapters: config, tensor set and shapes against the base, layer coverage, size, runtimes."""

from __future__ import annotations

import re
from typing import Any

from ...core import untrusted
from ...core.arch import MAX_LAYERS, ModelShape
from ...core.report import Report
from ...core.safetensors_io import DTYPE_BYTES
from ...core.variant import Variant
from .. import common as _common
from . import (
    _BYTES,
    A_SUFFIX,
    B_SUFFIX,
    BASE_CONFIG_NAMES,
    BASE_LAYER_SUFFIX,
    CONFIG_NAME,
    EMB_A_SUFFIX,
    EMB_B_SUFFIX,
    EXTRA_SUFFIXES,
    NAME,
    PREFIX,
    SAFETENSORS_METADATA,
    WEIGHTS_NAME,
    _adapter_config,
    _base_shape,
    _check_config,
    adapted_modules,
    expected_tensors,
    rank_of,
    runtimes,
)


def check(variant: Variant, report: Report) -> None:
    try:
        _check(variant, report)
    except untrusted.PatternError as exc:  # a target_modules, exclude_modules or rank_pattern regex that runs away
        report.error("bad-adapter-config", CONFIG_NAME, "", str(exc))


def _check(variant: Variant, report: Report) -> None:
    report.format = NAME
    cfg = _adapter_config(variant)
    report.runtimes = runtimes()
    if cfg is None:
        report.error("bad-adapter-config", CONFIG_NAME, "", "adapter_config.json is missing: PEFT cannot load the adapter")
        return
    report.config_source = CONFIG_NAME
    report.params = {k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path",
                                             "use_rslora", "use_dora", "modules_to_save") if k in cfg}
    if not _check_config(cfg, report):
        return
    if not variant.headers:
        _check_pickle_only(variant, report)
        return
    shape, base_name = _base_shape(variant, report)
    dtype = next((info.dtype for name, (_r, info) in variant.tensors.items() if name.endswith(A_SUFFIX)), "F32")
    if dtype not in DTYPE_BYTES:  # already a bad-offsets error; size the rest as F32
        dtype = "F32"
    expected: _common.Expected = {}
    if shape is not None:
        base_dtype = _base_dtype(variant, shape)
        expected = expected_tensors(shape, cfg, dtype, base_dtype)
        modules = {lin.name for lin in shape.linears()} | {"lm_head", "model.embed_tokens"}
        for module in adapted_modules(variant):
            if module not in modules:  # other modules: consistency only
                _check_pair(variant, report, cfg, module, expected)
        extra = lambda n: n.endswith(EXTRA_SUFFIXES) and n not in expected  # noqa: E731 - DoRA on non-linears
        _common.check_tensor_set(variant, report, expected, ignore=extra)
        _rank_findings(variant, report, cfg)
    else:
        for module in adapted_modules(variant):
            _check_pair(variant, report, cfg, module, expected)
        _check_layer_coverage(variant, report)
    _check_modules_to_save_present(variant, report, cfg)
    if len(variant.headers) == 1 and expected:
        _common.check_predicted_size(
            report, variant,
            _common.predicted_file_bytes({n: (d[0], s) for n, (d, s) in expected.items()}, SAFETENSORS_METADATA),
        )
    report.params["base_config"] = base_name


def _base_dtype(variant: Variant, shape: ModelShape) -> str:
    """The dtype of whole saved layers (base_layer, modules_to_save): the file's own, else the base config's."""
    for name, (_rel, info) in variant.tensors.items():
        if name.endswith(BASE_LAYER_SUFFIX) or (".lora_" not in name and name.endswith(".weight")):
            if info.dtype in _BYTES:
                return info.dtype
    for cfg_name in BASE_CONFIG_NAMES:
        cfg = variant.config(cfg_name)
        if cfg is not None:
            return _common.linear_weight_dtype(cfg)
    return "F32"


def _rank_findings(variant: Variant, report: Report, cfg: dict[str, Any]) -> None:
    """Name rank problems explicitly (check_tensor_set reports them as wrong-shape too)."""
    for module in adapted_modules(variant):
        a = variant.tensors.get(PREFIX + module + A_SUFFIX)
        if a is not None and a[1].shape and a[1].shape[0] != rank_of(cfg, module):
            report.error("wrong-rank", a[0], a[1].name, f"rank {a[1].shape[0]}, config says r={rank_of(cfg, module)}")


def _check_pair(variant: Variant, report: Report, cfg: dict[str, Any], module: str, expected: _common.Expected) -> None:
    """lora_A/lora_B present, 2-D, rank r, and agreeing with each other."""
    emb = variant.has(PREFIX + module + EMB_A_SUFFIX) or variant.has(PREFIX + module + EMB_B_SUFFIX)
    a_name = PREFIX + module + (EMB_A_SUFFIX if emb else A_SUFFIX)
    b_name = PREFIX + module + (EMB_B_SUFFIX if emb else B_SUFFIX)
    found = [variant.tensors.get(a_name), variant.tensors.get(b_name)]
    for name, got in zip((a_name, b_name), found, strict=True):
        if got is None:
            report.error("missing-tensor", "", name, "the other half of this LoRA pair is present, this one is missing")
    found_a, found_b = found
    if found_a is None or found_b is None:
        return
    (rel_a, a), (rel_b, b) = found_a, found_b
    r = rank_of(cfg, module)
    if len(a.shape) != 2 or len(b.shape) != 2:
        report.error("wrong-shape", rel_a, a_name, f"LoRA factors must be 2-D, got {list(a.shape)} and {list(b.shape)}")
        return
    if a.shape[0] != r:
        report.error("wrong-rank", rel_a, a_name, f"rank {a.shape[0]}, config says r={r}")
    if b.shape[1] != a.shape[0]:
        report.error("wrong-shape", rel_b, b_name, f"lora_B {list(b.shape)} does not match lora_A's rank {a.shape[0]}")
    if a.dtype != b.dtype:
        report.warning("wrong-dtype", rel_b, b_name, f"lora_A is {a.dtype}, lora_B is {b.dtype}")
    if a.dtype not in _common.FLOAT_DTYPES:
        report.error("wrong-dtype", rel_a, a_name, f"dtype {a.dtype}, expected a float type")
    expected[a_name] = ((a.dtype,), a.shape)
    expected[b_name] = ((b.dtype,), b.shape)


def _check_layer_coverage(variant: Variant, report: Report) -> None:
    """Without a base config: every layer should adapt the same module kinds."""
    per_layer: dict[int, set[str]] = {}
    for module in adapted_modules(variant):
        m = re.search(r"\.layers\.(\d+)\.(.+)$", module)
        if m:
            per_layer.setdefault(int(m.group(1)), set()).add(m.group(2))
    if not per_layer:
        return
    union = set().union(*per_layer.values())
    top = max(per_layer)
    layers: Any = range(top + 1)
    if top >= MAX_LAYERS:  # a hostile index: check the layers present, not every number below it
        report.error("unexpected-tensor", "", f"layer {top}",
                     f"layer index {top} is beyond any model ({MAX_LAYERS} layers at most)")
        layers = sorted(per_layer)
    for layer in layers:
        missing = sorted(union - per_layer.get(layer, set()))
        if missing:
            report.error("missing-tensor", "", f"layer {layer}",
                         f"no LoRA weights for {', '.join(missing)} (other layers have them)")


def _check_modules_to_save_present(variant: Variant, report: Report, cfg: dict[str, Any]) -> None:
    for module in cfg.get("modules_to_save") or []:
        if not any(n.startswith(PREFIX) and n.endswith(f"{module}.weight") and ".lora_" not in n for n in variant.tensors):
            report.error("missing-tensor", "", f"modules_to_save: {module}",
                         f"{module} is listed in modules_to_save but not saved")


def _check_pickle_only(variant: Variant, report: Report) -> None:
    from .. import pickled as pickle_fmt

    pickles = variant.files_of("pickle")
    if not pickles:
        report.error("missing-tensor", "", WEIGHTS_NAME, "no adapter weights (adapter_model.safetensors or .bin)")
        return
    for rel in pickles:
        container, imports, _n = pickle_fmt.scan(variant.abspath(rel))
        report.warning("adapter-pickle", rel, "", f"adapter weights only as a {container}: shapes not checked "
                       "(mcard never unpickles); re-save with safe_serialization=True")
        unsafe = [g for g in imports if g not in pickle_fmt.SAFE_GLOBALS]
        if unsafe:
            report.error("pickle-unsafe-import", rel, "", f"pickle imports {', '.join(unsafe)}: loading it runs that code")
