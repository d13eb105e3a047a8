"""Properties of the audio LLM with the reference weights: every parameter comes from the
reference, and execution modes agree with each other (bounds in tests/audio_llm_checks.py; the
same checks run on random weights in tests/unit/test_audio_llm_modes.py)."""
import audio_llm_checks as checks
import jax.numpy as jnp
import pytest
from flax import nnx

from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.tables import audio_embed_table, audio_head_table, llm_table
from baichuan_audio_jax.models.audio_llm import AudioLLM, place_audio_codes


@pytest.fixture(scope="module")
def fixture_model(fixture_set):
    """The fixture's tiny LM with its reference weights (LLM, audio embeddings, audio head)."""
    cfg = fixture_set.model_config
    weights = {**fixture_set.component("omni_lm").weights, **fixture_set.component("audio_head").weights}
    tables = combine_tables(llm_table(cfg), audio_embed_table(cfg), audio_head_table(cfg))
    model, unused = load_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)), tables, weights)
    return cfg, model, unused


@pytest.fixture(scope="module")
def plain_inputs(fixture_set, fixture_model):
    cfg = fixture_model[0]
    a = fixture_set.component("omni_lm").arrays
    ids = a["plain__input_ids"]
    codes = place_audio_codes(ids, a["plain__audios_tokens"], cfg.tokens.audio_pad_token_id)
    return jnp.asarray(ids, jnp.int32), jnp.asarray(codes)


def test_every_parameter_comes_from_the_reference(fixture_model):
    _, _, unused = fixture_model
    # Only the audio head's ignored FFN biases are recognised but unused.
    assert sorted(unused) and all(k.endswith(("linear1.bias", "linear2.bias")) for k in unused)


def test_scanned_and_unrolled_layers_agree(fixture_model, plain_inputs):
    cfg, model, _ = fixture_model
    checks.check_scanned_and_unrolled_layers_agree(cfg, model, plain_inputs)


def test_sharded_forward_matches_single_device(fixture_model, plain_inputs):
    checks.check_sharded_forward_matches_single_device(fixture_model[1], plain_inputs)


def test_kv_cached_decoding_matches_full_forward(fixture_model, plain_inputs):
    checks.check_kv_cached_decoding_matches_full_forward(fixture_model[1], plain_inputs, prefix=20)


def test_incremental_audio_head_matches_full_head(fixture_set, fixture_model):
    cfg, model, _ = fixture_model
    a = fixture_set.component("audio_head").arrays
    checks.check_incremental_audio_head_matches_full_head(cfg, model, jnp.asarray(a["x"]),
                                                          jnp.asarray(a["audios_tokens"]))


def test_packed_rows_equal_separate_sequences(fixture_model):
    checks.check_packed_rows_equal_separate_sequences(fixture_model[1], high=400)
