"""Feed-forward blocks: SwiGLU (LLM) and GELU (audio stack)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.sharding import constrain


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, the reference's "gelu" everywhere."""
    return jax.nn.gelu(x, approximate=False)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout: each element zeroed with probability ``rate``, the rest scaled by
    1 / (1 − rate); the identity for ``rate`` 0."""
    if rate <= 0.0:
        return x
    if rng is None:
        raise ValueError(f"dropout at rate {rate} needs a random key")
    if rate >= 1.0:
        raise ValueError(f"dropout rate must be below 1, got {rate}")
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) ⊙ up(x)), no biases."""

    def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Dense(dim, hidden, in_axis="embed", out_axes="mlp", **kw)
        self.up_proj = Dense(dim, hidden, in_axis="embed", out_axes="mlp", **kw)
        self.down_proj = Dense(hidden, dim, in_axis="mlp", out_axes="embed", **kw)

    def __call__(self, x: jax.Array, *, dropout_rate: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
        """``dropout_rate`` > 0 (training, with ``rng``): inverted dropout on the hidden activations."""
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
        return self.down_proj(dropout(h, dropout_rate, rng))


class GeluMLP(nnx.Module):
    """fc2(gelu(fc1(x))) with biases (Whisper-style layers, U-Net feed-forward)."""

    def __init__(self, dim: int, hidden: int, *, use_bias: bool = True, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Dense(dim, hidden, in_axis="embed", out_axes="mlp", **kw)
        self.fc2 = Dense(hidden, dim, in_axis="mlp", out_axes="embed", **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))
