"""Plain floating-point Hugging Face checkpoints (fp16/bf16/fp32 safetensors, sharded or not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.arch import ModelShape
from ...core.report import Report, Runtime
from ...core.size import SizeEstimate
from ...core.variant import Variant
from .. import common as _common

NAME = "hf"
_BYTES = {"F16": 2, "BF16": 2, "F32": 4}
PARAMS: dict = {}  # fp16/bf16/fp32: the dtype is the format's name; nothing else changes the size
# Older llama checkpoints carry rotary buffers; loaders ignore them.
_IGNORABLE = (".rotary_emb.inv_freq",)


def detect(variant: Variant) -> bool:
    return any(name.endswith(".weight") for name in variant.tensors)


def expected_tensors(shape: ModelShape, dtype: str) -> _common.Expected:
    out = _common.fp_tensors(shape, dtype)
    for lin in shape.linears():
        out[f"{lin.name}.weight"] = ((dtype,), (lin.out_features, lin.in_features))
        if lin.bias:
            out[f"{lin.name}.bias"] = ((dtype,), (lin.out_features,))
    return out


def check(variant: Variant, report: Report) -> None:
    report.format = NAME
    shape = _common.model_shape(variant, report)
    cfg = variant.config("config.json")
    dtype = _common.linear_weight_dtype(cfg)
    report.config_source = "config.json" if cfg else None
    report.params = {"dtype": dtype}
    if shape is None:
        return
    expected = expected_tensors(shape, dtype)
    _common.check_tensor_set(variant, report, expected, ignore=lambda n: n.endswith(_IGNORABLE))
    if len(variant.headers) == 1:
        predicted = _common.predicted_file_bytes({n: (d[0], s) for n, (d, s) in expected.items()}, {"format": "pt"})
        _common.check_predicted_size(report, variant, predicted)
    else:
        report.predicted_bytes = predict_size(shape, dtype=dtype).total_bytes
    report.runtimes = [
        Runtime("transformers", True, f"{dtype} safetensors"),
        Runtime("llama.cpp", False, "needs conversion to GGUF first"),
    ]


def predict_size(shape: ModelShape, dtype: str = "F16", **_: Any) -> SizeEstimate:
    dtype = dtype.upper()
    per = _BYTES[dtype]
    parts = {"linears": 0, "embeddings": 0, "lm_head": 0, "norms": 0, "bias": 0}
    tensors = []
    for name, (_d, dims) in expected_tensors(shape, dtype).items():
        n = per * int(np.prod(dims))
        kind = (
            "embeddings" if "embed_tokens" in name else "lm_head" if name.startswith("lm_head")
            else "norms" if "norm" in name else "bias" if name.endswith(".bias") else "linears"
        )
        parts[kind] += n
        tensors.append((name, dtype, n))
    layout = {n: (dtype, s) for n, (_d, s) in expected_tensors(shape, dtype).items()}
    total = _common.predicted_file_bytes(layout, {"format": "pt"})
    parts["header"] = total - sum(parts.values())
    return SizeEstimate(NAME, {"dtype": dtype}, total, parts, tensors)


def dequantize(variant: Variant, name: str) -> np.ndarray:
    tensor = name if name in variant.tensors else f"{name}.weight"
    return _common.require(variant, tensor).astype(np.float32)


def write_variant(folder: str | Path, config: dict[str, Any], seed: int = 0, dtype: str = "F16") -> dict[str, np.ndarray]:
    """Write a random fp16/fp32 checkpoint for ``config``; returns the float32 weights written."""
    folder = Path(folder)
    shape = ModelShape.from_config(config)
    rng = np.random.default_rng(seed)
    np_dtype = {"F16": np.float16, "F32": np.float32}[dtype]
    tensors: dict[str, np.ndarray] = {}
    for name, (_d, dims) in expected_tensors(shape, dtype).items():
        tensors[name] = _common.random_weight(rng, name, dims).astype(np_dtype)
    cfg = dict(config, torch_dtype={"F16": "float16", "F32": "float32"}[dtype])
    _common.write_config(folder, "config.json", cfg)
    from ...core.safetensors_io import write

    write(folder / "model.safetensors", tensors, {"format": "pt"})
    return {k: v.astype(np.float32) for k, v in tensors.items()}


__all__ = ["NAME", "detect", "check", "predict_size", "dequantize", "write_variant"]
