"""Quantization configs: the files a checkpoint states its quant parameters in, and their spellings.

The one reader of quant configs: ``validate`` (GPTQ's and AWQ's ``read_quant_config``),
``mcard branches`` (:func:`mcard.hub.refs.params_from_configs`) and remote validate
(which runs ``validate`` on a sparse mirror) all take a checkpoint's configs through
:func:`sources`. What each format then accepts and checks is its own (``gptq/config.py``,
``awq/__init__.py``).

Sources, in the order loaders prefer them: ``quantize_config.json`` (AutoGPTQ),
``config.json``'s ``quantization_config`` (transformers' ``GPTQConfig``/``AwqConfig``,
bitsandbytes), ``quant_config.json`` (AutoAWQ and older GPTQ tools, spelling ``w_bit``
and ``q_group_size``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

SOURCES = ("quantize_config.json", "config.json", "quant_config.json")
SECTION = "quantization_config"  # config.json's key for it
# Older spellings -> canonical keys (AutoAWQ's quant_config.json, old GPTQ tools).
ALIASES = {"w_bit": "bits", "q_group_size": "group_size"}
# The method a source implies when its mapping names none: AutoGPTQ's file is GPTQ's.
IMPLIED_METHOD = {"quantize_config.json": "gptq"}
# Methods that name another method's checkpoints: Marlin is a GPTQ checkpoint format.
SAME_METHOD = {"marlin": "gptq"}


def same_method(a: str, b: str) -> bool:
    """Whether two stated methods name the same checkpoints (``marlin`` and ``gptq`` do)."""
    return SAME_METHOD.get(a, a) == SAME_METHOD.get(b, b)


def normalize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with older spellings under their canonical keys (a canonical key given too wins)."""
    return {ALIASES.get(k, k): v for k, v in raw.items() if not (k in ALIASES and ALIASES[k] in raw)}


def section(name: str, doc: Any) -> dict[str, Any] | None:
    """The quant config mapping that source file ``name`` holds (config.json: its ``quantization_config``)."""
    if name == "config.json":
        doc = doc.get(SECTION) if isinstance(doc, dict) else None
    return dict(doc) if isinstance(doc, dict) else None


def method(name: str, mapping: Mapping[str, Any]) -> str | None:
    """The quant method a source states (``quant_method``), lower case, else the one its file name implies."""
    value = mapping.get("quant_method") or IMPLIED_METHOD.get(name)
    return str(value).lower() if value else None


def sources(load: Callable[[str], Any], names: tuple[str, ...] = SOURCES) -> dict[str, dict[str, Any]]:
    """Source file name -> its quant config mapping, normalized, for each of ``names`` that has one.

    Args:
        load: file name -> its parsed JSON document, or None when the file is absent (it may raise
            for an unparsable file: the caller words that).
        names: the sources to read, in the order their caller prefers them.

    Returns:
        The mappings in ``names`` order, spellings normalized (:func:`normalize`), each still with
        its ``quant_method`` (ask :func:`method`).

    Example:
        >>> sources({"config.json": {"quantization_config": {"w_bit": 4}}}.get)
        {'config.json': {'bits': 4}}
    """
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        mapping = section(name, load(name))
        if mapping is not None:
            out[name] = normalize(mapping)
    return out


def where(name: str) -> str:
    """How a finding names a source: config.json's section by its key."""
    return f"config.json {SECTION}" if name == "config.json" else name
