"""Size prediction: the exact bytes a variant should have, from config and quant parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch import ModelShape
from .errors import UnusableInput

# Cards list "Max RAM required" for GGML/GGUF files as the file size plus 2.50 GB.
RAM_OVERHEAD_BYTES = 2_500_000_000


@dataclass
class SizeEstimate:
    """A predicted variant size, with a breakdown by tensor kind.

    ``parts`` maps a kind (``qweight``, ``scales``, ``embeddings``, ``header``...)
    to bytes; ``tensors`` optionally lists ``(name, type, bytes)`` per tensor.
    """

    format: str
    params: dict[str, Any]
    total_bytes: int
    parts: dict[str, int]
    tensors: list[tuple[str, str, int]] = field(default_factory=list)
    ram_bytes: int | None = None  # GGUF/GGML only: no GPU offloading
    notes: list[str] = field(default_factory=list)  # what is estimated and by how much, shard sizes...

    @property
    def total_gb(self) -> float:
        return self.total_bytes / 1e9

    def to_dict(self, per_tensor: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "params": self.params,
            "total_bytes": self.total_bytes,
            "total_gb": round(self.total_gb, 2),
            "parts": self.parts,
        }
        if self.ram_bytes is not None:
            out["ram_bytes"] = self.ram_bytes
            out["ram_gb"] = round(self.ram_bytes / 1e9, 2)
        if self.notes:
            out["notes"] = self.notes
        if per_tensor:
            out["tensors"] = [{"name": n, "type": t, "bytes": b} for n, t, b in self.tensors]
        return out


def as_shape(config: ModelShape | dict[str, Any] | str | Path) -> ModelShape:
    if isinstance(config, ModelShape):
        return config
    if isinstance(config, dict):
        return ModelShape.from_config(config)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    return ModelShape.from_file(path)


def predict_size(config: ModelShape | dict[str, Any] | str | Path, format: str, **params: Any) -> SizeEstimate:
    """Predict the size of ``format`` (gptq, awq, gguf, ggml, nf4, fp16, bf16) for a model config."""
    from .. import formats

    spec = formats.by_alias(format)  # UnusableInput for a name no format goes by
    if not spec.can_predict_size:
        raise UnusableInput(f"unknown format {format!r} (known: {', '.join(formats.aliases())})")
    params = formats.check_params(format, params, for_size=True)  # BadParam (exit 2) names what is wrong
    shape = as_shape(config)
    context = _config_context(config)
    return spec.predict_size(shape, **{**formats.implied_params(format), **context, **params})


def _config_context(config: ModelShape | dict[str, Any] | str | Path) -> dict[str, Any]:
    """What a format may read beside the shape: the config document and its folder (tokenizer files)."""
    from .jsonio import load_json_object

    if isinstance(config, dict):
        return {"config_doc": config}
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        return {"config_doc": load_json_object(path), "model_dir": path.parent}
    return {}
