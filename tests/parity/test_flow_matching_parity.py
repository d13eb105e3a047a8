"""Flow-matching decoder: parity with the reference fixtures, sampler numerics, mapping table.

Parity bound: |ours − ref| ≤ suggested_atol + 1e-4·|ref| per array from the manifest (prenet_out
2e-5, estimator_out 3e-5, flow_matching_mel 4e-5, step-0 velocities 2e-5, trajectory 4e-5);
lengths exact. The time grid is compared bit for bit.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, model_config_from_reference
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import check_coverage, combine_tables, export_tensors, state_shapes
from baichuan_audio_jax.conversion.tables import flow_matching_table
from baichuan_audio_jax.inference.waveform import hidden_to_mel
from baichuan_audio_jax.layers.attention import length_mask
from baichuan_audio_jax.models.flow_matching import (
    FlowMatchingDecoder,
    euler_schedule,
    guidance_weights,
    time_grid,
    unet_attention_mask,
)
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.parity.runner import run_component


@pytest.fixture(scope="module")
def comp(fixture_set):
    return fixture_set.component("flow_matching")


@pytest.fixture(scope="module")
def decoder(comp):
    cfg = comp.model_config
    model, _ = load_model(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(0)),
                          combine_tables(flow_matching_table(cfg)), comp.weights)
    return model


def test_parity_flow_matching(fixture_set):
    results = run_component(fixture_set, "flow_matching")
    failures = [r.line() for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    compared = {r.array for r in results}
    assert set(fixture_set.component("flow_matching").outputs()) <= compared
    assert {"step0_v_cond", "step0_v_uncond", "trajectory_x"} <= compared


def test_time_grid_matches_reference_bits(comp):
    a = comp.arrays
    grid = time_grid(len(a["t_span"]) - 1, "cosine", "float32")
    np.testing.assert_array_equal(grid.view(np.int32), a["t_span"].view(np.int32))
    schedule = euler_schedule(len(a["euler_t"]), "cosine", "float32")
    np.testing.assert_array_equal(schedule.t.view(np.int32), a["euler_t"].view(np.int32))
    assert guidance_weights(0.7)[0] == np.float32(1.7) and guidance_weights(0.7)[1] == np.float32(0.7)


@pytest.fixture(scope="module")
def estimator_inputs(comp):
    """x = noise_z, µ = prenet_out, mask and the first Euler time, in the fixture's shapes."""
    a = comp.arrays
    x = np.swapaxes(a["noise_z"], 1, 2)
    mask = length_mask(jnp.asarray(a["input_length"]), x.shape[1])
    return x, jnp.asarray(a["prenet_out"]), mask, jnp.float32(0.3)


@pytest.fixture(scope="module")
def estimator(decoder):
    fn, state = pure(decoder.estimator)
    jitted = jax.jit(fn)
    return lambda *args: np.asarray(jitted(state, *args))


def test_batched_guidance_equals_separate_calls(decoder, estimator, estimator_inputs):
    """The [cond; uncond] batched call equals the reference's two calls up to float32 rounding
    (bound 1e-5 on velocities of magnitude ~2: differently shaped matmuls round differently);
    ``batched_guidance=False`` is the two calls exactly."""
    x, mu, mask, t = estimator_inputs
    w = guidance_weights(0.7)
    v_c = estimator(jnp.asarray(x), mask, mu, t)
    v_u = estimator(jnp.asarray(x), mask, jnp.zeros_like(mu), t)
    two_calls = np.asarray(jax.jit(lambda a, b: w[0] * a - w[1] * b)(v_c, v_u))
    batched, full_state = pure(decoder, "guided_velocity")
    v = jax.jit(batched)(full_state, jnp.asarray(x), mask, mu, t, jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(v), two_calls, atol=1e-5, rtol=0)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: FlowMatchingDecoder(dataclasses.replace(
        decoder.cfg, flow_matching=dataclasses.replace(decoder.cfg.flow_matching, batched_guidance=False)),
        rngs=nnx.Rngs(0))))
    fn, state = pure(nnx.merge(graphdef, nnx.state(decoder)), "guided_velocity")
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(state, jnp.asarray(x), mask, mu, t, jnp.asarray(w))),
                                  two_calls)


def test_chunk_mask_makes_chunks_block_causal(estimator, estimator_inputs):
    """With the static 100-frame chunk mask (and causal convs) frames < 100 ignore later frames,
    a frame of the second chunk sees its whole chunk, and rows do not interact."""
    x, mu, mask, t = estimator_inputs
    base = estimator(jnp.asarray(x), mask, mu, t)
    moved_x = x.copy()
    moved_x[0, 115] += 1.0
    moved = estimator(jnp.asarray(moved_x), mask, mu, t)
    np.testing.assert_array_equal(moved[0, :100], base[0, :100])
    assert np.abs(moved[0, 105] - base[0, 105]).max() > 1e-4
    np.testing.assert_array_equal(moved[1], base[1])
    m = np.asarray(unet_attention_mask(jnp.asarray([[1] * 150 + [0] * 10]), 100))[0]
    assert m[99, :100].all() and not m[99, 100:].any() and m[100, :150].all() and not m[100, 150:].any()


def test_hidden_to_mel_deterministic_and_matches_reference(decoder, comp):
    a = comp.arrays
    hidden, lengths = jnp.asarray(a["hidden_states"]), jnp.asarray(a["input_length"])
    noise = np.swapaxes(a["noise_z"], 1, 2)
    mel, mel_len = hidden_to_mel(decoder, hidden, lengths, noise=noise)
    spec = comp.array_spec("flow_matching_mel")
    ref = a["flow_matching_mel"]
    assert np.all(np.abs(np.asarray(mel) - ref) <= spec["suggested_atol"] + 1e-4 * np.abs(ref))
    np.testing.assert_array_equal(np.asarray(mel_len), a["flow_matching_mel_lengths"])
    short = int(a["input_length"].min())
    row = int(np.argmin(a["input_length"]))
    np.testing.assert_array_equal(np.asarray(mel)[row, short:], noise[row, short:])  # padded frames keep z

    k1, k2 = jax.random.key(1), jax.random.key(2)
    first = np.asarray(hidden_to_mel(decoder, hidden, lengths, key=k1, steps=3)[0])
    again = np.asarray(hidden_to_mel(decoder, hidden, lengths, key=k1, steps=3)[0])
    other = np.asarray(hidden_to_mel(decoder, hidden, lengths, key=k2, steps=3)[0])
    unguided = np.asarray(hidden_to_mel(decoder, hidden, lengths, key=k1, steps=3, cfg_rate=0.0)[0])
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.1
    assert np.abs(unguided - first).max() > 1e-3
    assert np.abs(first - np.asarray(mel)).max() > 1e-3  # 3 steps differ from 10


def test_cfm_loss_properties(decoder, comp):
    """The training loss is finite, positive, deterministic given the key, and trains both parts."""
    a = comp.arrays
    hidden, lengths = jnp.asarray(a["hidden_states"]), jnp.asarray(a["input_length"])
    target = jnp.asarray(a["flow_matching_mel"])
    loss_fn, state = pure(decoder, "loss")
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    loss, grads = value_and_grad(state, hidden, lengths, target, jax.random.key(3))
    again, _ = value_and_grad(state, hidden, lengths, target, jax.random.key(3))
    other, _ = value_and_grad(state, hidden, lengths, target, jax.random.key(4))
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert float(loss) == float(again) and float(loss) != float(other)
    g = nnx.State(grads)
    assert float(jnp.abs(g["prenet"]["out_proj"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(g["estimator"]["final_proj"]["kernel"][...]).max()) > 0


def test_mapping_round_trip_is_bit_exact(decoder, comp):
    table = combine_tables(flow_matching_table(comp.model_config))
    exported = dict(export_tensors(nnx.state(decoder), table))
    assert set(exported) == set(comp.weights)
    for name, ref in comp.weights.items():
        np.testing.assert_array_equal(exported[name], ref, err_msg=name)


def test_table_covers_real_checkpoint_shapes(parity_dir):
    """Every flow-matching key of the released model (1073 tensors) with its shape."""
    real = json.loads((parity_dir / "real_config_shapes.json").read_text())
    cfg = ModelConfig.from_config(model_config_from_reference(real["omni_config"]))
    shapes = state_shapes(nnx.state(nnx.eval_shape(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(0)))))
    source = {k: tuple(v["shape"]) for k, v in real["omni_state_dict"].items() if "flow_matching_decoder" in k}
    report = check_coverage(combine_tables(flow_matching_table(cfg)), shapes, source)
    assert report.ok, (report.missing[:5], report.unknown[:5], report.mismatched[:5])
    assert len(report.mapped) == len(source) == 1073


def test_reference_reader_rejects_unsupported_options(comp):
    tiny = dict(comp.manifest["tiny_config"])
    for key, value in (("act_fn", "silu"), ("channels", [32, 64]), ("new_option", 1)):
        bad = dict(tiny, flow_matching_config={**tiny["flow_matching_config"], key: value})
        with pytest.raises(ValueError, match=key.split("_")[0]):
            model_config_from_reference(bad)
