"""Whisper sinusoid position tables and the U-Net timestep embedding."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def sinusoid_table(length: int, channels: int) -> np.ndarray:
    """[length, channels] float32: all sines first, then all cosines (reference §4.1).

    Evaluated in float32 like the reference's buffers (never in bf16: see G14). Checkpoints carry
    the reference's own table; loading it is preferred to recomputing.
    """
    if channels % 2:
        raise ValueError(f"sinusoid table needs an even channel count, got {channels}")
    half = channels // 2
    inv = np.exp(np.float32(-math.log(10000.0) / (half - 1)) * np.arange(half, dtype=np.float32))
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def timestep_embedding(t: jnp.ndarray, dim: int, scale: float = 1000.0) -> jnp.ndarray:
    """[..., dim] sinusoidal embedding of ``scale·t`` (sines first), computed in float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    arg = (scale * t)[..., None].astype(jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)
