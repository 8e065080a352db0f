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
    def from_config(cls, cfg: dict[str, Any], source: str | Path = "config.json") -> "ModelShape":
        model_type = str(cfg.get("model_type", "llama"))
        if model_type not in FAMILIES:
            raise UnusableInput(
                f"model_type {model_type!r} is not supported (known: {', '.join(sorted(FAMILIES))})", source
            )
        bias_default, tie_default, extra = FAMILIES[model_type]
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            shape = cls(
                model_type=model_type,
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab_size=int(cfg["vocab_size"]),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", tie_default)),
                attention_bias=bool(cfg.get("attention_bias", bias_default)),
                extra_norms=extra,
            )
        except KeyError as exc:
            raise UnusableInput(f"config has no {exc.args[0]!r}", source) from None
        except (TypeError, ValueError) as exc:
            raise UnusableInput(f"config has a non-integer dimension: {exc}", source) from None
        return shape

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelShape":
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
