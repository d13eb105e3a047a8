"""Flow-matching decoder: parity with the reference fixtures, sampler numerics, mapping table.

Parity bound: |ours − ref| ≤ suggested_atol + 1e-4·|ref| per array from the manifest (prenet_out
2e-5, estimator_out 3e-5, flow_matching_mel 4e-5, step-0 velocities 2e-5, trajectory 4e-5);
lengths exact. The time grid is compared bit for bit.
"""



import jax.numpy as jnp
import numpy as np

from baichuan_audio_jax.models.flow_matching import (
    time_grid,
)


def test_time_grid_in_bfloat16_is_the_reference_bf16_grid():
    # Values listed in the reference spec (§4.8) for the bf16 demos.
    expected = [0, 0.012329, 0.048828, 0.108887, 0.191406, 0.292969, 0.412109, 0.546875, 0.691406, 0.84375, 1.0]
    grid = time_grid(10, "cosine", jnp.bfloat16).astype(np.float64)
    np.testing.assert_allclose(grid, expected, atol=5e-7)
    np.testing.assert_array_equal(time_grid(4, "linear"), np.float32([0, 0.25, 0.5, 0.75, 1]))


def test_time_embedding_scales_t_in_the_compute_dtype():
    """G6: the reference multiplies t by 1000 in the model dtype (bf16 in the demos) before the
    float32 sin/cos; the estimator's embedding follows that order."""
    from baichuan_audio_jax.layers.sinusoids import timestep_embedding

    t = jnp.asarray([0.0123, 0.0489], jnp.bfloat16)  # small t: sin/cos stay well conditioned
    ours = np.asarray(timestep_embedding(t, 160, 1000.0))
    scaled = np.asarray((t * 1000).astype(jnp.float32))  # rounded to bf16 first
    freqs = np.exp(np.float32(-np.log(10000.0) / 79) * np.arange(80, dtype=np.float32))
    arg = scaled[:, None] * freqs
    np.testing.assert_allclose(ours, np.concatenate([np.sin(arg), np.cos(arg)], axis=1), atol=1e-5)
    exact = np.float32(np.asarray(t, np.float32) * 1000)[:, None] * freqs
    assert np.abs(np.sin(exact) - ours[:, :80]).max() > 1e-3  # the bf16 rounding of 1000·t matters
