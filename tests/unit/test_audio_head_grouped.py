"""The audio head's classifiers run batched per group of equal-sized codebooks (fewer, larger
products for the compiler) and give each codebook's own classifier's logits (float32, 1e-6)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from training_helpers import tiny_run_config

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.models.audio_llm import AudioLLM


def test_grouped_classifiers_equal_per_codebook_heads():
    cfg = ModelConfig.from_config(tiny_run_config().model)
    model = AudioLLM(cfg, rngs=nnx.Rngs(1))
    head = model.audio_head
    assert head.codebook_groups() == [(0,), (1,), (2, 3), (4, 5, 6, 7)]  # tiny sizes 64, 32, 16, 16, 8 × 4
    y = jax.random.normal(jax.random.key(0), (8, 12, cfg.llm.hidden_size))  # depth first
    for ks, lg in head.classify(y):
        assert lg.shape == (len(ks), 12, cfg.codebook_sizes[ks[0]] + 1)
        for j, k in enumerate(ks):
            np.testing.assert_allclose(np.asarray(lg[j]), np.asarray(head.heads[k](y[k])), rtol=1e-6, atol=1e-6)
    x = jax.random.normal(jax.random.key(1), (2, 3, cfg.llm.hidden_size))
    codes = jnp.zeros((2, 3, 8), jnp.int32)
    logits = model.audio_logits(x, codes)
    assert [lg.shape for lg in logits] == [(2, 3, c + 1) for c in cfg.codebook_sizes]
