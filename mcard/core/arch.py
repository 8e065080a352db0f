"""Model architecture shapes derived from a transformers ``config.json``.

One place that knows which linears a decoder layer has and their shapes, for
the llama, mistral, qwen2 and gemma families (GQA included). Formats ask it for
the list of quantized linears; sizes and validation build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnusableInput
from .jsonio import load_json_object

# model_type -> (attention q/k/v bias, tied embeddings by default, extra norms per layer)
FAMILIES: dict[str, tuple[bool, bool, tuple[str, ...]]] = {
    "llama": (False, False, ()),
    "mistral": (False, False, ()),
    "mixtral": (False, False, ()),
    "qwen2": (True, False, ()),
    "gemma": (False, True, ()),
    "gemma2": (False, True, ("pre_feedforward_layernorm", "post_feedforward_layernorm")),
}

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Linear:
    """A linear layer: ``in_features`` K, ``out_features`` N (``nn.Linear.weight`` is [N, K])."""

    name: str  # module name, e.g. model.layers.0.self_attn.q_proj
    layer: int
    kind: str  # q_proj, k_proj, ..., down_proj
    in_features: int
    out_features: int
    bias: bool = False


# Bounds on config.json dimensions: far beyond any released model, small enough that
# the per-layer tensor lists and size arithmetic stay bounded for a hostile config.
MAX_LAYERS = 1024
MAX_DIM = 2**31 - 1


def _dim(cfg: dict[str, Any], key: str, source: str | Path, limit: int = MAX_DIM) -> int:
    """A positive integer dimension of config.json (an integral float such as 4096.0 is accepted)."""
    value = cfg.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnusableInput(f"config {key} {value!r} is not an integer", source)
    if not 0 < value <= limit:
        raise UnusableInput(f"config {key} {value} is out of range (1..{limit})", source)
    return value


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool
    extra_norms: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: dict[str, Any], source: str | Path = "config.json") -> ModelShape:
        model_type = str(cfg.get("model_type", "llama"))
        if model_type not in FAMILIES:
            raise UnusableInput(
                f"model_type {model_type!r} is not supported (known: {', '.join(sorted(FAMILIES))})", source
            )
        bias_default, tie_default, extra = FAMILIES[model_type]
        for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vocab_size"):
            if key not in cfg:
                raise UnusableInput(f"config has no {key!r}", source)
        hidden = _dim(cfg, "hidden_size", source)
        heads = _dim(cfg, "num_attention_heads", source)
        head_dim = _dim(cfg, "head_dim", source) if cfg.get("head_dim") else hidden // heads
        if head_dim <= 0:
            raise UnusableInput(f"config hidden_size {hidden} / num_attention_heads {heads} gives no head_dim", source)
        shape = cls(
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=_dim(cfg, "intermediate_size", source),
            num_layers=_dim(cfg, "num_hidden_layers", source, MAX_LAYERS),
            num_heads=heads,
            num_kv_heads=_dim(cfg, "num_key_value_heads", source) if cfg.get("num_key_value_heads") else heads,
            head_dim=head_dim,
            vocab_size=_dim(cfg, "vocab_size", source),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", tie_default)),
            attention_bias=bool(cfg.get("attention_bias", bias_default)),
            extra_norms=extra,
        )
        return shape

    @classmethod
    def from_file(cls, path: str | Path) -> ModelShape:
        return cls.from_config(load_json_object(path), path)

    # -- structure ------------------------------------------------------------
    def layer_linears(self, i: int) -> list[Linear]:
        h, q, kv, m = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        b = self.attention_bias
        attn = f"model.layers.{i}.self_attn"
        mlp = f"model.layers.{i}.mlp"
        return [
            Linear(f"{attn}.q_proj", i, "q_proj", h, q, b),
            Linear(f"{attn}.k_proj", i, "k_proj", h, kv, b),
            Linear(f"{attn}.v_proj", i, "v_proj", h, kv, b),
            Linear(f"{attn}.o_proj", i, "o_proj", q, h),
            Linear(f"{mlp}.gate_proj", i, "gate_proj", h, m),
            Linear(f"{mlp}.up_proj", i, "up_proj", h, m),
            Linear(f"{mlp}.down_proj", i, "down_proj", m, h),
        ]

    def linears(self) -> list[Linear]:
        """Every linear that quantizers quantize (lm_head excluded)."""
        return [lin for i in range(self.num_layers) for lin in self.layer_linears(i)]

    def other_tensors(self) -> dict[str, tuple[int, ...]]:
        """The tensors kept in floating point: embeddings, norms, lm_head, biases."""
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, self.hidden_size)}
        for i in range(self.num_layers):
            for norm in ("input_layernorm", "post_attention_layernorm", *self.extra_norms):
                out[f"model.layers.{i}.{norm}.weight"] = (self.hidden_size,)
        out["model.norm.weight"] = (self.hidden_size,)
        if not self.tie_word_embeddings:
            out["lm_head.weight"] = (self.vocab_size, self.hidden_size)
        return out

    def parameter_count(self) -> int:
        n = sum(lin.in_features * lin.out_features + (lin.out_features if lin.bias else 0) for lin in self.linears())
        for shape in self.other_tensors().values():
            c = 1
            for d in shape:
                c *= d
            n += c
        return n


def tiny_config(model_type: str = "llama", **overrides: Any) -> dict[str, Any]:
    """A small but complete config.json for fixtures and the demo.

    Dimensions are multiples of 256 so every format (GGUF k-quants need rows
    of 256, GPTQ/AWQ group sizes up to 128) can quantize every linear.
    """
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": model_type,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "float16",
        "tie_word_embeddings": FAMILIES.get(model_type, FAMILIES["llama"])[1],
    }
    cfg.update(overrides)
    return cfg
