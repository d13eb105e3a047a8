"""Losses of HiFT vocoder training (HiFi-GAN's objective, as CosyVoice's HiFT recipe uses it).

* **mel L1**: mean |mel(ŷ) − mel(y)| of the natural-log 24 kHz mel
  (:func:`baichuan_audio_jax.audio.mel24k.log_mel_24k`, the vocoder's own input feature);
* **feature matching**: Σ over sub-discriminators and their layers of mean |D_l(y) − D_l(ŷ)|;
* **least-squares adversarial**: discriminator Σ_k mean((1 − D_k(y))²) + mean(D_k(ŷ)²),
  generator Σ_k mean((1 − D_k(ŷ))²).

Every term is a mean over its elements (per sub-discriminator, per layer), so a batch of equal
rows gives the same value as one row. The generator's total is
``mel_weight``·mel + ``feature_weight``·FM + ``adversarial_weight``·adv (HiFi-GAN: 45, 2, 1).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from baichuan_audio_jax.audio.mel24k import log_mel_24k
from baichuan_audio_jax.config import FlowMatchingConfig


def mel_l1(fake: jax.Array, real: jax.Array, mel_cfg: FlowMatchingConfig = FlowMatchingConfig(),
           real_mel: jax.Array | None = None) -> jax.Array:
    """Mean |log-mel(fake) − log-mel(real)| of two waveforms ``[B, L]`` (``real_mel`` if already
    computed)."""
    target = log_mel_24k(real, mel_cfg) if real_mel is None else real_mel
    return jnp.mean(jnp.abs(log_mel_24k(fake, mel_cfg) - jax.lax.stop_gradient(target)))


def feature_matching(real: Sequence[Sequence[jax.Array]], fake: Sequence[Sequence[jax.Array]]) -> jax.Array:
    """Σ_k Σ_l mean |real_kl − fake_kl| (real features are constants)."""
    total = jnp.zeros((), jnp.float32)
    for rk, fk in zip(real, fake, strict=True):
        for r, f in zip(rk, fk, strict=True):
            total = total + jnp.mean(jnp.abs(jax.lax.stop_gradient(r) - f))
    return total


def discriminator_loss(real_scores: Sequence[jax.Array], fake_scores: Sequence[jax.Array]
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(total, real part, fake part) of the least-squares discriminator loss."""
    real = sum(jnp.mean(jnp.square(1.0 - r)) for r in real_scores)
    fake = sum(jnp.mean(jnp.square(f)) for f in fake_scores)
    return real + fake, real, fake


def generator_adversarial_loss(fake_scores: Sequence[jax.Array]) -> jax.Array:
    """Σ_k mean((1 − D_k(ŷ))²)."""
    return sum(jnp.mean(jnp.square(1.0 - f)) for f in fake_scores)
