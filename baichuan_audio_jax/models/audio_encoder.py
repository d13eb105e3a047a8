"""The Whisper-style audio encoder (reference §3.3, §4.2): 16 kHz log-mel -> 50 Hz hidden states.

::

    h = gelu(conv1(features))            # k3, pad 1, stride 1: L frames
    h = gelu(conv2(h))                   # k3, pad 1, stride 2: E = (L − 1) // 2 + 1 frames
    h = h + positional_embedding[:E]     # sinusoids, added in float32
    h = bidirectional pre-LN layers over each sample's E frames
    h = layer_norm(h); zeros past E

The position table is a :class:`~baichuan_audio_jax.layers.params.Buffer`: the reference stores
it in the checkpoint (as a persistent buffer) and the mapping tables load it; a fresh model
computes it in float32.

**Batch independence.** conv1's output is zeroed past each sample's L before conv2, so the last
encoder frame of a sample with odd L reads conv2's zero padding exactly as when the sample is
encoded alone. (The reference instead lets it read conv1's response to the batch padding, G12;
``mask_conv_padding=False`` reproduces that for parity with batched reference outputs.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.audio.lengths import encoder_frames
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.layers.conv import Conv1d
from baichuan_audio_jax.layers.mlp import gelu
from baichuan_audio_jax.layers.norms import LayerNorm
from baichuan_audio_jax.layers.params import buffer
from baichuan_audio_jax.layers.sinusoids import sinusoid_table
from baichuan_audio_jax.layers.stack import stacked
from baichuan_audio_jax.layers.transformer import WhisperLayer, run_layers, zero_padding

CONV_AXES = ("conv_kernel", "conv_in", "embed")


def add_positions(h: jax.Array, table: jax.Array) -> jax.Array:
    """h + table[:T] computed in float32 and cast back (the reference's order); T must fit."""
    t = h.shape[1]
    if t > table.shape[0]:
        raise ValueError(f"{t} frames exceed the positional table's {table.shape[0]} positions")
    return (h.astype(jnp.float32) + table[:t].astype(jnp.float32)[None]).astype(h.dtype)


class AudioEncoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        c = cfg.audio_encoder
        self.kernel_size, self.stride = c.kernel_size, c.stride_size
        self.scan, self.remat_policy = cfg.scan_layers, cfg.remat_policy
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        pad = c.kernel_size // 2
        self.conv1 = Conv1d(c.num_mel_bins, c.d_model, c.kernel_size, padding=pad, axes=CONV_AXES, **kw)
        self.conv2 = Conv1d(c.d_model, c.d_model, c.kernel_size, stride=c.stride_size, padding=pad,
                            axes=CONV_AXES, **kw)
        self.positional_embedding = buffer(sinusoid_table(c.max_source_positions, c.d_model),
                                           ("positions", "embed"))
        self.layers = stacked(
            lambda r: WhisperLayer(c.d_model, c.num_heads, c.ffn_dim, norm="layernorm", eps=c.layer_norm_eps,
                                   dtype=dtype, param_dtype=param_dtype, rngs=r),
            c.num_layers, rngs)
        self.layer_norm = LayerNorm(c.d_model, eps=c.layer_norm_eps, **kw)

    def output_lengths(self, feature_lengths: jax.Array) -> jax.Array:
        return encoder_frames(feature_lengths, self.kernel_size, self.stride)

    def __call__(self, features: jax.Array, feature_lengths: jax.Array, *, mask_conv_padding: bool = True
                 ) -> tuple[jax.Array, jax.Array]:
        """features [B, L, n_mels] log-mel, feature_lengths [B] (valid frames L_b).

        Returns (hidden [B, E_max, d_model] with exact zeros past E_b, E [B]).
        """
        feature_lengths = jnp.asarray(feature_lengths, jnp.int32)
        x = zero_padding(features.astype(self.dtype), feature_lengths)
        h = gelu(self.conv1(x))
        if mask_conv_padding:
            h = zero_padding(h, feature_lengths)
        h = gelu(self.conv2(h))
        h = add_positions(h, self.positional_embedding[...])
        lengths = self.output_lengths(feature_lengths)
        h = run_layers(self.layers, h, lengths, causal=False, scan=self.scan, remat_policy=self.remat_policy)
        return zero_padding(self.layer_norm(h), lengths), lengths
