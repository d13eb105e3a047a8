"""The 24 kHz log-mel spectrogram: the flow-matching target and the vocoder's input (§5.3).

Reference ``matcha_feat.mel_spectrogram`` with CosyVoice2's parameters (n_fft 1920, hop 480,
window 1920, 80 Slaney mels over 0–8000 Hz at 24 kHz), i.e. 50 frames per second:

1. reflect-pad the waveform by (n_fft − hop)/2 on both sides;
2. STFT without centring, periodic Hann window of ``win_size`` (centred in n_fft if shorter);
3. magnitude sqrt(re² + im² + 1e-9);
4. Slaney mel filterbank (librosa, Slaney normalisation) · magnitude;
5. ln(max(·, 1e-5)).

Frames = (n + 2·pad − n_fft) // hop + 1 (= n / hop for a multiple of the hop). Samples outside
[−1, 1] are reported with a warning, not clipped (as the reference prints and carries on).
Output is channels-last ``[..., frames, n_mels]`` like every mel in this package.

:func:`log_mel_numpy` is the same function in numpy for any :class:`MelGeometry` (host-side data
pipelines: the 24 kHz flow-matching target and the audio tokenizer's 16 kHz mel targets).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from baichuan_audio_jax.config import FlowMatchingConfig


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 Slaney-scale, Slaney-normalised filterbank (librosa)."""
    import librosa  # lazy: librosa's import costs ~1 s (numba); only the filter bank needs it
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                               htk=False, norm="slaney").astype(np.float32)


def _window(win_size: int, n_fft: int) -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_size) / win_size)
    left = (n_fft - win_size) // 2
    return np.pad(w, (left, n_fft - win_size - left)).astype(np.float32)


def num_frames(num_samples: int, n_fft: int = 1920, hop: int = 480) -> int:
    pad = (n_fft - hop) // 2
    return (num_samples + 2 * pad - n_fft) // hop + 1


@dataclasses.dataclass(frozen=True)
class MelGeometry:
    """STFT and filterbank settings of a log-mel (the attribute names of
    :class:`~baichuan_audio_jax.config.FlowMatchingConfig`, whose defaults these are)."""

    sampling_rate: int = 24000
    n_fft: int = 1920
    hop_length: int = 480
    win_size: int = 1920
    in_channels: int = 80  # mel bins
    fmin: float = 0.0
    fmax: float = 8000.0

    @classmethod
    def of(cls, cfg) -> "MelGeometry":
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def log_mel_numpy(wave: np.ndarray, geometry: MelGeometry = MelGeometry()) -> np.ndarray:
    """:func:`log_mel_24k` in numpy (float32 result, no range warning): wave [..., N] ->
    [..., frames, bins] for any :class:`MelGeometry`."""
    g = geometry
    n_fft, hop, win = g.n_fft, g.hop_length, g.win_size
    x = np.asarray(wave, np.float32)
    pad = (n_fft - hop) // 2
    if win > n_fft or x.shape[-1] + 2 * pad < n_fft or x.shape[-1] <= pad:
        raise ValueError(f"waveform of {x.shape[-1]} samples is too short for one mel frame "
                         f"(n_fft {n_fft}, hop {hop}, window {win})")
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    spec = np.fft.rfft(frames * _window(win, n_fft), axis=-1)
    magnitude = np.sqrt(np.square(spec.real) + np.square(spec.imag) + 1e-9).astype(np.float32)
    basis = mel_filterbank(g.sampling_rate, n_fft, g.in_channels, float(g.fmin), float(g.fmax))
    return np.log(np.maximum(magnitude @ basis.T, 1e-5)).astype(np.float32)


def log_mel_24k(wave: jax.Array | np.ndarray, cfg: FlowMatchingConfig = FlowMatchingConfig(),
                n_mels: int | None = None) -> jax.Array:
    """wave [..., N] float in [−1, 1] at ``cfg.sampling_rate`` -> [..., frames, n_mels] natural-log mel.

    ``n_mels`` defaults to ``cfg.in_channels`` (80). Works on numpy or JAX arrays, under ``jit``
    too (the range warning needs concrete values and is skipped while tracing).
    """
    n_mels = n_mels or cfg.in_channels
    n_fft, hop, win = cfg.n_fft, cfg.hop_length, cfg.win_size
    if win > n_fft:
        raise ValueError(f"win_size {win} > n_fft {n_fft}")
    if not isinstance(wave, jax.core.Tracer):
        w = np.asarray(wave)
        if w.size and (w.min() < -1.0 or w.max() > 1.0):
            warnings.warn(f"24 kHz mel: waveform exceeds [-1, 1] (min {w.min():.4f}, max {w.max():.4f})",
                          stacklevel=2)
    x = jnp.asarray(wave, jnp.float32)
    pad = (n_fft - hop) // 2
    if x.shape[-1] + 2 * pad < n_fft or x.shape[-1] <= pad:
        raise ValueError(f"waveform of {x.shape[-1]} samples is too short for one mel frame "
                         f"(n_fft {n_fft}, hop {hop})")
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = num_frames(x.shape[-1] - 2 * pad, n_fft, hop)
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = jnp.fft.rfft(x[..., idx] * _window(win, n_fft), axis=-1)
    magnitude = jnp.sqrt(jnp.square(spec.real) + jnp.square(spec.imag) + 1e-9)
    basis = mel_filterbank(cfg.sampling_rate, n_fft, n_mels, float(cfg.fmin), float(cfg.fmax))
    mel = jnp.einsum("...fk,mk->...fm", magnitude, basis, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, 1e-5))
