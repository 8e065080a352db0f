"""GPTQ quantization configs: which sources are GPTQ's, what values are valid, where two disagree.

The sources and their spellings are :mod:`mcard.formats.quant_config`'s (the one reader of
quant configs): ``quantize_config.json`` (AutoGPTQ), ``config.json`` ``quantization_config``
(transformers ``GPTQConfig``), ``quant_config.json`` (older: ``w_bit``, ``q_group_size``).
"""

from __future__ import annotations

from typing import Any

from ...core.errors import UnusableInput
from ...core.report import Finding, Report
from ...core.variant import Variant
from .. import quant_config
from ..packing import valid_group_size

V1, V2 = "gptq", "gptq_v2"
CHECKPOINT_FORMATS = (V1, V2)
VALID_BITS = (2, 3, 4, 8)
# Keys whose disagreement between two sources changes how the tensors are read.
COMPARED = ("bits", "group_size", "desc_act", "sym", "checkpoint_format")
DEFAULTS: dict[str, Any] = {"group_size": -1, "desc_act": False, "sym": True, "checkpoint_format": V1}


def _normalize(out: dict[str, Any]) -> dict[str, Any]:
    if out.get("is_marlin_format") and "checkpoint_format" not in out:
        out["checkpoint_format"] = "marlin"
    if isinstance(out.get("checkpoint_format"), str):
        out["checkpoint_format"] = out["checkpoint_format"].lower()
    return out


def _raw_sources(variant: Variant, report: Report) -> dict[str, dict[str, Any]]:
    """The sources that are GPTQ's: AutoGPTQ's file, config.json's section unless another method's,
    quant_config.json unless AWQ's."""
    def load(name: str) -> Any:
        try:
            return variant.config(name)
        except UnusableInput as exc:
            report.error("bad-config", name, "", f"cannot parse: {exc.message}")
            return None

    found = {}
    for name, doc in quant_config.sources(load).items():
        method = quant_config.method(name, doc)
        if (name == "config.json" and method not in (None, "gptq")) or (name == "quant_config.json" and method == "awq"):
            continue
        found[name] = _normalize(doc)
    return found


_where = quant_config.where


def _validate(params: dict[str, Any], source: str, report: Report) -> None:
    bits, gs, damp = params.get("bits"), params.get("group_size"), params.get("damp_percent")
    if "bits" not in params:
        report.error("bad-config", source, "bits", "no bits given")
    elif isinstance(bits, bool) or bits not in VALID_BITS:
        report.error("bad-config", source, "bits", f"bits {bits!r} is not one of {VALID_BITS}")
    if not valid_group_size(gs):
        report.error("bad-config", source, "group_size", f"group_size {gs!r} must be -1 or a positive integer")
    if damp is not None and not valid_damp(damp):
        report.error("bad-config", source, "damp_percent", f"damp_percent {damp!r} must lie strictly between 0 and 1")
    for key in ("desc_act", "sym"):
        if not isinstance(params.get(key), bool):
            report.error("bad-config", source, key, f"{key} {params.get(key)!r} is not true/false")
    if params.get("checkpoint_format") not in CHECKPOINT_FORMATS:
        report.error("bad-config", source, "checkpoint_format",
                     f"checkpoint_format {params.get('checkpoint_format')!r} is not one of {CHECKPOINT_FORMATS}")


def read_quant_config(variant: Variant) -> tuple[dict[str, Any], str | None, list[Finding]]:
    """The GPTQ parameters, the source they came from, and findings about the configs.

    The first present source (in :data:`mcard.formats.quant_config.SOURCES` order) wins; defaults fill
    keys it does not give. Two sources disagreeing on a :data:`COMPARED` key
    is a ``config-conflict`` error; invalid values are ``bad-config`` errors.
    """
    scratch = Report(path="")
    found = _raw_sources(variant, scratch)
    if not found:
        return {}, None, scratch.findings
    names = list(found)
    primary = names[0]
    params = {**DEFAULTS, **found[primary]}
    for other in names[1:]:
        for key in COMPARED:
            if key in found[primary] and key in found[other] and found[primary][key] != found[other][key]:
                scratch.error(
                    "config-conflict", other, key,
                    f"{_where(other)} says {key} {found[other][key]!r} but {_where(primary)} "
                    f"(which loaders read first) says {found[primary][key]!r}",
                )
    _validate(params, primary, scratch)
    return params, _where(primary), scratch.findings


def valid_damp(damp: object) -> bool:
    """GPTQ's dampening, a fraction of the Hessian's mean diagonal: strictly between 0 and 1."""
    return isinstance(damp, (int, float)) and not isinstance(damp, bool) and 0 < damp < 1


def params_ok(params: dict[str, Any]) -> bool:
    """Whether ``params`` can drive the tensor checks (bits and group size usable)."""
    bits, gs = params.get("bits"), params.get("group_size")
    return not isinstance(bits, bool) and bits in VALID_BITS and valid_group_size(gs)


def make_config(bits: int, group_size: int, desc_act: bool, sym: bool, checkpoint_format: str,
                config_file: str) -> dict[str, Any]:
    """The quant config AutoGPTQ / transformers / old GPTQ tools write, for ``config_file``."""
    if config_file == "quant_config.json":
        return {"w_bit": bits, "q_group_size": group_size, "desc_act": desc_act, "sym": sym}
    doc: dict[str, Any] = {
        "bits": bits, "group_size": group_size, "damp_percent": 0.01, "desc_act": desc_act, "sym": sym,
        "true_sequential": True, "quant_method": "gptq", "checkpoint_format": checkpoint_format,
    }
    if config_file == "quantize_config.json":
        doc.update(static_groups=False, model_name_or_path=None,
                   model_file_base_name=f"gptq_model-{bits}bit-{group_size}g")
    return doc
