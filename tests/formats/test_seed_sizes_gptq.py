"""Predicted GPTQ sizes against published sizes (decimal GB, 2 decimals, weights file only)."""

from __future__ import annotations

import pytest

from mcard.core.arch import tiny_config
from mcard.core.size import predict_size

# Llama-2-13B (and LLaMA-13B: same dimensions and vocabulary).
LLAMA_13B = tiny_config(
    hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, vocab_size=32000, torch_dtype="float16",
)

# TheBloke/Llama-2-13B-chat-GPTQ branches: (bits, group size, act-order) -> published GB.
LLAMA2_13B_CHAT_GPTQ = {
    "main": (4, 128, False, 7.26),
    "gptq-4bit-32g-actorder_True": (4, 32, True, 8.00),
    "gptq-4bit-64g-actorder_True": (4, 64, True, 7.51),
    "gptq-4bit-128g-actorder_True": (4, 128, True, 7.26),
}


@pytest.mark.parametrize("branch", list(LLAMA2_13B_CHAT_GPTQ))
def test_llama2_13b_chat_gptq_branches(branch):
    bits, group_size, act_order, published = LLAMA2_13B_CHAT_GPTQ[branch]
    est = predict_size(LLAMA_13B, "gptq", bits=bits, group_size=group_size, desc_act=act_order)
    assert round(est.total_bytes / 1e9, 2) == published


def test_alpaca_13b_4bit_128g_is_the_same_layout():
    est = predict_size(LLAMA_13B, "gptq", bits=4, group_size=128)
    assert round(est.total_bytes / 1e9, 2) == 7.26
    assert est.parts["qweight"] == 40 * (4 * 5120 * 5120 + 3 * 5120 * 13824) // 2
