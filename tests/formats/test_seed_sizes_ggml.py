"""guanaco-7B GGML v3 (ggjt) published file sizes and Max RAM, decimal GB, from predict_size."""

from __future__ import annotations

import pytest

from mcard import api

LLAMA7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "vocab_size": 32000}

# type -> (file GB, Max RAM GB) as listed on TheBloke/guanaco-7B-GGML (June 2023).
PUBLISHED = {
    "q2_K": (2.80, 5.30), "q3_K_L": (3.55, 6.05), "q3_K_M": (3.23, 5.73), "q3_K_S": (2.90, 5.40),
    "q4_0": (3.79, 6.29), "q4_1": (4.21, 6.71), "q4_K_M": (4.05, 6.55), "q4_K_S": (3.79, 6.29),
    "q5_0": (4.63, 7.13), "q5_1": (5.06, 7.56), "q5_K_M": (4.77, 7.27), "q5_K_S": (4.63, 7.13),
    "q6_K": (5.53, 8.03), "q8_0": (7.16, 9.66),
}


@pytest.mark.parametrize("qtype", sorted(PUBLISHED))
def test_guanaco_7b_ggml_sizes(qtype):
    est = api.predict_size(LLAMA7B, "ggml", type=qtype)
    size_gb, ram_gb = PUBLISHED[qtype]
    assert round(est.total_bytes / 1e9, 2) == size_gb
    assert round(est.ram_bytes / 1e9, 2) == ram_gb
