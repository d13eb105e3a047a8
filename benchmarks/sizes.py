"""Model sizes the benchmarks share: overrides of ``configs/tiny.py`` (float32, synthetic data).

* ``tiny``: ``configs/tiny.py`` as it is (LLM 256 × 2 layers, batch 8 × 128).
* ``small``: LLM 512 wide × 8 layers (8 heads, 2 KV heads, MLP 1408, vocabulary 8192), a 3-layer
  audio head, the released codebooks (1024 … 128); batch 4 × 512.
* ``7b-layer``: one decoder layer of the 7B geometry at batch 1 × 1024.
"""
from __future__ import annotations

import os

from baichuan_audio_jax.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = {
    "tiny": {},
    "small": {
        "model.llm.vocab_size": 8192, "model.llm.hidden_size": 512, "model.llm.intermediate_size": 1408,
        "model.llm.num_layers": 8, "model.llm.num_heads": 8, "model.llm.num_kv_heads": 2,
        "model.llm.head_dim": 64, "model.llm.max_position_embeddings": 2048,
        "model.audio_head.num_layers": 3,
        "model.vq_bridge.codebook_sizes": [1024, 1024, 256, 256, 256, 256, 128, 128],
        "data.batch_size": 4, "data.seq_len": 512,
    },
    "7b-layer": {
        "model.llm.vocab_size": 8192, "model.llm.hidden_size": 3584, "model.llm.intermediate_size": 18944,
        "model.llm.num_layers": 1, "model.llm.num_heads": 28, "model.llm.num_kv_heads": 4,
        "model.llm.head_dim": 128, "model.llm.max_position_embeddings": 2048,
        "data.batch_size": 1, "data.seq_len": 1024,
    },
}


def size_config(size: str, rest: list[str]):
    overrides = [f"--config.{k}={v}" for k, v in SIZES[size].items()]
    overrides = [o.replace(" ", "") for o in overrides]
    return load_config(os.path.join(REPO, "configs", "tiny.py"), overrides + list(rest))
