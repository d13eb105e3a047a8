"""Parity runner for ``hift_vocoder``: waveform and f0 with the captured source randomness.

The vocoder config is the component's own ``config`` block (HiFTGenerator arguments); the
weight-norm naming is detected from the weights file. ``source_s`` and ``conv_post_out`` are
returned as intermediates; ``conv_post_out`` comes from decoding the reference ``source_s`` so
the decoder is checked apart from the F0/source path.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from baichuan_audio_jax.config import vocoder_config_from_reference
from baichuan_audio_jax.conversion.vocoder import load_vocoder
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.parity.fixtures import FixtureComponent
from baichuan_audio_jax.parity.registry import register


@register("hift_vocoder")
def hift_vocoder(comp: FixtureComponent) -> dict:
    cfg = vocoder_config_from_reference(comp.spec["config"])
    model = load_vocoder(comp.weights, cfg)
    a = comp.arrays
    mel = jnp.asarray(a["mel"])  # [B, T, 80]
    phase_u01 = jnp.asarray(a["rand_phase_u01"][..., 0])  # [B, H+1, 1] -> [B, H+1]
    noise = jnp.asarray(np.swapaxes(a["randn_sine_noise"], 1, 2))  # [B, H+1, L] -> [B, L, H+1]

    forward, state = pure(model)
    wave, f0 = jax.jit(forward)(state, mel, phase_u01, noise)
    source, _ = jax.jit(pure(model, "source")[0])(state, f0, phase_u01, noise)
    _, conv_post = jax.jit(pure(model, "decode")[0])(state, mel, jnp.asarray(a["source_s"][:, 0]))
    return {
        "waveform": np.asarray(wave),
        "f0": np.asarray(f0),
        "source_s": np.asarray(source)[:, None, :],
        "conv_post_out": np.swapaxes(np.asarray(conv_post), 1, 2),
    }
