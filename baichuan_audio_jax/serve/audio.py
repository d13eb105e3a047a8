"""Audio in and out of the server: checking uploads, encoding answers (WAV, raw PCM, FLAC)."""
from __future__ import annotations

import io
import os
import struct
import tempfile

import numpy as np
import soundfile as sf

from baichuan_audio_jax.audio.io import AudioError, read_audio

SPEECH_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
STREAMABLE = ("wav", "pcm")


class UploadError(Exception):
    """A user error in uploaded audio: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_upload(data: bytes, name: str, *, max_seconds: float, loader) -> tuple[np.ndarray, float]:
    """Checks uploaded bytes and returns (the model's input waveform from ``loader(path)``, the
    upload's duration in seconds). Raises :class:`UploadError` naming the upload: 400 for empty
    or unreadable audio, 413 above ``max_seconds``."""

    if not data:
        raise UploadError(400, f"{name}: empty file")
    with tempfile.TemporaryDirectory(prefix="upload-") as tmp:
        path = os.path.join(tmp, "audio")
        with open(path, "wb") as f:
            f.write(data)
        try:
            frames, rate = read_audio(path)
        except AudioError as e:
            raise UploadError(400, f"{name}: {_reason(e)}; send a WAV, FLAC or Ogg audio file") from None
        seconds = frames.shape[1] / rate
        if seconds > max_seconds:
            raise UploadError(413, f"{name}: {seconds:.1f} s of audio is above the limit of {max_seconds:g} s "
                                   "(--max-upload-seconds)")
        del frames
        try:
            wave = loader(path)
        except AudioError as e:
            raise UploadError(400, f"{name}: {_reason(e)}") from None
        except sf.LibsndfileError as e:
            raise UploadError(400, f"{name}: unreadable audio ({e})") from None
    return wave, seconds


def _reason(e: AudioError) -> str:
    if e.reason == "corrupt":
        return "not an audio file this server can read"
    return e.reason.replace("_", " ") + (f" ({e.detail})" if e.detail else "")


def pcm16(wave: np.ndarray) -> bytes:
    """Little-endian signed 16-bit samples."""
    return (np.clip(np.asarray(wave, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, num_samples: int | None = None) -> bytes:
    """A mono 16-bit PCM WAV header; ``num_samples=None`` (a stream of unknown length) writes the
    largest sizes, which players read as "until the end of the data"."""
    data = 0xFFFFFFFF if num_samples is None else 2 * num_samples
    riff = 0xFFFFFFFF if num_samples is None else 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
                                                                          2 * sample_rate, 2, 16)
            + b"data" + struct.pack("<I", data))


def encode(wave: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole answer in ``fmt`` (wav, pcm or flac)."""
    if fmt == "pcm":
        return pcm16(wave)
    if fmt == "wav":
        return wav_header(sample_rate, len(wave)) + pcm16(wave)
    if fmt == "flac":

        buf = io.BytesIO()
        sf.write(buf, np.clip(np.asarray(wave, np.float32), -1.0, 1.0), sample_rate, format="FLAC",
                 subtype="PCM_16")
        return buf.getvalue()
    raise ValueError(f"unknown audio format {fmt!r}")
