"""The Python API: what the commands do, usable without the CLI.

>>> from mcard import api
>>> report = api.inspect("path/to/variant")      # the report behind `mcard validate`
>>> est = api.predict_size("config.json", format="gptq", bits=4, group_size=128)
>>> w = api.dequantize("path/to/variant", "model.layers.0.self_attn.q_proj")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import formats
from .core.errors import UnusableInput
from .core.report import Report
from .core.size import SizeEstimate, predict_size
from .core.validate import inspect
from .core.variant import Variant

__all__ = ["inspect", "predict_size", "dequantize", "Report", "SizeEstimate"]


def dequantize(path: str | Path, name: str) -> np.ndarray:
    """Dequantize one linear (module name) or GGUF tensor (tensor name) to float32.

    The result has ``nn.Linear.weight``'s orientation ``[out, in]`` for
    safetensors formats and gguf's ``[rows, cols]`` for GGUF files.
    """
    variant = Variant.open(path)
    spec = formats.detect(variant)
    if spec is None:
        raise UnusableInput("no dequantizable model found", path)
    result: Any = spec.dequantize(variant, name)
    return np.asarray(result, dtype=np.float32)
