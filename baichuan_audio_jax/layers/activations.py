"""Activations of the speech decoders that have no ready-made JAX form: Mish and Snake."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.params import param


def mish(x: jax.Array) -> jax.Array:
    """x · tanh(softplus(x)) (the U-Net blocks; PyTorch ``nn.Mish``)."""
    return x * jnp.tanh(jax.nn.softplus(x))


class Snake(nnx.Module):
    """Snake with a per-channel linear-scale α over channels-last input:
    ``x + 1/(α + 1e-9) · sin²(α·x)`` (operation order as in the HiFT vocoder)."""

    def __init__(self, channels: int, *, axis_name: str | None = "conv_out", param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.alpha = param(rngs, jax.nn.initializers.ones, (channels,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.alpha[...].astype(x.dtype)
        return x + (1.0 / (alpha + 1e-9)) * jnp.square(jnp.sin(x * alpha))
