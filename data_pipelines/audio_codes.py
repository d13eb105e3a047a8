"""Audio → codes for the on-the-fly path, and the number of audio tokens of a waveform.

The JSONL source turns every audio reference into an int32 ``[N, 8]`` code matrix through a
``codes_for(path)`` callable (:data:`CodesFor`), which the audio tokenizer runtime provides; it
raises :class:`~baichuan_audio_jax.audio.io.AudioError` for files it cannot use, and the pipeline
counts those as skipped. :func:`codes_from_waveform` builds one from any ``encode_waveform(wav16k)``
with the pipeline's duration bounds. Pre-tokenized shards already carry the codes.

:func:`num_audio_tokens` is the reference's token count N of a 16 kHz waveform (spec §4.12, §5.1):
30 s chunks, each giving ``⌊E/4⌋`` tokens with ``E = ⌊(L − 1)/2⌋ + 1`` encoder frames and
``L = min(3000, ⌊n/160⌋ + 1)`` mel frames; chunks shorter than ``n_fft`` are dropped.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.batch import NUM_CODEBOOKS
from baichuan_audio_jax.config import AudioEncoderConfig, VQBridgeConfig

CodesFor = Callable[[str], np.ndarray]  # absolute audio path -> int [N, 8]


def num_audio_tokens(num_samples: int, encoder: AudioEncoderConfig = AudioEncoderConfig(),
                     bridge: VQBridgeConfig = VQBridgeConfig()) -> int:
    """Audio tokens the tokenizer gives ``num_samples`` samples at ``encoder.sampling_rate``."""
    chunk = encoder.max_audio_seconds * encoder.sampling_rate
    max_mel = chunk // encoder.hop_length
    total = 0
    for start in range(0, max(int(num_samples), 0), chunk):
        n = min(chunk, num_samples - start)
        if n < encoder.n_fft:
            continue
        mel = min(max_mel, n // encoder.hop_length + 1)
        pad = (encoder.kernel_size - 1) // 2
        enc = (mel + 2 * pad - encoder.kernel_size) // encoder.stride_size + 1
        total += max(enc // bridge.avg_pooler, 0)
    return total


def min_samples_for_one_token(encoder: AudioEncoderConfig = AudioEncoderConfig(),
                              bridge: VQBridgeConfig = VQBridgeConfig()) -> int:
    """The shortest waveform (samples at ``encoder.sampling_rate``) that gives one audio token."""
    n = encoder.n_fft
    while num_audio_tokens(n, encoder, bridge) < 1:
        n += 1
    return n


def codes_from_waveform(encode_waveform: Callable[[np.ndarray], np.ndarray], *, sample_rate: int = 16000,
                        min_samples: int = 1, max_seconds: float | None = None) -> CodesFor:
    """A :data:`CodesFor` that loads (resampling when the file's rate differs), bounds-checks and
    encodes a file."""

    def codes_for(path: str) -> np.ndarray:
        wav = load_audio(path, sample_rate, min_samples=min_samples, max_seconds=max_seconds)
        return np.asarray(encode_waveform(wav))

    return codes_for


def frame_count_codes(encoder: AudioEncoderConfig = AudioEncoderConfig(),
                      bridge: VQBridgeConfig = VQBridgeConfig(), *, max_seconds: float | None = None) -> CodesFor:
    """Layout only, for previews without an audio tokenizer: validates and measures each file and
    returns ``[N, 8]`` zeros with the real N. Never use it to train."""
    min_samples = min_samples_for_one_token(encoder, bridge)

    def codes_for(path: str) -> np.ndarray:
        wav = load_audio(path, encoder.sampling_rate, min_samples=min_samples, max_seconds=max_seconds)
        return np.zeros((num_audio_tokens(wav.shape[0], encoder, bridge), NUM_CODEBOOKS), np.int32)

    return codes_for
