"""Speech out segment by segment, while the rest is still being generated.

The reference decodes each audio segment to a waveform on its own and joins segments with an
*inserting* cross-fade (§6.7): between a wave p and the next wave w (both longer than 240
samples) an extra piece p[−240:]·(1→0) + w[:240]·(0→1) is inserted. Nothing already produced is
ever changed by a later segment, so the joined waveform can be emitted incrementally: the first
segment as it is, every later one as the blended piece followed by the segment. The chunks put
together equal :func:`~baichuan_audio_jax.inference.waveform.concat_segments` of the segments.

:class:`AudioStream` does this for segments arriving from the decoding loop: it turns each into
sound (a ``to_wave(codes, index)`` function), hands the chunk to an optional callback (a player),
appends it to an optional WAV file whose header is updated after every chunk (a player can
follow the file while it grows), and records the time from ``start`` to the first chunk.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import soundfile as sf

from baichuan_audio_jax.inference.waveform import CROSSFADE_SAMPLES, SAMPLE_RATE


class AudioStream:
    def __init__(self, to_wave: Callable[[np.ndarray, int], np.ndarray], *, path: str | os.PathLike | None = None,
                 on_chunk: Callable[[np.ndarray], None] | None = None, overlap: int = CROSSFADE_SAMPLES,
                 sample_rate: int = SAMPLE_RATE, start: float | None = None):
        self.to_wave = to_wave
        self.on_chunk = on_chunk
        self.overlap = int(overlap)
        self.sample_rate = int(sample_rate)
        self.start = time.perf_counter() if start is None else start
        self.first_chunk_seconds: float | None = None
        self.chunk_times: list[float] = []  # seconds from start at which each chunk was ready
        self.segment_samples: list[int] = []
        self.chunks: list[np.ndarray] = []
        self._prev: np.ndarray | None = None
        self._file = None
        self.path = None if path is None else os.fspath(path)
        if self.path is not None:

            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._file = sf.SoundFile(self.path, "w", samplerate=self.sample_rate, channels=1, subtype="PCM_16")

    def add(self, codes: np.ndarray) -> np.ndarray | None:
        """Turns one segment's codes [N, 8] into the next chunk (None for an empty segment)."""
        codes = np.asarray(codes)
        if codes.shape[0] == 0:
            return None
        wave = np.asarray(self.to_wave(codes, len(self.segment_samples)), np.float32).reshape(-1)
        self.segment_samples.append(len(wave))
        prev, self._prev = self._prev, wave
        if prev is not None and self.overlap and len(prev) > self.overlap and len(wave) > self.overlap:
            fade_out = np.linspace(1.0, 0.0, self.overlap, dtype=np.float32)
            fade_in = np.linspace(0.0, 1.0, self.overlap, dtype=np.float32)
            chunk = np.concatenate([prev[-self.overlap:] * fade_out + wave[:self.overlap] * fade_in, wave])
        else:
            chunk = wave
        self.chunks.append(chunk)
        if self._file is not None:
            self._file.write(np.clip(chunk, -1.0, 1.0))
            self._file.flush()  # updates the header: the file is a valid WAV after every chunk
        elapsed = time.perf_counter() - self.start
        self.chunk_times.append(elapsed)
        if self.first_chunk_seconds is None:
            self.first_chunk_seconds = elapsed
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        return chunk

    @property
    def waveform(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0,), np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
