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
    def __init__(self, speech: SpeechDecoder, buckets: Sequence[int] | None = None):
        self.speech = speech
        self.buckets = tuple(sorted(buckets or speech.tokenizer.token_buckets))
        if self.buckets[-1] < speech.tokenizer.max_tokens:
            raise ValueError(f"speech buckets {self.buckets} do not reach the decoder's {speech.tokenizer.max_tokens} "
                             "tokens per segment")

    def buckets_up_to(self, frames: int) -> tuple[int, ...]:
        """The buckets segments of at most ``frames`` frames use."""
        return tuple(b for b in self.buckets if b <= bucket(min(frames, self.buckets[-1]), self.buckets))

    def to_wave(self, codes: np.ndarray, key: jax.Array | None = None, *, noise=None, source=None) -> np.ndarray:
        """One segment's codes [N, 8] (N ≥ 1) -> float32 waveform [480·(4N − 1)].

        Randomness from ``key``, or given at the padded shapes: ``noise`` [1, 4B − 1, 80] (CFM)
        and ``source`` = (phase [1, H + 1], noise [1, 480·(4B − 1), H + 1]) (vocoder), for a
        bucket of B frames (:meth:`padded_frames`)."""
        sp = self.speech
        codes = np.asarray(codes, np.int32)
        padded = self.padded_frames(codes.shape[0])
        hidden = sp.tokenizer.decode_batch([codes])[0]["hidden_before_dconv2"]
        t = hidden.shape[0]
        hp = np.zeros((1, 4 * padded - 1, hidden.shape[1]), np.float32)
        hp[0, :t] = hidden
        k_mel, k_wave = jax.random.split(key) if key is not None else (None, None)
        mel, mel_len = hidden_to_mel(sp.flow_matching, hp, np.asarray([t], np.int32), key=k_mel, noise=noise)
        m = int(mel_len[0])
        mel = np.asarray(mel, np.float32)
        if sp.vocoder is None:
            return griffin_lim_wave(mel[0, :m], MelGeometry.of(sp.flow_matching.cfg.flow_matching))
        mel[:, m:] = mel[:, m - 1:m]  # the vocoder sees a steady continuation, not silence
        phase, src = (None, None) if source is None else source
        wave, _ = mel_to_wave(sp.vocoder, mel, key=k_wave, phase_u01=phase, noise=src)
        return np.asarray(wave[0, :HOP * m], np.float32)

    def padded_frames(self, frames: int) -> int:
        return bucket(frames, self.buckets)

    def warm_up(self, frames: int) -> None:
        """Compiles every bucket segments of at most ``frames`` frames use."""
        for b in self.buckets_up_to(frames):
            self.to_wave(np.zeros((b, 8), np.int32), jax.random.key(0))
