"""Properties of the audio LLM beyond fixture parity: execution modes agree with each other.

Bounds (float32, highest matmul precision): scanned vs unrolled layers and sharded vs single
device agree to 1e-5 absolute on logits of magnitude ~5; cached decoding matches the full
forward to 1e-5; the incremental audio head matches the full head to 1e-5.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.tables import audio_embed_table, audio_head_table, llm_table
from baichuan_audio_jax.models.audio_llm import AudioLLM, place_audio_codes
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.sharding import make_mesh, state_shardings

ATOL = 1e-5


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
    fwd, state = pure(model)
    scanned = jax.jit(fwd)(state, *plain_inputs).logits
    graphdef = nnx.split(nnx.eval_shape(lambda: AudioLLM(_replace(cfg, scan_layers=False), rngs=nnx.Rngs(1))))[0]
    unrolled_model = nnx.merge(graphdef, state)
    fwd_u, state_u = pure(unrolled_model)
    unrolled = jax.jit(fwd_u)(state_u, *plain_inputs).logits
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(scanned), atol=ATOL, rtol=0)


def test_sharded_forward_matches_single_device(fixture_model, plain_inputs):
    assert len(jax.devices()) >= 8, "conftest provides 8 CPU devices"
    _, model, _ = fixture_model
    fwd, state = pure(model)
    single = np.asarray(jax.jit(fwd)(state, *plain_inputs).logits)
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    shardings = state_shardings(state, mesh)
    sharded_state = jax.device_put(state, shardings)
    specs = [s.spec for s in jax.tree.leaves(shardings)]
    assert any("fsdp" in str(s) for s in specs) and any("tensor" in str(s) for s in specs)
    with jax.set_mesh(mesh):
        ids, codes = (jax.device_put(x, NamedSharding(mesh, P())) for x in plain_inputs)
        out = jax.jit(fwd, out_shardings=None)(sharded_state, ids, codes).logits
    np.testing.assert_allclose(np.asarray(out), single, atol=ATOL, rtol=0)


def test_kv_cached_decoding_matches_full_forward(fixture_model, plain_inputs):
    _, model, _ = fixture_model
    fwd, state = pure(model)
    ids, codes = plain_inputs
    b, s = ids.shape
    full = np.asarray(jax.jit(fwd)(state, ids, codes).logits)
    step = jax.jit(lambda st, i, c, cache, idx: fwd(st, i, c, cache=cache, cache_index=idx,
                                                   attention_mask=jnp.ones((b, s + 4), jnp.int32)))
    cache = model.init_cache(b, s + 4)
    prefix = 20
    out = step(state, ids[:, :prefix], codes[:, :prefix], cache, 0)
    got = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(prefix, s):
        out = step(state, ids[:, t:t + 1], codes[:, t:t + 1], cache, t)
        cache = out.cache
        got.append(np.asarray(out.logits))
    np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=ATOL, rtol=0)


def test_incremental_audio_head_matches_full_head(fixture_set, fixture_model):
    cfg, model, _ = fixture_model
    a = fixture_set.component("audio_head").arrays
    x, codes = jnp.asarray(a["x"]), jnp.asarray(a["audios_tokens"])
    full = model.audio_logits(x, codes)
    head = model.audio_head
    cache = head.init_cache(x.shape[0])
    inp, running = x, None
    for i in range(len(cfg.codebook_sizes)):
        logits, cache = head.decode_step(inp, i, cache)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[i]), atol=ATOL, rtol=0)
        emb = model.audio_embed[i](codes[:, i])
        running = emb if running is None else running + emb
        inp = running


def test_packed_rows_equal_separate_sequences(fixture_model):
    """Two sequences packed in one row (segment ids, restarted positions) give the same logits as
    each sequence alone."""
    _, model, _ = fixture_model
    rng = np.random.default_rng(0)
    a, b = rng.integers(3, 400, size=9), rng.integers(3, 400, size=13)
    packed = np.concatenate([a, b])[None]
    seg = np.array([[1] * 9 + [2] * 13])
    pos = np.array([list(range(9)) + list(range(13))])
    out = np.asarray(model(packed, segment_ids=seg, positions=pos).logits)[0]
    np.testing.assert_allclose(out[:9], np.asarray(model(a[None]).logits)[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out[9:], np.asarray(model(b[None]).logits)[0], atol=ATOL, rtol=0)


def _replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)
