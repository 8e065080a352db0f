"""Helpers shared by the safetensors-based format modules."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.arch import Linear, ModelShape
from ..core.errors import UnusableInput
from ..core.report import FileEntry, Report
from ..core.safetensors_io import predict_file_size
from ..core.variant import Variant

# name -> (allowed dtypes, shape)
Expected = dict[str, tuple[tuple[str, ...], tuple[int, ...]]]

FLOAT_DTYPES = ("F16", "BF16", "F32")
# safetensors dtype -> the torch_dtype name config.json uses for it
TORCH_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def check_tensor_set(
    variant: Variant,
    report: Report,
    expected: Expected,
    optional: Iterable[str] = (),
    ignore: Callable[[str], bool] = lambda name: False,
) -> None:
    """Compare the variant's tensors with ``expected``; ``optional`` names may be absent."""
    optional = set(optional)
    if not variant.headers:  # one finding, not one per tensor
        needed = sum(1 for name in expected if name not in optional)
        report.error("no-weights", "", "", f"no safetensors weights file: {needed} tensors expected for this model")
        return
    for name, (dtypes, shape) in expected.items():
        found = variant.tensors.get(name)
        if found is None:
            if name not in optional:
                report.error("missing-tensor", _guess_file(variant), name, f"expected {dtypes[0]}{list(shape)} is missing")
            continue
        rel, info = found
        if info.dtype not in dtypes:
            report.error("wrong-dtype", rel, name, f"dtype {info.dtype}, expected {' or '.join(dtypes)}")
        if info.shape != shape:
            report.error("wrong-shape", rel, name, f"shape {list(info.shape)}, expected {list(shape)}")
    for name, (rel, _info) in variant.tensors.items():
        if name not in expected and not ignore(name):
            report.error("unexpected-tensor", rel, name, "tensor not expected for this model and format")


def _guess_file(variant: Variant) -> str:
    files = variant.files_of("safetensors")
    return files[0] if len(files) == 1 else ""


def model_shape(variant: Variant, report: Report | None = None) -> ModelShape | None:
    """The variant's architecture from its config.json, or None (with an info finding)."""
    cfg = variant.config("config.json")
    if cfg is None:
        if report is not None:
            report.info("no-config", "config.json", "", "no config.json: tensor shapes checked for consistency only")
        return None
    return ModelShape.from_config(cfg, variant.abspath("config.json"))


def fp_tensors(shape: ModelShape, dtype: str) -> Expected:
    """Embeddings, norms and lm_head, kept in floating point by every safetensors format."""
    return {name: ((dtype,) if dtype else FLOAT_DTYPES, dims) for name, dims in shape.other_tensors().items()}


def predicted_file_bytes(entries: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str] | None,
                         order: list[str] | None = None) -> int:
    return predict_file_size([(n, d, s) for n, (d, s) in entries.items()], metadata, order)


def file_order(variant: Variant) -> list[str]:
    """The variant's tensor names in the order of their data in the files (what its writer chose)."""
    return [name for name, (_rel, info) in sorted(variant.tensors.items(), key=lambda kv: (kv[1][0], kv[1][1].begin))]


def check_predicted_size(report: Report, variant: Variant, predicted: int) -> None:
    """Compare the measured safetensors bytes with the prediction."""
    actual = sum(variant.size(rel) for rel in variant.files_of("safetensors"))
    report.predicted_bytes = predicted
    if actual == predicted:
        report.info("size", "", "", f"size {actual} bytes equals the predicted size exactly")
        return
    delta = actual - predicted
    rel = abs(delta) / predicted if predicted else 1.0
    sev = report.warning if rel > 0.01 else report.info
    sev("size", "", "", f"size {actual} bytes vs predicted {predicted} ({delta:+d} bytes, {rel:.2%})")


def file_parts(variant: Variant, report: Report, parts: dict[str, list[str]],
               check_part: Callable[[Variant, str, Report], None]) -> None:
    """Check each of several models in one folder (a GGUF/GGML folder of quant files) into its own sub-report.

    ``parts``: a name per model -> its files (one, or a split GGUF's shards or raw parts).
    Each part lists its files with their real sizes, as the folder's own entries: what a part
    learns about a file's expected size is the folder's too. The folder's prediction is the
    parts' sum when every part has one.
    """
    listed = {entry.path: entry for entry in report.files}
    for name, rels in parts.items():
        part = Report(path=str(variant.abspath(name)), format=report.format)
        for rel in rels:
            if rel not in listed:
                listed[rel] = FileEntry(rel, variant.size(rel), variant.kinds.get(rel, "other"))
                report.files.append(listed[rel])
            part.files.append(listed[rel])
        report.parts.append(part)
        check_part(variant, name, part)
    predicted = [p.predicted_bytes for p in report.parts]
    known = [p for p in predicted if p is not None]
    report.predicted_bytes = sum(known) if predicted and len(known) == len(predicted) else None


def linear_weight_dtype(cfg: dict[str, Any] | None) -> str:
    """The checkpoint dtype config.json declares (torch_dtype / dtype), as a safetensors dtype."""
    name = str((cfg or {}).get("torch_dtype") or (cfg or {}).get("dtype") or "float16")
    return {torch: st for st, torch in TORCH_DTYPES.items()}.get(name, "F16")


def linear_name(name: str, suffixes: Iterable[str]) -> str:
    """Strip a known tensor suffix (``.qweight``) from a name to get the module name."""
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def shape_mismatches(have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]]) -> list[str]:
    """``"<suffix> [have] (expected [want])"`` for each of a linear's tensors whose shape is not the expected one."""
    return [f"{s} {list(have[s])} (expected {list(want[s])})" for s in have if tuple(have[s]) != want[s]]


def require(variant: Variant, name: str) -> np.ndarray:
    if not variant.has(name):
        raise UnusableInput(f"no tensor {name!r} in this variant", variant.path)
    return variant.read(name)


def rng_normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.02) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def random_weight(rng: np.random.Generator, name: str, dims: tuple[int, ...]) -> np.ndarray:
    """What the builders write for a float tensor: ones for norms, small random values otherwise."""
    return np.ones(dims, np.float32) if "norm" in name else rng_normal(rng, dims)


def random_fp_tensors(shape: ModelShape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """fp16 embeddings, norms and lm_head for a quantized checkpoint's builder."""
    return {name: random_weight(rng, name, dims).astype(np.float16) for name, dims in shape.other_tensors().items()}


def random_quantized_tensors(
    shape: ModelShape, rng: np.random.Generator,
    quantize_linear: Callable[[Linear, np.ndarray], tuple[dict[str, np.ndarray], np.ndarray]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The tensors of a random quantized checkpoint of ``shape``: the fp16 embeddings, norms and lm_head, then
    per linear random float32 weights [out, in] that ``quantize_linear(lin, w)`` turns into the format's
    tensors and their dequantization. Returns (tensors, {module: dequantized [N, K]})."""
    tensors = random_fp_tensors(shape, rng)
    dequantized: dict[str, np.ndarray] = {}
    for lin in shape.linears():
        named, dequantized[lin.name] = quantize_linear(lin, rng_normal(rng, (lin.out_features, lin.in_features)))
        tensors.update(named)
    return tensors, dequantized


def write_config(folder: Path, name: str, doc: dict[str, Any]) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
