"""Parity runner for ``flow_matching``: prenet, one U-Net call and the full CFM sampling.

Intermediates (step-0 conditional/unconditional velocities, x entering the recorded Euler steps)
are returned too, so a drift is localised. The sampler settings come from the manifest's
``sampler`` block when present, else from the model config.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.tables import flow_matching_table
from baichuan_audio_jax.layers.attention import length_mask
from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder, euler_schedule, guidance_weights
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.parity.fixtures import FixtureComponent
from baichuan_audio_jax.parity.registry import register


def _t(x):
    """[B, C, T] (reference layout) <-> [B, T, C]."""
    return np.swapaxes(np.asarray(x), -1, -2)


@register("flow_matching")
def flow_matching(comp: FixtureComponent) -> dict:
    cfg = comp.model_config
    fm = cfg.flow_matching
    model, _ = load_model(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(0)),
                          combine_tables(flow_matching_table(cfg)), comp.weights)
    a = comp.arrays
    sampler = comp.spec.get("sampler", {})
    steps = int(sampler.get("n_timesteps", fm.diffusion_steps))
    rate = float(sampler.get("inference_cfg_rate", fm.inference_cfg_rate))
    schedule = euler_schedule(steps, sampler.get("t_scheduler", fm.t_scheduler), cfg.dtype)
    out = {}

    # The reference slices the padded hidden states to the longest length before the prenet.
    hidden = jnp.asarray(a["hidden_states"][:, :int(np.max(a["input_length"]))])
    prenet, prenet_state = pure(model.prenet)
    mu, mu_len = jax.jit(prenet)(prenet_state, hidden, jnp.asarray(a["input_length"]))
    out["prenet_out"] = np.asarray(mu)
    out["prenet_length"] = np.asarray(mu_len)

    estimator, est_state = pure(model.estimator)
    estimator = jax.jit(estimator)
    est = estimator(est_state, jnp.asarray(_t(a["estimator_x"])), jnp.asarray(a["estimator_mask"][:, 0]),
                    jnp.asarray(_t(a["estimator_mu"])), jnp.asarray(a["estimator_t"]))
    out["estimator_out"] = _t(est)

    noise = jnp.asarray(_t(a["noise_z"]))
    mask = length_mask(mu_len, mu.shape[1])
    v_cond = estimator(est_state, noise, mask, mu, jnp.asarray(schedule.t[0]))
    v_uncond = estimator(est_state, noise, mask, jnp.zeros_like(mu), jnp.asarray(schedule.t[0]))
    out["step0_v_cond"], out["step0_v_uncond"] = _t(v_cond), _t(v_uncond)

    # The full sampling: prenet output -> Euler loop from the captured noise, keeping the
    # trajectory (``FlowMatchingDecoder.__call__`` is exactly prenet + this sample call).
    sample, state = pure(model, "sample")
    traj = jax.jit(sample, static_argnames="return_trajectory")(
        state, mu, mask, noise, jnp.asarray(schedule.t), jnp.asarray(schedule.dt),
        jnp.asarray(guidance_weights(rate, cfg.dtype)), return_trajectory=True)
    if "trajectory_steps" in a:
        out["trajectory_x"] = _t(np.asarray(traj.xs)[np.asarray(a["trajectory_steps"])])
    out["flow_matching_mel"] = np.asarray(traj.mel)
    out["flow_matching_mel_lengths"] = np.asarray(mu_len)
    return out
