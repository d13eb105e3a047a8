"""The encoder's 16 kHz, 128-bin Whisper-style log-mel (reference §5.1, G10).

Per chunk of at most ``max_audio_seconds`` (30 s) of 16 kHz samples:

1. L = min(3000, n // 160 + 1) valid frames.
2. The waveform is zero-padded to the full 30 s *before* the STFT, so frames just past the end see
   zeros (not a reflection of the signal).
3. STFT: periodic Hann(400), hop 160, centred (reflect-padded by 200), one-sided; the frame after
   the 3000th is dropped; power |X|².
4. Slaney mel filterbank (librosa, area-normalised, 0–8 kHz; the Whisper large-v3 bank), then
   log10(max(mel, 1e-10)).
5. Floor at (max − 8), the max taken over the whole padded chunk; then (x + 4) / 4.
6. The first L frames are the features.

Only frames that overlap the signal are computed: every other frame of the padded chunk is all
zeros, so its value is log10(1e-10) = −10, which never raises the maximum (all values are ≥ −10).
The result is therefore identical to transforming the full 30 s while costing time proportional
to the audio. Features are returned time-major, ``[L, n_mels]`` (the models' channels-last
layout).

Audio longer than a chunk is split back to back with no overlap (:func:`split_chunks`); each
chunk is normalised on its own and becomes its own encoder row.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from baichuan_audio_jax.audio.io import AudioError, load_audio
from baichuan_audio_jax.audio.lengths import audio_tokens, encoder_frames, max_mel_frames, mel_frames

LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0
# The reference resamples audio for the encoder with a 128-zero-crossing sinc (audio/resample.py).
ENCODER_LOWPASS_FILTER_WIDTH = 128


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Front-end settings (the encoder's ``audio_config``; defaults are the released model's)."""

    sampling_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    num_mel_bins: int = 128
    max_audio_seconds: float = 30
    kernel_size: int = 3  # encoder conv kernel: for the encoder-frame count
    stride_size: int = 2  # encoder conv2 stride
    avg_pooler: int = 4  # encoder frames per audio token

    @classmethod
    def from_encoder(cls, encoder_cfg, avg_pooler: int = 4) -> "LogMelConfig":
        """From an :class:`~baichuan_audio_jax.config.AudioEncoderConfig`."""
        return cls(sampling_rate=encoder_cfg.sampling_rate, n_fft=encoder_cfg.n_fft,
                   hop_length=encoder_cfg.hop_length, num_mel_bins=encoder_cfg.num_mel_bins,
                   max_audio_seconds=encoder_cfg.max_audio_seconds, kernel_size=encoder_cfg.kernel_size,
                   stride_size=encoder_cfg.stride_size, avg_pooler=avg_pooler)

    @property
    def chunk_samples(self) -> int:
        return int(self.max_audio_seconds * self.sampling_rate)

    @property
    def max_frames(self) -> int:
        return max_mel_frames(self.sampling_rate, self.hop_length, self.max_audio_seconds)

    def frames(self, num_samples):
        """L for a chunk of ``num_samples``."""
        return mel_frames(num_samples, self.hop_length, self.max_frames)

    def tokens(self, num_samples):
        """N for a chunk of ``num_samples``."""
        return audio_tokens(encoder_frames(self.frames(num_samples), self.kernel_size, self.stride_size),
                            self.avg_pooler)


@functools.lru_cache(maxsize=8)
def mel_filters(sampling_rate: int = 16000, n_fft: int = 400, num_mel_bins: int = 128) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] float32 Slaney filterbank over 0 .. sr/2 (computed in float64)."""
    import librosa  # lazy: librosa's import costs ~1 s (numba); only the filter bank needs it
    bank = librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=num_mel_bins, fmin=0.0,
                               fmax=sampling_rate / 2, htk=False, norm="slaney", dtype=np.float64)
    out = np.ascontiguousarray(bank.T.astype(np.float32))
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (the DFT-even form PyTorch's ``hann_window`` returns)."""
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


def log_mel(wav: np.ndarray, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """[L, n_mels] float32 features of one chunk (1 ≤ samples ≤ chunk length) of 16 kHz audio."""
    wav = np.asarray(wav, np.float32)
    if wav.ndim != 1:
        raise ValueError(f"log_mel expects a mono waveform [samples], got shape {wav.shape}")
    n = wav.shape[0]
    if n == 0:
        raise ValueError("log_mel: empty waveform")
    if n > cfg.chunk_samples:
        raise ValueError(f"log_mel: {n} samples exceed one {cfg.max_audio_seconds:g} s chunk "
                         f"({cfg.chunk_samples}); split with split_chunks first")
    hop, n_fft, half = cfg.hop_length, cfg.n_fft, cfg.n_fft // 2
    total = cfg.max_frames  # frames of the padded chunk (the STFT's last frame is dropped)
    valid = cfg.frames(n)
    # Frames starting at or past the end of the signal are all zeros: value −10, never the max.
    needed = min(total, -(-(n + half) // hop) + 1)
    padded = np.zeros(cfg.chunk_samples, np.float32)
    padded[:n] = wav
    padded = np.pad(padded, (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:needed]
    spec = np.fft.rfft(frames * hann_window(n_fft), axis=-1)
    power = (spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2)
    mel = power @ mel_filters(cfg.sampling_rate, n_fft, cfg.num_mel_bins)
    logm = np.log10(np.maximum(mel, np.float32(LOG_FLOOR)))
    logm = np.maximum(logm, logm.max() - np.float32(DYNAMIC_RANGE))
    return ((logm[:valid] + np.float32(4.0)) / np.float32(4.0)).astype(np.float32)


def split_chunks(wav: np.ndarray, cfg: LogMelConfig = LogMelConfig()) -> list[np.ndarray]:
    """Back-to-back chunks of at most ``max_audio_seconds``, as the reference splits long audio.

    A chunk shorter than ``n_fft`` samples, or too short to give one audio token, is dropped (the
    reference skips it); the result may therefore be empty for very short audio.
    """
    wav = np.asarray(wav, np.float32)
    step = cfg.chunk_samples
    out = []
    for start in range(0, wav.shape[0], step):
        chunk = wav[start:start + step]
        if chunk.shape[0] < cfg.n_fft or cfg.tokens(chunk.shape[0]) <= 0:
            continue
        out.append(chunk)
    return out


def load_waveform(path: str | os.PathLike, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """A file's mono waveform at the encoder's rate, resampled as the reference does; raises
    :class:`~baichuan_audio_jax.audio.io.AudioError` naming the file if it cannot be read or is too
    short to give one audio token."""
    wav = load_audio(path, cfg.sampling_rate, lowpass_filter_width=ENCODER_LOWPASS_FILTER_WIDTH)
    if not split_chunks(wav, cfg):
        raise AudioError(os.fspath(path), "too_short",
                         f"{wav.shape[0] / cfg.sampling_rate * 1000:.0f} ms gives no audio token")
    return wav
