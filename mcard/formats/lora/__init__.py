"""PEFT LoRA adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

Layout facts (PEFT ``utils/save_and_load.py`` ``get_peft_model_state_dict``,
``tuners/lora/config.py``, docs ``developer_guides/checkpoint.md``):

* Keys are the module names under ``base_model.model.`` with the adapter name
  stripped: ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``
  [r, in] and ``...q_proj.lora_B.weight`` [out, r]; ``lora_bias=True`` adds
  ``lora_B.bias`` [out]; DoRA (``use_dora``) adds ``lora_magnitude_vector`` [out].
  ``embed_tokens`` targets use ``lora_embedding_A`` [r, vocab] /
  ``lora_embedding_B`` [hidden, r]; ``lm_head`` is a linear. A targeted embedding
  layer (``embed_tokens``, ``lm_head``) is also saved whole, as
  ``<module>.base_layer.weight`` in the model's dtype (PEFT 0.21
  ``save_embedding_layers="auto"``). ``modules_to_save`` are stored whole as
  ``base_model.model.<module>.weight``, in the model's dtype.
* The safetensors file carries ``{"format": "pt"}`` metadata.
* The delta weight is ``scaling * B @ A`` with ``scaling = lora_alpha / r``
  (``lora_alpha / sqrt(r)`` with ``use_rslora``); ``rank_pattern`` and
  ``alpha_pattern`` override r and alpha per module (key matched as a suffix
  regex ``(.*\\.)?key$``); ``fan_in_fan_out`` transposes it.
* ``target_modules``: a list of module-name suffixes, a regex string matched
  against the full module name, or ``"all-linear"`` (every linear but the output
  layer; saved configs list the modules it expanded to). ``exclude_modules``
  removes matches, and so does ``modules_to_save``; ``layers_to_transform``
  (a list target only) keeps the modules of those layer indices.

Shapes are checked against the base model when its config is next to the
adapter (``config.json``, else ``base_config.json``); otherwise only against
each other and ``r``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...core import untrusted
from ...core.arch import ModelShape
from ...core.errors import UnusableInput
from ...core.report import Report, Runtime, Severity
from ...core.size import SizeEstimate
from ...core.variant import Variant
from .. import common as _common, params as _params

NAME = "lora"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
BASE_CONFIG_NAMES = ("config.json", "base_config.json")
PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
EMB_A_SUFFIX, EMB_B_SUFFIX = ".lora_embedding_A", ".lora_embedding_B"
MAGNITUDE_SUFFIX = ".lora_magnitude_vector"
BIAS_SUFFIX = ".lora_B.bias"
BASE_LAYER_SUFFIX = ".base_layer.weight"
EXTRA_SUFFIXES = (MAGNITUDE_SUFFIX, MAGNITUDE_SUFFIX + ".weight")
EMBEDDING_LAYERS = ("embed_tokens", "lm_head")  # PEFT's EMBEDDING_LAYER_NAMES
# QLoRA / Guanaco: every linear of the decoder layers.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SAFETENSORS_METADATA = {"format": "pt"}
_BYTES = {"F16": 2, "BF16": 2, "F32": 4}
# What `mcard size --format lora` and a registry variant may set (alpha and dropout do not change the size).
PARAMS = {
    "r": _params.Param("int", "a positive integer", lambda r: r >= 1),
    "target_modules": _params.Param("list", "a non-empty list of " + ", ".join(ALL_LINEAR),
                                    lambda tm: bool(tm) and all(m in ALL_LINEAR for m in tm), choices=ALL_LINEAR),
    "alpha": _params.Param("number", "a positive number", lambda a: a > 0, sizes=False),
    "dropout": _params.Param("number", "at least 0 and below 1", lambda d: 0 <= d < 1, sizes=False),
}


# -- config ------------------------------------------------------------------------
def _adapter_config(variant: Variant) -> dict[str, Any] | None:
    return variant.config(CONFIG_NAME)


def detect(variant: Variant) -> bool:
    if CONFIG_NAME in variant.files or (variant.single_file and (variant.root / CONFIG_NAME).is_file()):
        return True
    return any(n.endswith((A_SUFFIX, B_SUFFIX)) for n in variant.tensors)


def targets(target_modules: Any, module: str, cfg: dict[str, Any] | None = None) -> bool:
    """PEFT's ``check_target_module_exists`` for one module name (``cfg``: exclusions and layers)."""
    cfg = cfg or {}
    if target_modules is None:
        return False
    excl = cfg.get("exclude_modules")
    if isinstance(excl, str) and untrusted.fullmatch(excl, module):  # a pattern from a file: bounded in time
        return False
    if isinstance(excl, list) and any(module == e or module.endswith("." + e) for e in excl):
        return False
    if any(f".{m}." in f".{module}." for m in cfg.get("modules_to_save") or [] if isinstance(m, str)):
        return False
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return not module.endswith("lm_head") and not module.endswith("embed_tokens")
        return untrusted.fullmatch(target_modules, module)  # a pattern from a file: bounded in time
    if module in target_modules:
        return True
    if not any(module.endswith("." + t) for t in target_modules):
        return False
    layers = cfg.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    if m is None:
        return False
    return int(m["idx"]) == layers if isinstance(layers, int) else int(m["idx"]) in layers


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first key matching the end of the module name."""
    for key, value in (pattern or {}).items():
        if untrusted.fullmatch(rf"(?:.*\.)?(?:{key})", module):  # a pattern from a file: bounded in time
            return value
    return default


def rank_of(cfg: dict[str, Any], module: str) -> int:
    return int(_pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8)))


def scaling_of(cfg: dict[str, Any], module: str) -> float:
    r = rank_of(cfg, module)
    alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8)))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _names_or_regex(cfg: dict[str, Any], key: str, bad: Callable[[str, str], None], required: bool) -> bool:
    """PEFT's module selectors (``target_modules``, ``exclude_modules``): a regex string (compiled on the
    timed matcher) or a list of names, non-empty when ``required`` (else it may also be absent)."""
    value = cfg.get(key)
    if isinstance(value, str):
        try:
            untrusted.compile_pattern(value)
        except untrusted.PatternError as exc:
            bad(key, f"{key} regex: {exc}")
            return False
        return True
    if value is None and not required:
        return True
    if not (isinstance(value, list) and (value or not required) and all(isinstance(v, str) for v in value)):
        bad(key, f"{key} {value!r} is neither a list of names nor a regex string")
        return False
    return True


def _check_config(cfg: dict[str, Any], report: Report) -> bool:
    """Field checks; returns False when the rest cannot be checked."""
    def bad(where: str, message: str) -> None:
        report.error("bad-adapter-config", CONFIG_NAME, where, message)

    ok = True
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        bad("peft_type", f"peft_type {cfg.get('peft_type')!r}: only LORA adapters are checked")
        return False
    r = cfg.get("r", 8)
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        bad("r", f"r {r!r} is not a positive integer")
        ok = False
    alpha = cfg.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        bad("lora_alpha", f"lora_alpha {alpha!r} is not a positive number")
        ok = False
    ok = _names_or_regex(cfg, "target_modules", bad, required=True) and ok
    for key in ("rank_pattern", "alpha_pattern"):
        pat = cfg.get(key) or {}
        if not isinstance(pat, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                and math.isfinite(v) and v > 0 for v in pat.values()):
            bad(key, f"{key} must map module patterns to positive numbers")
            ok = False
            continue
        for pattern in pat:
            try:
                untrusted.compile_pattern(rf"(?:.*\.)?(?:{pattern})")
            except untrusted.PatternError as exc:
                bad(f"{key}/{pattern[:60]}", f"{key} key: {exc}")
                ok = False
    ok = _names_or_regex(cfg, "exclude_modules", bad, required=False) and ok
    ltt = cfg.get("layers_to_transform")
    if ltt is not None and not (_is_index(ltt) or (isinstance(ltt, list) and all(_is_index(x) for x in ltt))):
        bad("layers_to_transform", f"layers_to_transform {ltt!r} is neither a layer index nor a list of them")
        ok = False
    mts = cfg.get("modules_to_save")
    if mts is not None and not (isinstance(mts, list) and all(isinstance(m, str) for m in mts)):
        bad("modules_to_save", "modules_to_save must be a list of module names")
        ok = False
    if not isinstance(cfg.get("base_model_name_or_path"), str) or not cfg.get("base_model_name_or_path"):
        report.warning("no-base-model", CONFIG_NAME, "base_model_name_or_path",
                       "no base model named: users cannot tell what to load it on")
    return ok


# -- reading ---------------------------------------------------------------------------
def adapted_modules(variant: Variant) -> list[str]:
    """Base-model module names (``model.layers.0.self_attn.q_proj``) carrying lora_A/lora_B."""
    out = set()
    for name in variant.tensors:
        for suffix in (A_SUFFIX, B_SUFFIX, EMB_A_SUFFIX, EMB_B_SUFFIX):
            if name.endswith(suffix):
                out.add(_strip_prefix(name[: -len(suffix)]))
    return sorted(out)


def _strip_prefix(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def _module_name(name: str) -> str:
    name = _strip_prefix(name)
    for suffix in (A_SUFFIX, B_SUFFIX, ".weight"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dequantize(variant: Variant, name: str) -> np.ndarray:
    """The float32 delta weight ``scaling * B @ A`` [out, in] of one adapted module."""
    cfg = _adapter_config(variant) or {}
    scratch = Report(path="")
    if cfg and not _check_config(cfg, scratch):
        first = next(f for f in scratch.findings if f.severity is Severity.ERROR)
        raise UnusableInput(f"cannot dequantize {name}: {CONFIG_NAME} {first.where}: {first.message}", variant.path)
    module = _module_name(name)
    a_name, b_name = PREFIX + module + A_SUFFIX, PREFIX + module + B_SUFFIX
    if not variant.has(a_name):  # embedding LoRA: delta of [vocab, hidden] = (B @ A).T
        a_name, b_name = PREFIX + module + EMB_A_SUFFIX, PREFIX + module + EMB_B_SUFFIX
        if not variant.has(a_name):
            raise UnusableInput(f"no LoRA weights for module {module!r}", variant.path)
        b, a = _lora_pair(variant, module, b_name, a_name)
        delta = (b @ a).T
        return (np.float32(scaling_of(cfg, module)) * delta).astype(np.float32)
    b, a = _lora_pair(variant, module, b_name, a_name)
    delta = np.float32(scaling_of(cfg, module)) * (b @ a)
    return (delta.T if cfg.get("fan_in_fan_out") else delta).astype(np.float32)


def _lora_pair(variant: Variant, module: str, b_name: str, a_name: str) -> tuple[np.ndarray, np.ndarray]:
    """B and A as float32, checked to multiply (2-D, B's columns = A's rows)."""
    b = _common.require(variant, b_name).astype(np.float32)
    a = _common.require(variant, a_name).astype(np.float32)
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
        raise UnusableInput(f"cannot dequantize {module}: lora B {list(b.shape)} and A {list(a.shape)} "
                            "do not multiply", variant.path)
    return b, a


def _base_shape(variant: Variant, report: Report) -> tuple[ModelShape | None, str | None]:
    for name in BASE_CONFIG_NAMES:
        cfg = variant.config(name)
        if cfg is not None and "hidden_size" in cfg:
            return ModelShape.from_config(cfg, variant.abspath(name)), name
    report.info("no-base-config", CONFIG_NAME, "", "no base config.json next to the adapter: "
                "LoRA shapes checked against each other and r only")
    return None, None


# -- validate ------------------------------------------------------------------------------


def expected_tensors(shape: ModelShape, cfg: dict[str, Any], dtype: str = "F32",
                     base_dtype: str = "F32") -> _common.Expected:
    """Every tensor PEFT's ``save_pretrained`` writes for ``cfg`` (an adapter_config) on ``shape``.

    ``dtype``: the adapter weights' dtype; ``base_dtype``: the model's, in which whole
    layers are saved (embedding ``base_layer`` weights, ``modules_to_save``).
    """
    tm = cfg.get("target_modules")
    lora_bias, dora = bool(cfg.get("lora_bias")), bool(cfg.get("use_dora"))
    h, vocab = shape.hidden_size, shape.vocab_size
    out: _common.Expected = {}
    linears = [(lin.name, lin.in_features, lin.out_features) for lin in shape.linears()]
    linears.append(("lm_head", h, vocab))
    embedded = []
    for module, k, n in linears:
        if not targets(tm, module, cfg):
            continue
        r = rank_of(cfg, module)
        out[PREFIX + module + A_SUFFIX] = ((dtype,), (r, k))
        out[PREFIX + module + B_SUFFIX] = ((dtype,), (n, r))
        if lora_bias:
            out[PREFIX + module + BIAS_SUFFIX] = ((dtype,), (n,))
        if dora:
            out[PREFIX + module + MAGNITUDE_SUFFIX] = ((dtype,), (n,))
        if module == "lm_head":
            embedded.append(module)
    if targets(tm, "model.embed_tokens", cfg):
        r = rank_of(cfg, "model.embed_tokens")
        out[PREFIX + "model.embed_tokens" + EMB_A_SUFFIX] = ((dtype,), (r, vocab))
        out[PREFIX + "model.embed_tokens" + EMB_B_SUFFIX] = ((dtype,), (h, r))
        embedded.append("model.embed_tokens")
    if _embedding_targeted(tm):
        for module in embedded:  # save_embedding_layers="auto": the targeted embedding layers, whole
            out[PREFIX + module + BASE_LAYER_SUFFIX] = ((base_dtype, *_common.FLOAT_DTYPES), (vocab, h))
    for module in cfg.get("modules_to_save") or []:
        for name, dims in shape.other_tensors().items():
            if name == f"{module}.weight" or name.endswith(f".{module}.weight"):
                out[PREFIX + name] = ((base_dtype, *_common.FLOAT_DTYPES), dims)
    return out


def runtimes() -> list[Runtime]:
    return [
        Runtime("transformers+peft", True, "PeftModel.from_pretrained on the base model"),
        Runtime("vLLM", True, "enable_lora=True; max_lora_rank must be >= r"),
        Runtime("llama.cpp", False, "convert with convert_lora_to_gguf.py first"),
    ]


def _embedding_targeted(tm: Any) -> bool:
    """PEFT saves the embedding layers when target_modules names one (a list) or matches one (a regex)."""
    if isinstance(tm, list):
        return any(e in tm for e in EMBEDDING_LAYERS)
    if isinstance(tm, str) and tm != "all-linear":
        return any(untrusted.fullmatch(tm, m) for m in ("model.embed_tokens", "lm_head"))
    return False


# -- size and builder ------------------------------------------------------------------------
def _targeted(shape: ModelShape, target_modules: Any) -> list:
    tm = list(ALL_LINEAR) if target_modules is None else target_modules
    return [lin for lin in shape.linears() if targets(tm, lin.name)]


def predict_size(shape: ModelShape, r: int = 64, target_modules: Any = None, dtype: str = "F32",
                 adapter_config: dict[str, Any] | None = None, base_dtype: str | None = None,
                 config_doc: dict[str, Any] | None = None, **_: Any) -> SizeEstimate:
    """Exact ``adapter_model.safetensors`` size. ``target_modules=None``: all linears (QLoRA).

    ``adapter_config``: a whole adapter_config.json (every LoraConfig option: rank and
    alpha patterns, layers_to_transform, lora_bias, use_dora, modules_to_save, embedding
    targets); it overrides ``r`` and ``target_modules``. ``base_dtype``: the model's dtype,
    in which whole layers are saved (default: the base config's ``dtype``/``torch_dtype``).
    QLoRA's Guanaco adapters were saved in float32 (hence the F32 default).
    """
    dtype = dtype.upper()
    cfg = dict(adapter_config or {"r": r, "target_modules": list(ALL_LINEAR) if target_modules is None else target_modules})
    base = (base_dtype or _common.linear_weight_dtype(config_doc) if (base_dtype or config_doc) else "F32").upper()
    expected = expected_tensors(shape, cfg, dtype, base)
    entries = {n: (d[0], dims) for n, (d, dims) in expected.items()}
    parts = {"lora_A": 0, "lora_B": 0}
    tensors = []
    for name, (dt, dims) in entries.items():
        nbytes = _BYTES[dt] * math.prod(dims)
        kind = ("lora_A" if name.endswith((A_SUFFIX, EMB_A_SUFFIX)) else "lora_B" if name.endswith((B_SUFFIX, EMB_B_SUFFIX))
                else "lora_bias" if name.endswith(BIAS_SUFFIX) else "dora_magnitude" if name.endswith(MAGNITUDE_SUFFIX)
                else "saved_layers")
        parts[kind] = parts.get(kind, 0) + nbytes
        tensors.append((name, dt, nbytes))
    total = _common.predicted_file_bytes(entries, SAFETENSORS_METADATA)
    parts["header"] = total - sum(parts.values())
    params = {"r": cfg.get("r", 8), "target_modules": cfg.get("target_modules"), "dtype": dtype}
    return SizeEstimate(NAME, params, total, parts, tensors)


def write_variant(folder: str | Path, config: dict[str, Any], r: int = 64, lora_alpha: int = 16,
                  target_modules: Any = None, base_model: str = "huggyllama/llama-7b", seed: int = 0,
                  dtype: str = "F32", base_config: bool = False) -> dict[str, np.ndarray]:
    """Write a PEFT LoRA adapter for ``config`` (random, nonzero A and B); returns the tensors as float32.

    ``base_config=True`` also writes the base model's ``config.json`` next to it.
    """
    folder = Path(folder)
    shape = ModelShape.from_config(config)
    tm = list(ALL_LINEAR) if target_modules is None else target_modules
    rng = np.random.default_rng(seed)
    np_dtype = {"F16": np.float16, "F32": np.float32}[dtype.upper()]
    tensors: dict[str, np.ndarray] = {}
    for lin in _targeted(shape, tm):
        tensors[PREFIX + lin.name + A_SUFFIX] = _common.rng_normal(rng, (r, lin.in_features)).astype(np_dtype)
        tensors[PREFIX + lin.name + B_SUFFIX] = _common.rng_normal(rng, (lin.out_features, r)).astype(np_dtype)
    adapter_cfg: dict[str, Any] = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": base_model, "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layers_pattern": None,
        "layers_to_transform": None, "lora_alpha": lora_alpha, "lora_dropout": 0.05, "modules_to_save": None,
        "peft_type": "LORA", "r": r, "rank_pattern": {}, "revision": None, "target_modules": tm,
        "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
    }
    _common.write_config(folder, CONFIG_NAME, adapter_cfg)
    if base_config:
        _common.write_config(folder, "config.json", config)
    from ...core.safetensors_io import write

    write(folder / WEIGHTS_NAME, tensors, SAFETENSORS_METADATA)
    return {k: v.astype(np.float32) for k, v in tensors.items()}


__all__ = ["NAME", "detect", "check", "adapted_modules", "dequantize", "predict_size", "write_variant",
           "targets", "rank_of", "scaling_of", "runtimes", "expected_tensors"]


def check(variant: Variant, report: Report) -> None:
    """validate for this format: see :mod:`.checks`."""
    from . import checks

    checks.check(variant, report)
