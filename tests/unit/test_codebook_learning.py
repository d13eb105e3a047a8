"""RVQ codebook learning mechanics (training/codebook_learning.py) with exact expected values on
small tensors: EMA update with the L2-norm constraint, restarts, Gumbel sampling off at
evaluation, layer-wise dropout, the replacement schedule and the straight-through gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baichuan_audio_jax.training import codebook_learning as cl


def _ema_reference(embed_avg, cluster_size, counts, sums, decay, beta, eps):
    cs = decay * cluster_size + (1 - decay) * counts
    ea = decay * embed_avg + (1 - decay) * sums
    n = cs.sum()
    smoothed = (cs + eps) / (n + len(cs) * eps) * n
    return (1 - beta) * ea / smoothed[:, None], ea, cs


def test_ema_update_with_l2_constraint_exact():
    """Bound: 1e-6 relative (float32 arithmetic vs float64 reference)."""
    ea = np.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
    cs = np.array([2.0, 1.0, 4.0])
    counts = np.array([3.0, 0.0, 1.0])
    sums = np.array([[3.0, 3.0], [0.0, 0.0], [-1.0, 2.0]])
    decay, beta, eps = 0.9, 0.1, 1e-5
    out = cl.ema_update(jnp.asarray(ea, jnp.float32), jnp.asarray(cs, jnp.float32), jnp.zeros(3, jnp.int32),
                        jnp.asarray(counts, jnp.float32), jnp.asarray(sums, jnp.float32), jnp.zeros((3, 2)),
                        -jnp.ones(3), decay=decay, beta=beta, eps=eps, restart_after=5)
    want_embed, want_ea, want_cs = _ema_reference(ea, cs, counts, sums, decay, beta, eps)
    np.testing.assert_allclose(out["cluster_size"], want_cs, rtol=1e-6)
    np.testing.assert_allclose(out["embed_avg"], want_ea, rtol=1e-6)
    np.testing.assert_allclose(out["embed"], want_embed, rtol=1e-6)
    # By hand for code 0: cs = 0.9*2 + 0.1*3 = 2.1; ea = [0.9 + 0.3, 1.8 + 0.3] = [1.2, 2.1].
    np.testing.assert_allclose(out["cluster_size"][0], 2.1, rtol=1e-6)
    np.testing.assert_allclose(out["embed_avg"][0], [1.2, 2.1], rtol=1e-6)
    # β shrinks every vector by exactly (1 − β) relative to β = 0.
    plain = cl.ema_update(jnp.asarray(ea, jnp.float32), jnp.asarray(cs, jnp.float32), jnp.zeros(3, jnp.int32),
                          jnp.asarray(counts, jnp.float32), jnp.asarray(sums, jnp.float32), jnp.zeros((3, 2)),
                          -jnp.ones(3), decay=decay, beta=0.0, eps=eps, restart_after=5)
    np.testing.assert_allclose(out["embed"], (1 - beta) * np.asarray(plain["embed"]), rtol=1e-6)
    np.testing.assert_array_equal(out["unused_steps"], [0, 1, 0])
    assert not np.any(out["restarted"])


def test_restart_of_codes_unused_for_k_steps():
    ea = jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    cs = jnp.array([1.0, 1.0, 1.0])
    unused = jnp.array([2, 1, 0], jnp.int32)  # code 0 reaches 3 unused steps now, code 1 reaches 2
    counts = jnp.array([0.0, 0.0, 5.0])
    sums = jnp.array([[0.0, 0.0], [0.0, 0.0], [5.0, 10.0]])
    cand = jnp.array([[7.0, -7.0], [8.0, -8.0], [9.0, -9.0]])
    out = cl.ema_update(ea, cs, unused, counts, sums, cand, jnp.array([0.5, 0.5, 0.5]),
                        decay=0.5, beta=0.0, eps=0.0, restart_after=3)
    np.testing.assert_array_equal(out["restarted"], [True, False, False])
    np.testing.assert_array_equal(out["unused_before_restart"], [3, 2, 0])
    np.testing.assert_array_equal(out["unused_steps"], [0, 2, 0])
    np.testing.assert_allclose(out["embed_avg"][0], [7.0, -7.0])
    np.testing.assert_allclose(out["cluster_size"], [1.0, 0.5, 3.0])
    np.testing.assert_allclose(out["embed_avg"][1], [1.0, 1.0])
    # eps = 0: smoothed sizes = sizes; the restarted code sits exactly at its candidate.
    np.testing.assert_allclose(out["embed"][0], [7.0, -7.0])
    np.testing.assert_allclose(out["embed"][2], np.array([1.5 + 2.5, 1.5 + 5.0]) / 3.0)
    # Without a candidate (priority < 0: an empty batch) nothing restarts.
    none = cl.ema_update(ea, cs, unused, counts, sums, cand, -jnp.ones(3), decay=0.5, beta=0.0, eps=0.0,
                         restart_after=3)
    assert not np.any(none["restarted"])
    m = cl.usage_metrics(counts, out["unused_before_restart"], 3)
    assert float(m["dead"]) == 1.0 and float(m["used"]) == 1.0


def test_restart_candidates_come_from_valid_rows_and_merge_by_priority():
    inputs = jnp.arange(12.0).reshape(6, 2)
    valid = jnp.array([False, True, False, True, False, False])
    cand, prio = cl.restart_candidates(jax.random.key(0), inputs, valid, 16)
    rows = {tuple(np.asarray(inputs[i]).tolist()) for i in (1, 3)}
    assert {tuple(r) for r in np.asarray(cand).tolist()} <= rows
    assert np.all((prio > 0) & (prio <= 1))
    _, empty = cl.restart_candidates(jax.random.key(0), inputs, jnp.zeros(6, bool), 4)
    np.testing.assert_array_equal(empty, -1.0)
    a = (jnp.array([[1.0], [2.0]]), jnp.array([0.9, 0.1]))
    b = (jnp.array([[3.0], [4.0]]), jnp.array([0.5, 0.5]))
    got_c, got_p = cl.merge_candidates(a, b)
    np.testing.assert_array_equal(got_c, [[1.0], [4.0]])
    np.testing.assert_allclose(got_p, [0.9, 0.5], rtol=1e-7)


def test_assignment_stats_and_usage_exact():
    inputs = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [5.0, 5.0]])
    codes = jnp.array([2, 0, 2, 1])
    valid = jnp.array([True, True, True, False])
    counts, sums = cl.assignment_stats(inputs, codes, valid, 4)
    np.testing.assert_array_equal(counts, [1.0, 0.0, 2.0, 0.0])
    np.testing.assert_array_equal(sums, [[0.0, 2.0], [0.0, 0.0], [4.0, 3.0], [0.0, 0.0]])
    m = cl.usage_metrics(counts, jnp.array([0, 4, 0, 9]), 4)
    p = np.array([1 / 3, 2 / 3])
    np.testing.assert_allclose(m["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    assert float(m["used"]) == 2.0 and float(m["dead"]) == 2.0


def test_gumbel_sampling_is_off_at_evaluation(tiny_config):
    """temperature 0 (evaluation) gives exactly the inference path's codes (VQBridge.quantize);
    with a temperature and a key, codes are sampled (a different code for some rows) but every
    sampled code is drawn from the logits −d/τ: at a tiny temperature it is the nearest again."""
    from baichuan_audio_jax.models.vq_bridge import VQBridge

    bridge = VQBridge(tiny_config, rngs=nnx.Rngs(3))
    z = jax.random.normal(jax.random.key(1), (2, 5, tiny_config.vq_bridge.intermediate_dim))
    codes, vectors, inputs = cl.quantize_residuals(bridge.quantizers, z, jax.random.key(2), temperature=0.0)
    np.testing.assert_array_equal(codes, bridge.quantize(z))
    np.testing.assert_array_equal(cl.quantize_residuals(bridge.quantizers, z, None, 1.0)[0], bridge.quantize(z))
    np.testing.assert_allclose(inputs[1], np.asarray(z) - np.asarray(vectors[0]), rtol=0, atol=0)
    sampled = cl.quantize_residuals(bridge.quantizers, z, jax.random.key(2), temperature=50.0)[0]
    assert np.any(np.asarray(sampled) != np.asarray(codes))
    cold = cl.quantize_residuals(bridge.quantizers, z, jax.random.key(2), temperature=1e-6)[0]
    np.testing.assert_array_equal(cold, codes)
    # Exact Gumbel-max: the sample is argmax(−d/τ + g) with g drawn from the same key.
    d = jnp.array([[0.0, 1.0, 2.0]])
    g = jax.random.gumbel(jax.random.key(7), d.shape, jnp.float32)
    assert int(cl.sample_codes(d, jax.random.key(7), 2.0)[0]) == int(jnp.argmax(-d / 2.0 + g))


def test_layer_dropout_keeps_stage_one_and_drops_the_rest_per_instance():
    key = jax.random.key(5)
    u = np.asarray(jax.random.uniform(key, (6,)))
    keep = np.asarray(cl.layer_keep_mask(key, 6, 8, 0.5))
    np.testing.assert_array_equal(keep[:, 0], 1.0)
    for row, ui in zip(keep, u):
        np.testing.assert_array_equal(row[1:], 0.0 if ui < 0.5 else 1.0)
    np.testing.assert_array_equal(cl.layer_keep_mask(key, 4, 8, 0.0), np.ones((4, 8)))
    np.testing.assert_array_equal(cl.layer_keep_mask(key, 4, 8, 1.0), np.eye(8)[[0, 0, 0, 0]])


def test_replacement_schedule_and_instance_mask():
    sched = [[0, 0.1], [100, 1.0]]
    for step, want in ((0, 0.1), (50, 0.55), (100, 1.0), (400, 1.0), (-5, 0.1)):
        np.testing.assert_allclose(cl.piecewise_linear(sched, step), want, rtol=1e-6)
    staged = [[0, 0.1], [10, 0.1], [10, 0.5], [20, 0.5], [30, 1.0]]  # stages: flat, jump, ramp
    np.testing.assert_allclose([float(cl.piecewise_linear(staged, s)) for s in (5, 15, 25)], [0.1, 0.5, 0.75],
                               rtol=1e-6)
    key = jax.random.key(9)
    u = np.asarray(jax.random.uniform(key, (8,)))
    np.testing.assert_array_equal(cl.replace_mask(key, 8, 0.4), u < 0.4)
    assert not np.any(cl.replace_mask(key, 8, 0.0)) and np.all(cl.replace_mask(key, 8, 1.0))
    with pytest.raises(ValueError, match="must not decrease"):
        cl.piecewise_linear([[10, 0.0], [5, 1.0]], 0)


def test_straight_through_gradient():
    z = jnp.array([0.5, -1.0, 2.0])
    q = jnp.array([1.0, 0.0, 1.5])
    f = lambda x: jnp.sum(x ** 3)
    out = cl.straight_through(z, q)
    np.testing.assert_array_equal(out, q)
    np.testing.assert_allclose(jax.grad(lambda z: f(cl.straight_through(z, q)))(z), 3 * np.asarray(q) ** 2)
    assert float(jnp.sum(jnp.abs(jax.grad(lambda q: f(cl.straight_through(z, q)))(q)))) == 0.0


def test_alignment_rows_layout(tiny_config):
    """[audio_start, pads × slots, audio_end, text]: only the first N pads and K ids are valid;
    positions count valid tokens; the transcript (with EOS) is predicted from the position before."""
    from baichuan_audio_jax.training.tokenizer_task import alignment_sequence

    t = tiny_config.tokens
    seq = alignment_sequence(tiny_config, jnp.array([2, 3]), 3, jnp.array([[7, 8, 2, 0], [9, 2, 0, 0]]),
                             jnp.array([3, 2]))
    s, p, e = t.audio_start_token_id, t.audio_pad_token_id, t.audio_end_token_id
    np.testing.assert_array_equal(seq["input_ids"], [[s, p, p, p, e, 7, 8, 2, 0], [s, p, p, p, e, 9, 2, 0, 0]])
    np.testing.assert_array_equal(seq["segment_ids"], [[1, 1, 1, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(seq["positions"][0, :8], [0, 1, 2, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(seq["weights"], [[0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(seq["targets"][0, 4:7], [7, 8, 2])
    np.testing.assert_array_equal(seq["targets"][1, 4:6], [9, 2])


def test_microbatch_outputs_merge():
    """Gradient accumulation combines assignment statistics by addition and restart candidates
    by priority."""
    from baichuan_audio_jax.training.tokenizer_task import merge_sums

    a = {"mel_mae": jnp.array(0.5), "vq0_counts": jnp.array([1.0, 0.0]), "vq0_candidates": jnp.array([[1.0], [2.0]]),
         "vq0_priority": jnp.array([0.2, 0.9])}
    b = {"mel_mae": jnp.array(0.25), "vq0_counts": jnp.array([0.0, 3.0]), "vq0_candidates": jnp.array([[5.0], [6.0]]),
         "vq0_priority": jnp.array([0.7, 0.1])}
    m = merge_sums(a, b)
    assert float(m["mel_mae"]) == 0.75
    np.testing.assert_array_equal(m["vq0_counts"], [1.0, 3.0])
    np.testing.assert_array_equal(m["vq0_candidates"], [[5.0], [2.0]])
    np.testing.assert_allclose(m["vq0_priority"], [0.7, 0.9], rtol=1e-7)
