"""Reading audio files: any soundfile format, mono, at the rate a model expects.

Order as in the reference processor: read as float in [−1, 1], resample every channel, then
average channels to mono (at most 2 channels). Failures raise :class:`AudioError`, whose
``reason`` is one of :data:`REASONS` so pipelines can count skipped files by cause, and whose
message names the file.
"""
from __future__ import annotations

import os
import re

import numpy as np
import soundfile as sf

from baichuan_audio_jax.audio.resample import DEFAULT_LOWPASS_FILTER_WIDTH, resample

REASONS = ("missing", "empty", "corrupt", "nonfinite", "too_many_channels", "too_short", "too_long")


class AudioError(ValueError):
    def __init__(self, path: str, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown audio error reason {reason!r}")
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {reason.replace('_', ' ')}" + (f" ({detail})" if detail else ""))


# libsndfile quietly shortens a file whose sample-data chunk claims more bytes than the file holds
# and notes it in its parser log as "data : <declared> (should be <present>)".
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming writers leave in headers they never patch: not a sign of truncation.
_PLACEHOLDER_SIZES = {0, 0x7FFFFFFF, 0xFFFFFFFF}


def truncation(path: str) -> str | None:
    """Why ``path`` looks truncated (its header declares more sample data than the file holds),
    or None."""

    m = _SHORT_CHUNK.search(sf.info(path).extra_info or "")
    if m is None:
        return None
    declared, present = int(m.group(2)), int(m.group(3))
    if present < declared and declared not in _PLACEHOLDER_SIZES:
        return f"truncated: header declares {declared} bytes of samples, the file holds {present}"
    return None


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Returns ([channels, samples] float32, sample rate) as stored in the file."""

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(path, "missing", "no such file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty", "zero-byte file")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        short = truncation(path)
    except Exception as e:  # soundfile raises several types for unreadable or truncated files
        raise AudioError(path, "corrupt", str(e).splitlines()[0][:200]) from e
    if short:
        raise AudioError(path, "corrupt", short)
    if data.shape[0] == 0:
        raise AudioError(path, "empty", "no samples")
    bad = ~np.isfinite(data)
    if bad.any():  # float WAV/FLAC can hold NaN or inf; they would poison features and codes
        first = int(np.argmax(bad.any(axis=1)))
        raise AudioError(path, "nonfinite", f"{int(bad.sum())} NaN/inf samples, the first at {first / sr:.3f} s")
    return np.ascontiguousarray(data.T), int(sr)


def load_audio(path: str | os.PathLike, sample_rate: int, *, min_samples: int = 1,
               max_seconds: float | None = None,
               lowpass_filter_width: int = DEFAULT_LOWPASS_FILTER_WIDTH) -> np.ndarray:
    """Mono float32 waveform of ``path`` at ``sample_rate``.

    ``min_samples`` (at the target rate) and ``max_seconds`` bound the accepted length;
    ``lowpass_filter_width`` is the resampler's (see :func:`~baichuan_audio_jax.audio.resample.resample`).
    """
    path = os.fspath(path)
    data, sr = read_audio(path)
    if data.shape[0] > 2:
        raise AudioError(path, "too_many_channels", f"{data.shape[0]} channels (at most 2)")
    if max_seconds is not None and data.shape[1] > max_seconds * sr:
        raise AudioError(path, "too_long", f"{data.shape[1] / sr:.1f} s > {max_seconds:g} s")
    if sr != sample_rate:
        data = resample(data, sr, sample_rate, lowpass_filter_width=lowpass_filter_width)
    wav = data.mean(axis=0).astype(np.float32) if data.shape[0] > 1 else data[0]
    if wav.shape[0] < min_samples:
        raise AudioError(path, "too_short", f"{wav.shape[0]} samples at {sample_rate} Hz (< {min_samples})")
    return wav
