"""RMSNorm, LayerNorm and GroupNorm with length masks.

Statistics are always computed in float32 (as the reference does), then the result is cast to
the compute dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.params import ones, param, zeros


class RMSNorm(nnx.Module):
    """y = w ⊙ (x · rsqrt(mean(x²) + eps)); the normalised value is cast to ``dtype`` before ⊙ w."""

    def __init__(self, dim: int, *, eps: float = 1e-6, axis_name: str | None = "norm",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.scale = param(rngs, ones, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
        y = (xf * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * y


class LayerNorm(nnx.Module):
    """Affine LayerNorm over the last axis (eps 1e-5 by default, as everywhere in the audio stack)."""

    def __init__(self, dim: int, *, eps: float = 1e-5, axis_name: str | None = "norm",
                 use_bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.scale = param(rngs, ones, (dim,), (axis_name,), param_dtype)
        self.bias = param(rngs, zeros, (dim,), (axis_name,), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class GroupNorm(nnx.Module):
    """GroupNorm over channels-last input ``[B, T, C]`` with an optional length mask.

    Statistics of each sample (and group) are taken over its valid frames only (``lengths``), so a
    row's result does not depend on how far the batch is padded. Without ``lengths`` all frames
    count (the reference's behaviour on a padded batch).
    """

    def __init__(self, num_groups: int, channels: int, *, eps: float = 1e-5, axis_name: str | None = "norm",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if channels % num_groups:
            raise ValueError(f"{channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.dtype = dtype
        self.scale = param(rngs, ones, (channels,), (axis_name,), param_dtype)
        self.bias = param(rngs, zeros, (channels,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        b, t, c = x.shape
        g = self.num_groups
        xf = x.astype(jnp.float32).reshape(b, t, g, c // g)
        if lengths is None:
            w = jnp.ones((b, t, 1, 1), jnp.float32)
        else:
            w = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.float32)[:, :, None, None]
        count = jnp.maximum(jnp.sum(w, axis=(1, 3), keepdims=True) * (c // g), 1.0)
        mean = jnp.sum(xf * w, axis=(1, 3), keepdims=True) / count
        var = jnp.sum(jnp.square(xf - mean) * w, axis=(1, 3), keepdims=True) / count
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, t, c)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)
