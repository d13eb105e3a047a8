"""Execution modes of a randomly initialised tiny audio LLM agree with each other (no fixtures
needed; the bounds are those of tests/audio_llm_checks.py, the same checks run on the reference
weights in tests/parity/test_audio_llm.py)."""
import audio_llm_checks as checks
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baichuan_audio_jax.models.audio_llm import AudioLLM, place_audio_codes


@pytest.fixture(scope="module")
def random_model(tiny_config):
    return tiny_config, AudioLLM(tiny_config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def inputs(random_model):
    cfg = random_model[0]
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 200, size=(2, 32)).astype(np.int32)
    ids[:, 5], ids[:, 6:12], ids[:, 12] = (cfg.tokens.audio_start_token_id, cfg.tokens.audio_pad_token_id,
                                           cfg.tokens.audio_end_token_id)
    frames = rng.integers(0, np.asarray(cfg.codebook_sizes), size=(2 * 6, len(cfg.codebook_sizes)))
    codes = place_audio_codes(ids, frames, cfg.tokens.audio_pad_token_id)
    return jnp.asarray(ids), jnp.asarray(codes)


def test_scanned_and_unrolled_layers_agree(random_model, inputs):
    checks.check_scanned_and_unrolled_layers_agree(*random_model, inputs)


def test_sharded_forward_matches_single_device(random_model, inputs):
    checks.check_sharded_forward_matches_single_device(random_model[1], inputs)


def test_kv_cached_decoding_matches_full_forward(random_model, inputs):
    checks.check_kv_cached_decoding_matches_full_forward(random_model[1], inputs, prefix=8)


def test_incremental_audio_head_matches_full_head(random_model):
    cfg, model = random_model
    x = jax.random.normal(jax.random.key(2), (3, cfg.llm.hidden_size))
    codes = jax.random.randint(jax.random.key(3), (3, len(cfg.codebook_sizes)), 0,
                               jnp.asarray(cfg.codebook_sizes))
    checks.check_incremental_audio_head_matches_full_head(cfg, model, x, codes)


def test_packed_rows_equal_separate_sequences(random_model):
    checks.check_packed_rows_equal_separate_sequences(random_model[1], high=200)
