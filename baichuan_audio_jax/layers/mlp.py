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


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) ⊙ up(x)), no biases."""

    def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Dense(dim, hidden, in_axis="embed", out_axes="mlp", **kw)
        self.up_proj = Dense(dim, hidden, in_axis="embed", out_axes="mlp", **kw)
        self.down_proj = Dense(hidden, dim, in_axis="mlp", out_axes="embed", **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
        return self.down_proj(h)


class GeluMLP(nnx.Module):
    """fc2(gelu(fc1(x))) with biases (Whisper-style layers, U-Net feed-forward)."""

    def __init__(self, dim: int, hidden: int, *, use_bias: bool = True, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Dense(dim, hidden, in_axis="embed", out_axes="mlp", **kw)
        self.fc2 = Dense(hidden, dim, in_axis="mlp", out_axes="embed", **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))
