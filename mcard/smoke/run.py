"""``mcard smoke``: run a variant's quantized layers through the int4 kernels and a reference.

A variant that validates can still compute garbage on a GPU (nibble order misread,
zeros off by one, act-order ignored). For a sample of quantized linears this draws
seeded fp16 activations and compares the CUDA kernel's fp16 output with the float32
torch reference (:mod:`mcard.smoke.reference`). Without a usable GPU it runs the reference
alone and checks it against the format module's own numpy dequantization, so the
CPU path still catches layout disagreements; it then says that no kernel ran.

Pass/fail thresholds (relative error ``||out - ref|| / ||ref||``):

* kernel vs reference, each format spec's ``kernel_tolerance`` (:func:`kernel_tolerances`):
  :data:`mcard.formats.spec.INT4_KERNEL_TOLERANCE` (2e-3) for the int4 kernels, which says why.
* reference vs numpy dequantization, :data:`REFERENCE_REL_TOL`: two float32
  dequantizations followed by a float64 product; 1e-5 allows summation order only.

torch (and CuPy) are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import EXIT_NO_GPU, McardError, UnusableInput
from .layers import Layer, load_layers

REFERENCE_REL_TOL = 1e-5
DEFAULT_LAYERS = 4
DEFAULT_BATCHES = (1, 16)
MAX_BATCH = 32
TIMING_WARMUP, TIMING_RUNS = 3, 20


class NoGpu(McardError):
    """A GPU was required (``--require-gpu`` or ``--device cuda``) and none is usable (exit 3)."""

    exit_code = EXIT_NO_GPU


@dataclass
class LayerResult:
    """One layer at one batch size."""

    name: str
    kind: str  # e.g. gptq 4-bit g128 act-order, gguf Q4_K
    shape: tuple[int, int]  # (N, K)
    batch: int
    engine: str  # "kernel" (kernel vs reference) or "reference" (reference vs numpy)
    rel_error: float | None
    threshold: float
    finite: bool
    ok: bool
    note: str = ""
    time_us: float | None = None
    gbps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class SmokeResult:
    path: str
    format: str
    device: str  # "cuda: <name>" or "cpu"
    kernels_run: bool
    message: str
    layers: list[LayerResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "path": self.path, "format": self.format, "device": self.device,
            "kernels_run": self.kernels_run, "message": self.message,
            "thresholds": {"kernel": kernel_tolerances(), "reference": REFERENCE_REL_TOL},
            "layers": [r.to_dict() for r in self.layers],
        }


def kernel_tolerances() -> dict[str, float]:
    """Format -> the largest relative error of a kernel against the reference (the formats' specs say)."""
    from .. import formats

    return {s.name: s.kernel_tolerance for s in formats.specs() if s.kernel_tolerance is not None}


# -- options --------------------------------------------------------------------
def parse_batches(text: str) -> list[int]:
    """``"1,16"`` -> [1, 16]; each batch in 1..32."""
    try:
        out = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UnusableInput(f"--batch {text!r}: expected comma-separated integers") from None
    if not out or any(b < 1 or b > MAX_BATCH for b in out):
        raise UnusableInput(f"--batch {text!r}: batches must be between 1 and {MAX_BATCH}")
    return out


def parse_layers(text: str | int | None) -> int | None:
    """``"all"`` -> None (every layer), ``"N"`` -> N > 0."""
    if text is None:
        return DEFAULT_LAYERS
    if isinstance(text, str) and text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise UnusableInput(f"--layers {text!r}: expected a number or 'all'") from None
    if n < 1:
        raise UnusableInput("--layers must be at least 1")
    return n


def spread(names: list[str], count: int | None) -> list[str]:
    """``count`` names evenly spread over the list (first and last included), or all of them."""
    if count is None or count >= len(names):
        return list(names)
    if count == 1:
        return [names[len(names) // 2]]
    idx = sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)})
    return [names[i] for i in idx]


def gpu_status() -> tuple[bool, str]:
    """(usable, description or reason)."""
    try:
        import cupy_kernels
    except ImportError as exc:
        return False, f"cupy_kernels is not importable ({exc})"
    ok, reason = cupy_kernels.available()
    if not ok:
        return False, reason
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return True, name


# -- the run --------------------------------------------------------------------
def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    denom = float(np.linalg.norm(ref64))
    diff = float(np.linalg.norm(out64 - ref64))
    return diff / denom if denom > 0 else diff


def _reference_check(layer: Layer, x16: np.ndarray, batch: int) -> LayerResult:
    """CPU path: the torch reference against the format module's numpy dequantization."""
    import torch

    from . import reference

    w_ref = layer.reference_weight("cpu")
    y_ref = reference.linear(torch.from_numpy(x16), w_ref, layer.bias).numpy()
    w_np = np.asarray(layer.numpy_weight(), np.float64)
    y_np = x16.astype(np.float64) @ w_np.T
    if layer.bias is not None:
        y_np = y_np + np.asarray(layer.bias, np.float64)
    finite = bool(np.isfinite(y_ref).all())
    err = rel_error(y_ref, y_np)
    ok = finite and err <= REFERENCE_REL_TOL
    note = "" if ok else "torch reference disagrees with the format module's dequantization"
    if layer.kernel_note:
        note = "; ".join(filter(None, [note, layer.kernel_note]))
    return LayerResult(layer.name, layer.kind, layer.shape, batch, "reference", err, REFERENCE_REL_TOL,
                       finite, ok, note)


def _kernel_check(layer: Layer, x16: np.ndarray, batch: int, fmt: str) -> LayerResult:
    """GPU path: kernel fp16 output against the float32 reference, plus timing."""
    import cupy
    import torch

    from . import reference

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    y_ref = reference.linear(torch.from_numpy(x16).to(dev), layer.reference_weight(dev), layer.bias).cpu().numpy()
    x_gpu = cupy.asarray(x16)
    out = cupy.full((batch, layer.shape[0]), cupy.nan, dtype=cupy.float16)  # an unwritten element fails
    kernel = layer.kernel
    assert kernel is not None, "run() checks kernels only for layers that have one"
    kernel(x_gpu, out)
    cupy.cuda.Device().synchronize()
    y = cupy.asnumpy(out).astype(np.float32)
    finite = bool(np.isfinite(y).all())
    err = rel_error(y, y_ref)
    tol = kernel_tolerances()[fmt]
    ok = finite and err <= tol
    t_us = time_kernel(lambda: kernel(x_gpu, out))
    nbytes = layer.weight_bytes + x16.nbytes + batch * layer.shape[0] * 2
    note = "" if ok else ("non-finite output" if not finite else "kernel disagrees with the reference")
    return LayerResult(layer.name, layer.kind, layer.shape, batch, "kernel", err, tol, finite, ok, note,
                       t_us, nbytes / (t_us * 1e-6) / 1e9)


def time_kernel(fn: Any, warmup: int = TIMING_WARMUP, runs: int = TIMING_RUNS) -> float:
    """Median microseconds of ``fn`` with CUDA events."""
    import cupy

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3)
    return statistics.median(times)


def run(
    path: str | Path, device: str = "auto", layers: str | int | None = None, batches: list[int] | str = "1,16",
    seed: int = 0, require_gpu: bool = False,
) -> SmokeResult:
    """Smoke-test a variant; see the module docstring. Raises :class:`NoGpu` or UnusableInput."""
    from ..core.variant import Variant

    if device not in ("auto", "cuda", "cpu"):
        raise UnusableInput(f"--device {device!r}: expected auto, cuda or cpu")
    if device == "cpu" and require_gpu:
        raise UnusableInput("--device cpu contradicts --require-gpu")
    try:
        import torch  # noqa: F401 - the reference path needs it; fail early and clearly
    except ModuleNotFoundError:
        raise UnusableInput("the smoke test needs torch: pip install 'mcard[smoke]' "
                            "(on the project's machines: pip install torch==2.13.0)") from None
    batch_list = parse_batches(batches) if isinstance(batches, str) else list(batches)
    count = parse_layers(layers)
    variant = Variant.open(path)
    fmt, loaded, skipped_note = load_layers(variant, count, spread)

    use_gpu, gpu_text = (False, "--device cpu") if device == "cpu" else gpu_status()
    if not use_gpu and (require_gpu or device == "cuda"):
        raise NoGpu(f"no usable GPU: {gpu_text}", path)
    if use_gpu:
        message = f"kernels ran on {gpu_text}"
    else:
        message = (f"no kernel was exercised ({gpu_text}); ran the torch reference against the "
                   f"{fmt} module's numpy dequantization only")
    result = SmokeResult(str(path), fmt, f"cuda: {gpu_text}" if use_gpu else "cpu", use_gpu, message)
    notes = [skipped_note] if skipped_note else []
    no_kernel = sorted({layer.kernel_note for layer in loaded if layer.kernel is None and layer.kernel_note})
    if no_kernel:  # e.g. GGUF Q8_0, GPTQ 3-bit: reference check only, said plainly
        notes.append("; ".join(no_kernel) + " (reference check only)")
    rng = np.random.default_rng(seed)
    for layer in loaded:
        for batch in batch_list:
            x16 = rng.standard_normal((batch, layer.shape[1])).astype(np.float16)
            if use_gpu and layer.kernel is not None:
                result.layers.append(_kernel_check(layer, x16, batch, fmt))
            else:
                result.layers.append(_reference_check(layer, x16, batch))
    if use_gpu and not any(r.engine == "kernel" for r in result.layers):
        result.kernels_run = False
        result.message = f"no kernel was exercised: no selected layer has a kernel ({gpu_text})"
    result.message = "; ".join([result.message, *notes])
    return result
