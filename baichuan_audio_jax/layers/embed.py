"""Embedding tables."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.params import normal, param


class Embed(nnx.Module):
    """A [num_embeddings, dim] lookup table; ``attend`` gives tied-output logits."""

    def __init__(self, num_embeddings: int, dim: int, *, axes=("vocab", "embed"), dtype=jnp.float32,
                 param_dtype=jnp.float32, stddev: float = 1.0, rngs: nnx.Rngs):
        self.num_embeddings = num_embeddings
        self.dtype = dtype
        self.embedding = param(rngs, normal(stddev), (num_embeddings, dim), axes, param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(self.dtype))
