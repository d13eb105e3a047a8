"""Execution-mode properties of the audio LLM, checked on any weights (random or the reference's).

Bounds (float32, highest matmul precision): scanned vs unrolled layers and sharded vs single
device agree to 1e-5 absolute on logits of magnitude ~5; cached decoding matches the full
forward to 1e-5; the incremental audio head matches the full head to 1e-5.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from baichuan_audio_jax.models.audio_llm import AudioLLM
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.sharding import make_mesh, state_shardings

ATOL = 1e-5


def check_scanned_and_unrolled_layers_agree(cfg, model, inputs):
    fwd, state = pure(model)
    scanned = jax.jit(fwd)(state, *inputs).logits
    unrolled_cfg = dataclasses.replace(cfg, scan_layers=False)
    graphdef = nnx.split(nnx.eval_shape(lambda: AudioLLM(unrolled_cfg, rngs=nnx.Rngs(1))))[0]
    fwd_u, state_u = pure(nnx.merge(graphdef, state))
    unrolled = jax.jit(fwd_u)(state_u, *inputs).logits
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(scanned), atol=ATOL, rtol=0)


def check_sharded_forward_matches_single_device(model, inputs):
    assert len(jax.devices()) >= 8, "conftest provides 8 CPU devices"
    fwd, state = pure(model)
    single = np.asarray(jax.jit(fwd)(state, *inputs).logits)
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    shardings = state_shardings(state, mesh)
    sharded_state = jax.device_put(state, shardings)
    specs = [s.spec for s in jax.tree.leaves(shardings)]
    assert any("fsdp" in str(s) for s in specs) and any("tensor" in str(s) for s in specs)
    with jax.set_mesh(mesh):
        ids, codes = (jax.device_put(x, NamedSharding(mesh, P())) for x in inputs)
        out = jax.jit(fwd, out_shardings=None)(sharded_state, ids, codes).logits
    np.testing.assert_allclose(np.asarray(out), single, atol=ATOL, rtol=0)


def check_kv_cached_decoding_matches_full_forward(model, inputs, prefix: int):
    fwd, state = pure(model)
    ids, codes = inputs
    b, s = ids.shape
    full = np.asarray(jax.jit(fwd)(state, ids, codes).logits)
    step = jax.jit(lambda st, i, c, cache, idx: fwd(st, i, c, cache=cache, cache_index=idx,
                                                   attention_mask=jnp.ones((b, s + 4), jnp.int32)))
    cache = model.init_cache(b, s + 4)
    out = step(state, ids[:, :prefix], codes[:, :prefix], cache, 0)
    got = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(prefix, s):
        out = step(state, ids[:, t:t + 1], codes[:, t:t + 1], cache, t)
        cache = out.cache
        got.append(np.asarray(out.logits))
    np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=ATOL, rtol=0)


def check_incremental_audio_head_matches_full_head(cfg, model, x, codes):
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


def check_packed_rows_equal_separate_sequences(model, high: int):
    """Two sequences packed in one row (segment ids, restarted positions) give the same logits as
    each sequence alone."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(3, high, size=9), rng.integers(3, high, size=13)
    packed = np.concatenate([a, b])[None]
    seg = np.array([[1] * 9 + [2] * 13])
    pos = np.array([list(range(9)) + list(range(13))])
    out = np.asarray(model(packed, segment_ids=seg, positions=pos).logits)[0]
    np.testing.assert_allclose(out[:9], np.asarray(model(a[None]).logits)[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out[9:], np.asarray(model(b[None]).logits)[0], atol=ATOL, rtol=0)
