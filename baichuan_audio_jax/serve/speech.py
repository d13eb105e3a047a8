"""Audio segments to sound at a few compiled lengths.

:func:`~baichuan_audio_jax.inference.waveform.codes_to_wave` runs the flow-matching decoder and
the vocoder at each segment's own length, so every new length compiles both (tens of seconds on
a CPU): fine for one command, not for a server that meets every length. Here a segment of N
frames is decoded at the length of its bucket (the audio tokenizer's token buckets):

* the audio decoder is already bucketed (:meth:`AudioTokenizerRuntime.decode_batch`);
* the flow-matching decoder gets the hidden states zero-padded to the bucket with their true
  length, which masks the padding out: the valid mel frames are those of the unpadded call
  given the same noise (checked by the tests);
* the vocoder is not causal, so its input mel is padded by repeating the last valid frame and the
  output cut to the valid samples; only the last ~samples near the cut can differ from an
  unpadded call (the tests bound where and by how much).

The random draws (CFM noise, vocoder source) have the padded shapes, so the audio is not
bit-identical to :func:`codes_to_wave` with the same key; it is the same model and procedure.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from baichuan_audio_jax.audio.mel24k import MelGeometry
from baichuan_audio_jax.inference.engine import bucket
from baichuan_audio_jax.inference.griffin_lim import griffin_lim_wave
from baichuan_audio_jax.inference.waveform import SpeechDecoder, hidden_to_mel, mel_to_wave

HOP = 480  # vocoder samples per mel frame


class BucketedSpeech:
    """``to_waves(segments, keys)``: segments decoded together, grouped by bucket and padded to
    one of ``batch_sizes`` rows (idle rows repeat the first). Each segment's randomness comes from
    its own key, so its sound does not depend on the segments it is batched with."""

    def __init__(self, speech: SpeechDecoder, buckets: Sequence[int] | None = None,
                 batch_sizes: Sequence[int] = (1,)):
        self.speech = speech
        self.buckets = tuple(sorted(buckets or speech.tokenizer.token_buckets))
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        if self.buckets[-1] < speech.tokenizer.max_tokens:
            raise ValueError(f"speech buckets {self.buckets} do not reach the decoder's {speech.tokenizer.max_tokens} "
                             "tokens per segment")

    def buckets_up_to(self, frames: int) -> tuple[int, ...]:
        """The buckets segments of at most ``frames`` frames use."""
        return tuple(b for b in self.buckets if b <= bucket(min(frames, self.buckets[-1]), self.buckets))

    def padded_frames(self, frames: int) -> int:
        return bucket(frames, self.buckets)

    def to_waves(self, segments: Sequence[np.ndarray], keys: Sequence[jax.Array] | None = None, *,
                 noise: Sequence | None = None, source: Sequence | None = None) -> list[np.ndarray]:
        """Segments' codes [N_i, 8] (N_i ≥ 1) -> float32 waveforms [480·(4N_i − 1)].

        Randomness per segment from ``keys[i]``, or given at its bucket's padded shape (B frames,
        :meth:`padded_frames`): ``noise[i]`` [4B − 1, 80] (CFM) and ``source[i]`` = (phase [H + 1],
        noise [480·(4B − 1), H + 1]) (vocoder)."""
        if keys is None and (noise is None or source is None):
            raise ValueError("to_waves needs keys, or both noise and source")
        out: list[np.ndarray | None] = [None] * len(segments)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(segments):
            groups.setdefault(self.padded_frames(len(c)), []).append(i)
        most = self.batch_sizes[-1]
        for padded, idx in groups.items():
            for start in range(0, len(idx), most):
                rows = idx[start:start + most]
                waves = self._batch(padded, [np.asarray(segments[i], np.int32) for i in rows],
                                    None if keys is None else [keys[i] for i in rows],
                                    None if noise is None else [noise[i] for i in rows],
                                    None if source is None else [source[i] for i in rows])
                for i, w in zip(rows, waves):
                    out[i] = w
        return out

    def to_wave(self, codes: np.ndarray, key: jax.Array | None = None, *, noise=None, source=None) -> np.ndarray:
        """One segment (see :meth:`to_waves`)."""
        return self.to_waves([codes], None if key is None else [key], noise=None if noise is None else [noise],
                             source=None if source is None else [source])[0]

    def _batch(self, padded: int, segments: list[np.ndarray], keys, noise, source) -> list[np.ndarray]:
        sp = self.speech
        fm, voc = sp.flow_matching, sp.vocoder
        n, b = len(segments), bucket(len(segments), self.batch_sizes)
        hidden = [d["hidden_before_dconv2"] for d in sp.tokenizer.decode_batch(segments)]
        t_pad = 4 * padded - 1
        hp = np.zeros((b, t_pad, hidden[0].shape[1]), np.float32)
        lengths = np.zeros((b,), np.int32)
        for r in range(b):
            h = hidden[r if r < n else 0]
            hp[r, :len(h)] = h
            lengths[r] = len(h)
        frames = fm.prenet.output_frames(t_pad)
        bins = fm.cfg.flow_matching.in_channels
        if noise is None:
            split = [jax.random.split(k) for k in keys]
            noise = [jax.random.normal(k[0], (frames, bins)) for k in split]
            if voc is not None:
                source = [tuple(x[0] for x in voc.source_randomness(k[1], 1, frames)) for k in split]
        noise_b = np.stack([np.asarray(noise[r if r < n else 0], np.float32) for r in range(b)])
        mel, mel_len = hidden_to_mel(fm, hp, lengths, noise=noise_b)
        mel, mel_len = np.array(mel, np.float32), np.asarray(mel_len)  # a writable copy
        if voc is None:
            geometry = MelGeometry.of(fm.cfg.flow_matching)
            return [griffin_lim_wave(mel[r, :mel_len[r]], geometry) for r in range(n)]
        for r in range(b):
            mel[r, mel_len[r]:] = mel[r, mel_len[r] - 1]  # the vocoder sees a steady continuation, not silence
        pick = [source[r if r < n else 0] for r in range(b)]
        phase = np.stack([np.asarray(p[0], np.float32) for p in pick])
        src = np.stack([np.asarray(p[1], np.float32) for p in pick])
        wave, _ = mel_to_wave(voc, mel, phase_u01=phase, noise=src)
        wave = np.asarray(wave, np.float32)
        return [wave[r, :HOP * int(mel_len[r])].copy() for r in range(n)]

    def warm_up(self, frames: int) -> None:
        """Compiles every bucket that segments of at most ``frames`` frames use, at every batch size."""
        for p in self.buckets_up_to(frames):
            for b in self.batch_sizes:
                self.to_waves([np.zeros((p, 8), np.int32)] * b, [jax.random.key(0)] * b)
