"""The HiFT vocoder's training discriminators: multi-period and multi-resolution spectrogram.

Both judge a 24 kHz waveform ``[B, L]`` and return, per sub-discriminator, the scores (one per
output position, ``[B, n]``) and the hidden feature maps after every activation (for the
feature-matching loss):

* **multi-period** (HiFi-GAN's MPD): for each period p the waveform (reflect-padded to a multiple
  of p) is folded to ``[B, L/p, p]`` and each of the p columns goes through the same stack of
  weight-normed convolutions along time (kernel 5, stride 3; HiFi-GAN's ``(k, 1)`` 2-D kernels
  are exactly 1-D convolutions applied to every column), LeakyReLU between, and a final
  kernel-3 projection to one score per position;
* **multi-resolution spectrogram** (the HiFT recipe's second discriminator, as in UnivNet): for
  each (n_fft, hop, window) the centred STFT magnitude ``[B, frames, bins]`` goes through 2-D
  convolutions over (time, frequency) — a (3, 9) stem, three (3, 9) layers with frequency
  stride 2, a (3, 3) layer — and a (3, 3) projection to one score per (frame, bin).

Widths follow :meth:`DiscriminatorConfig.for_generator`: HiFi-GAN's widths for the released
512-channel generator, scaled with the generator's ``base_channels`` for smaller ones (so a
tiny generator gets a tiny discriminator). Discriminators are used only in training; they are
not part of the reference checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.config import VocoderConfig
from baichuan_audio_jax.layers.params import fan_in_normal, param, zeros
from baichuan_audio_jax.layers.weight_norm import WeightNormConv1d
from baichuan_audio_jax.models.hift import frame_signal
from baichuan_audio_jax.sharding import constrain

_F32 = jnp.float32
_WAVE = ("activation_batch", "activation_length")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    periods: tuple = (2, 3, 5, 7, 11)
    period_channels: tuple = (32, 128, 512, 1024, 1024)
    period_kernel: int = 5
    period_stride: int = 3
    # (n_fft, hop, window) of each spectrogram discriminator
    resolutions: tuple = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
    spec_channels: int = 32
    lrelu_slope: float = 0.1

    @classmethod
    def for_generator(cls, vocoder: VocoderConfig, **overrides) -> "DiscriminatorConfig":
        """The widths for a generator of ``vocoder.base_channels`` (512: HiFi-GAN's own);
        ``overrides``: other ``periods`` / ``resolutions`` (tuples)."""
        scale = min(1.0, vocoder.base_channels / 512)
        base = cls(**{k: tuple(tuple(x) if isinstance(x, (list, tuple)) else x for x in v)
                      for k, v in overrides.items()})
        return dataclasses.replace(
            base, period_channels=tuple(max(4, int(round(c * scale))) for c in base.period_channels),
            spec_channels=max(8, int(round(base.spec_channels * scale))))


class Judgement(NamedTuple):
    """Per sub-discriminator: scores ``[B, n]`` and feature maps (any shape, batch first)."""

    scores: list
    features: list


class PeriodDiscriminator(nnx.Module):
    def __init__(self, period: int, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.period, self.slope = period, cfg.lrelu_slope
        chans = (1, *cfg.period_channels)
        k, s = cfg.period_kernel, cfg.period_stride
        last = len(cfg.period_channels) - 1
        self.convs = nnx.List([
            WeightNormConv1d(chans[i], chans[i + 1], k, stride=1 if i == last else s, padding=(k - 1) // 2,
                             rngs=rngs) for i in range(len(cfg.period_channels))])
        self.conv_post = WeightNormConv1d(chans[-1], 1, 3, padding=1, rngs=rngs)

    def __call__(self, wave: jax.Array) -> tuple[jax.Array, list]:
        b, n = wave.shape
        p = self.period
        if n % p:
            wave = jnp.pad(wave, ((0, 0), (0, p - n % p)), mode="reflect")
        # [B, L/p, p] -> one sequence per column: [B·p, L/p, 1]
        x = wave.reshape(b, -1, p).transpose(0, 2, 1).reshape(b * p, -1, 1)
        features = []
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x), self.slope)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return x.reshape(b, -1), features


class Conv2d(nnx.Module):
    """2-D convolution on channels-last ``[B, H, W, C]``, kernel ``[kh, kw, in, out]``, PyTorch
    symmetric padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], *,
                 stride: tuple[int, int] = (1, 1), rngs: nnx.Rngs):
        self.stride = tuple(stride)
        self.padding = tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel)
        self.kernel = param(rngs, fan_in_normal(in_axis=(0, 1, 2)), (*kernel, in_channels, out_channels),
                            ("conv_kernel", "conv_kernel", "conv_in", "conv_out"))
        self.bias = param(rngs, zeros, (out_channels,), ("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(x, self.kernel[...].astype(x.dtype), window_strides=self.stride,
                                         padding=self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...].astype(x.dtype)


def stft_magnitude(wave: jax.Array, n_fft: int, hop: int, window: int) -> jax.Array:
    """|STFT| ``[B, frames, n_fft/2 + 1]``: centred (reflect padding n_fft/2), periodic Hann of
    ``window`` samples centred in n_fft; sqrt(re² + im² + 1e-9) keeps the gradient finite."""
    pad = n_fft // 2
    if wave.shape[-1] <= pad:
        raise ValueError(f"a {wave.shape[-1]}-sample waveform is too short for the {n_fft}-point spectrogram "
                         f"discriminator (needs > {pad} samples)")
    x = jnp.pad(wave, ((0, 0), (pad, pad)), mode="reflect")
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window) / window)
    left = (n_fft - window) // 2
    w = np.pad(w, (left, n_fft - window - left)).astype(np.float32)
    spec = jnp.fft.rfft(frame_signal(x, n_fft, hop) * w, axis=-1)
    return jnp.sqrt(jnp.square(spec.real) + jnp.square(spec.imag) + 1e-9)


class SpectrogramDiscriminator(nnx.Module):
    def __init__(self, resolution: tuple[int, int, int], cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.resolution, self.slope = tuple(int(r) for r in resolution), cfg.lrelu_slope
        c = cfg.spec_channels
        self.convs = nnx.List([
            Conv2d(1, c, (3, 9), rngs=rngs),
            Conv2d(c, c, (3, 9), stride=(1, 2), rngs=rngs),
            Conv2d(c, c, (3, 9), stride=(1, 2), rngs=rngs),
            Conv2d(c, c, (3, 9), stride=(1, 2), rngs=rngs),
            Conv2d(c, c, (3, 3), rngs=rngs)])
        self.conv_post = Conv2d(c, 1, (3, 3), rngs=rngs)

    def __call__(self, wave: jax.Array) -> tuple[jax.Array, list]:
        x = stft_magnitude(wave, *self.resolution)[..., None]  # [B, frames, bins, 1]
        features = []
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x), self.slope)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return x.reshape(x.shape[0], -1), features


class VocoderDiscriminator(nnx.Module):
    """Multi-period + multi-resolution spectrogram discriminators (HiFT's ``MultipleDiscriminator``)."""

    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.periods = nnx.List([PeriodDiscriminator(p, cfg, rngs=rngs) for p in cfg.periods])
        self.spectrograms = nnx.List([SpectrogramDiscriminator(r, cfg, rngs=rngs) for r in cfg.resolutions])

    def __call__(self, wave: jax.Array) -> Judgement:
        """wave [B, L] -> one score array and feature list per sub-discriminator."""
        wave = constrain(wave.astype(_F32), _WAVE)
        scores, features = [], []
        for d in (*self.periods, *self.spectrograms):
            s, f = d(wave)
            scores.append(s)
            features.append(f)
        return Judgement(scores, features)

