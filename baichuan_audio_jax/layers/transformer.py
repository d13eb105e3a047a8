"""The Whisper-style pre-norm transformer layer of the audio stack (reference §4.1).

Used by the audio encoder (bidirectional, LayerNorm), the audio decoder (causal, LayerNorm) and
the flow-matching prenet (causal, RMSNorm). Per layer::

    x = x + out_proj(attn(norm1(x)))        # q/v/out with bias, k without
    x = x + fc2(gelu(fc1(norm2(x))))

followed, only for float16/bfloat16 activations, by clamping ±inf to ±(dtype max − 1000).

The reference packs the valid frames of every sample, runs the layers, and unpacks with exact
zeros. :func:`run_layers` keeps the padded layout instead: keys past each sample's length are
masked (padded frames never reach valid outputs) and padded outputs are zeroed at the end, so a
sample's result does not depend on the rest of the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.attention import MultiHeadAttention, causal_mask, key_padding_mask, length_mask
from baichuan_audio_jax.layers.mlp import GeluMLP
from baichuan_audio_jax.layers.norms import LayerNorm, RMSNorm
from baichuan_audio_jax.layers.stack import run_stack


def clamp_half(x: jax.Array) -> jax.Array:
    """The reference's overflow guard: only for half-precision activations."""
    if x.dtype not in (jnp.float16, jnp.bfloat16):
        return x
    big = float(jnp.finfo(x.dtype).max) - 1000.0
    return jnp.where(jnp.isinf(x), jnp.sign(x) * big, x).astype(x.dtype)


class WhisperLayer(nnx.Module):
    """Pre-norm attention + GELU feed-forward layer.

    Defaults are the Whisper convention (q/v/out biases, no k bias, head width dim/heads, half
    precision overflow guard). The flow-matching U-Net's transformer blocks are the same layer with
    ``qkv_bias=(False, False, False)``, ``head_dim`` such that heads·head_dim ≠ dim, and no guard.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, norm: str = "layernorm", eps: float = 1e-5,
                 head_dim: int | None = None, qkv_bias: tuple[bool, bool, bool] = (True, False, True),
                 clamp_overflow: bool = True, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if norm == "layernorm":
            make_norm = lambda: LayerNorm(dim, eps=eps, **kw)
        elif norm == "rmsnorm":
            make_norm = lambda: RMSNorm(dim, eps=eps, **kw)
        else:
            raise ValueError(f"unknown norm {norm!r} (layernorm or rmsnorm)")
        q_bias, k_bias, v_bias = qkv_bias
        self.clamp_overflow = clamp_overflow
        self.attn_norm = make_norm()
        self.attn = MultiHeadAttention(dim, num_heads, head_dim, q_bias=q_bias, k_bias=k_bias, v_bias=v_bias,
                                       out_bias=True, **kw)
        self.mlp_norm = make_norm()
        self.mlp = GeluMLP(dim, ffn_dim, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), mask)
        x = x + self.mlp(self.mlp_norm(x))
        return clamp_half(x) if self.clamp_overflow else x


def layer_mask(lengths: jax.Array, t: int, causal: bool) -> jax.Array:
    """[B, T, T]: keys within each sample's length (and ≤ the query when causal)."""
    mask = key_padding_mask(length_mask(lengths, t), t)
    if causal:
        mask = mask & causal_mask(t)
    return mask


def run_layers(layers: nnx.Module, x: jax.Array, lengths: jax.Array, *, causal: bool, scan: bool = True,
               remat_policy: str = "none") -> jax.Array:
    """Runs a stack of :class:`WhisperLayer` on [B, T, D] with per-sample ``lengths``.

    Outputs past each length are *not* zeroed here (callers apply their final norm first and then
    zero, as the reference does after unpacking).
    """
    mask = layer_mask(lengths, x.shape[1], causal)
    x, _ = run_stack(layers, x, lambda layer, h, _: (layer(h, mask), None), scan=scan, remat_policy=remat_policy)
    return x


def zero_padding(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Exact zeros past each sample's length on the time axis (axis 1)."""
    m = length_mask(lengths, x.shape[1])
    return jnp.where(m.reshape(m.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))
