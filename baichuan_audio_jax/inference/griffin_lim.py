"""24 kHz log-mel -> waveform without a neural vocoder: Griffin-Lim phase reconstruction (librosa).

The stand-in for HiFT when a model bundle has no vocoder weights (e.g. a model trained from
scratch by ``demo``, which trains no GAN vocoder). The mel is the flow-matching decoder's output
in the units of :mod:`baichuan_audio_jax.audio.mel24k` (natural log of Slaney mel magnitudes);
the magnitude spectrogram is recovered by non-negative least squares through the same filterbank
and the phase by Griffin-Lim iterations. Intelligible, with the typical metallic phase artefacts:
lower quality than a trained vocoder, and slower (host CPU).
"""
from __future__ import annotations

import numpy as np

from baichuan_audio_jax.audio.mel24k import MelGeometry

DEFAULT_ITERATIONS = 32
PEAK = 0.99  # the vocoder's output range


def griffin_lim_wave(mel: np.ndarray, geometry: MelGeometry = MelGeometry(), *,
                     n_iter: int = DEFAULT_ITERATIONS, seed: int = 0) -> np.ndarray:
    """mel [T, bins] (natural-log magnitudes) -> float32 waveform [hop · T] in [−0.99, 0.99]."""
    import librosa  # lazy: librosa's import costs ~1 s (numba); only this fallback needs it
    g = geometry
    mel = np.asarray(mel, np.float32)
    if mel.ndim != 2 or mel.shape[1] != g.in_channels or mel.shape[0] == 0:
        raise ValueError(f"mel must be a non-empty [T, {g.in_channels}] array, got {mel.shape}")
    magnitude_mel = np.exp(mel.T.astype(np.float64))
    spectrum = librosa.feature.inverse.mel_to_stft(
        magnitude_mel, sr=g.sampling_rate, n_fft=g.n_fft, power=1.0, fmin=g.fmin, fmax=g.fmax,
        htk=False, norm="slaney")
    # Frames as the mel's: no centring, the signal reflect-padded by (n_fft − hop) / 2 per side.
    padded = librosa.griffinlim(spectrum, n_iter=n_iter, hop_length=g.hop_length, win_length=g.win_size,
                                n_fft=g.n_fft, center=False, random_state=seed)
    pad = (g.n_fft - g.hop_length) // 2
    wave = padded[pad:pad + g.hop_length * mel.shape[0]]
    return np.clip(wave, -PEAK, PEAK).astype(np.float32)
