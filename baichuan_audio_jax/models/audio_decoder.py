"""The audio decoder: 12.5 Hz token embeddings -> 50 Hz hidden states and mel (reference §3.5,
§4.5, G5, G12).

::

    h = dconv1(a)                        # ConvTranspose k3 stride 4 + GroupNorm(1): 4N − 1 frames
    h = h + positional_embedding[:T]     # sinusoids, added in float32
    h = causal pre-LN layers over each sample's 4N − 1 frames
    H = layer_norm(h)                    # "hidden states before dconv2": the flow-matching input
    c = dconv2(H)                        # ConvTranspose k3 stride 2 + GroupNorm(1), last frame
                                         #   trimmed: 2(4N − 1) coarse mel frames (100 Hz, 80 bins)
    m = nearest-resize c to M = int(f32(2T)·0.625) frames (62.5 Hz)
    refined = m + post_net(m)            # 4 × [Conv1d k5 → GroupNorm(1) → Mish], 1×1 conv to 80

Because dconv1's kernel (3) is shorter than its stride (4), every 4th upsampled frame holds only
the bias before the GroupNorm — and still counts in its statistics.

**Batch independence.** The reference normalises over the whole padded batch tensor and resizes
with the batch's ratio, so a short sample's result depends on its neighbours (G12). Here every
statistic and every ratio is per sample: GroupNorm statistics over the sample's own frames (for a
transposed conv, its full (T − 1)·s + k output frames, *before* the causal trim, as the
reference's lone-sample computation has them), the nearest resize with the sample's own in/out
ratio, and exact zeros past each length before every convolution. A sample's outputs are those of
the reference decoding it alone.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.audio.lengths import refined_mel_frames, transposed_conv_frames
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.layers.conv import Conv1d, ConvTranspose1d
from baichuan_audio_jax.layers.norms import GroupNorm, LayerNorm
from baichuan_audio_jax.layers.params import buffer
from baichuan_audio_jax.layers.sinusoids import sinusoid_table
from baichuan_audio_jax.layers.stack import stacked
from baichuan_audio_jax.layers.transformer import WhisperLayer, run_layers, zero_padding
from baichuan_audio_jax.models.audio_encoder import add_positions


class DecoderOutput(NamedTuple):
    hidden_before_dconv2: jax.Array  # [B, T, D], zeros past hidden_lengths (T = 4N − 1)
    hidden_lengths: jax.Array  # [B]
    coarse_mel: jax.Array  # [B, M_max, mel] resized dconv2 output, zeros past mel_lengths
    refined_mel: jax.Array  # [B, M_max, mel] coarse + post-net, zeros past mel_lengths
    mel_lengths: jax.Array  # [B] M
    dconv2_out: jax.Array  # [B, C_max, mel] coarse mel before resizing, zeros past dconv2_lengths
    dconv2_lengths: jax.Array  # [B] C = 2T


class TransposedConvBlock(nnx.Module):
    """Causal upsampler: ConvTranspose1d (no padding) -> GroupNorm(1) -> drop max(0, k − s)
    frames on the right; zeros past each sample's output length."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, *,
                 axes: Sequence[str | None], dtype, param_dtype, rngs: nnx.Rngs):
        self.kernel_size, self.stride = kernel_size, stride
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv = ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride, axes=axes, **kw)
        self.norm = GroupNorm(1, out_channels, **kw)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, T, C_in] (zeros past ``lengths``) -> (y [B, T', C_out], output lengths)."""
        k, s = self.kernel_size, self.stride
        y = self.conv(x)
        untrimmed = jnp.where(lengths > 0, (lengths - 1) * s + k, 0)
        y = self.norm(y, untrimmed)
        trim = max(0, k - s)
        if trim:
            y = y[:, :y.shape[1] - trim]
        out_lengths = transposed_conv_frames(lengths, k, s)
        return zero_padding(y, out_lengths), out_lengths


def nearest_resize(x: jax.Array, in_lengths: jax.Array, out_lengths: jax.Array, out_max: int) -> jax.Array:
    """Per-sample nearest-neighbour resize on the time axis: output frame j of sample b takes
    input frame min(floor(f32(j) · f32(in_b / out_b)), in_b − 1) (PyTorch's legacy "nearest",
    float32 arithmetic); zeros past ``out_lengths``."""
    scale = in_lengths.astype(jnp.float32) / jnp.maximum(out_lengths, 1).astype(jnp.float32)
    j = jnp.arange(out_max, dtype=jnp.float32)
    src = jnp.floor(j[None, :] * scale[:, None]).astype(jnp.int32)
    src = jnp.clip(src, 0, jnp.maximum(in_lengths - 1, 0)[:, None])
    y = jnp.take_along_axis(x, src[..., None], axis=1)
    return zero_padding(y, out_lengths)


class PostNet(nnx.Module):
    """The refine net: blocks of [Conv1d k5 pad 2 -> GroupNorm(1) -> Mish], then a 1×1 conv back
    to the mel bins; its output is a residual added to the input."""

    def __init__(self, num_mel_bins: int, channels: Sequence[int], *, dtype, param_dtype, rngs: nnx.Rngs):
        if len(channels) < 2:
            raise ValueError(f"post-net needs at least 2 channel entries, got {tuple(channels)}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        widths = [num_mel_bins, *channels[:-1]]
        self.convs = nnx.List([Conv1d(widths[i], widths[i + 1], 5, padding=2, **kw) for i in range(len(widths) - 1)])
        self.norms = nnx.List([GroupNorm(1, w, **kw) for w in widths[1:]])
        self.proj = Conv1d(widths[-1], num_mel_bins, 1, **kw)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        y = x
        for conv, norm in zip(self.convs, self.norms):
            y = zero_padding(jax.nn.mish(norm(conv(y), lengths)), lengths)
        return zero_padding(self.proj(y) + x, lengths)


class AudioDecoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        c = cfg.audio_decoder
        self.cfg = c
        self.scan, self.remat_policy = cfg.scan_layers, cfg.remat_policy
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.dconv1 = TransposedConvBlock(c.d_model, c.d_model, c.kernel_size, c.avg_pooler,
                                          axes=("conv_kernel", "conv_in", "embed"), rngs=rngs, **kw)
        self.positional_embedding = buffer(sinusoid_table(c.max_source_positions, c.d_model),
                                           ("positions", "embed"))
        self.layers = stacked(
            lambda r: WhisperLayer(c.d_model, c.num_heads, c.ffn_dim, norm="layernorm", eps=c.layer_norm_eps,
                                   rngs=r, **kw),
            c.num_layers, rngs)
        self.layer_norm = LayerNorm(c.d_model, eps=c.layer_norm_eps, rngs=rngs, **kw)
        self.dconv2 = TransposedConvBlock(c.d_model, c.num_mel_bins, c.kernel_size, c.stride_size,
                                          axes=("conv_kernel", "embed", "conv_out"), rngs=rngs, **kw)
        self.post_net = PostNet(c.num_mel_bins, c.post_net_channels, rngs=rngs, **kw)

    @property
    def max_tokens(self) -> int:
        """Longest token sequence the position table admits (750 for the released model)."""
        c = self.cfg
        return (c.max_source_positions - c.kernel_size + max(0, c.kernel_size - c.avg_pooler)) // c.avg_pooler + 1

    def mel_lengths(self, coarse_lengths):
        c = self.cfg
        return refined_mel_frames(coarse_lengths, c.encoder_hop_length, c.encoder_sampling_rate,
                                  c.mel_sampling_rate, c.mel_hop_length)

    def hidden(self, a: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Token embeddings a [B, N, D] (lengths N) -> (H [B, 4N_max − 1, D], T = 4N − 1)."""
        lengths = jnp.asarray(lengths, jnp.int32)
        if a.shape[1] > self.max_tokens:
            raise ValueError(f"{a.shape[1]} audio tokens exceed the decoder's maximum of {self.max_tokens} "
                             f"per segment ({self.cfg.max_source_positions} positions)")
        h, t = self.dconv1(zero_padding(a.astype(self.dtype), lengths), lengths)
        h = add_positions(h, self.positional_embedding[...])
        h = run_layers(self.layers, h, t, causal=True, scan=self.scan, remat_policy=self.remat_policy)
        return zero_padding(self.layer_norm(h), t), t

    def __call__(self, a: jax.Array, lengths: jax.Array) -> DecoderOutput:
        """Token embeddings a [B, N, D] with lengths N -> every decoder output (see
        :class:`DecoderOutput`)."""
        hidden, t = self.hidden(a, lengths)
        coarse, c = self.dconv2(hidden, t)
        m = self.mel_lengths(c)
        m_max = int(self.mel_lengths(coarse.shape[1]))
        resized = nearest_resize(coarse, c, m, m_max)
        refined = self.post_net(resized, m)
        return DecoderOutput(hidden, t, resized, refined, m, coarse, c)
