"""Audio tokenizer runtime: audio -> 8-codebook codes at 12.5 Hz, and codes -> decoder outputs.

The one entry point for code that needs tokens from audio (data pipelines tokenizing on the fly,
``baichuan-audio tokenize``, generation and demos)::

    rt = AudioTokenizerRuntime.from_reference(cfg, tensors)    # or .random(cfg) / (cfg, state)
    codes = rt.encode_file("speech.wav")                       # int32 [N, 8]
    out = rt.decode_codes(codes)                               # hidden states and mel

Encoding follows the reference processor: load, resample to 16 kHz with the 128-zero-crossing
sinc, split into back-to-back chunks of ``max_audio_seconds`` (30 s), one log-mel per chunk, the
encoder and VQ bridge per chunk, and the chunks' codes concatenated in order.

**Compilation.** Chunks are encoded in batches of ``batch_size`` rows whose frame axis is padded
to the smallest of a few fixed bucket lengths (by default 1/16, 1/8, 1/4, 1/2 and all of a
chunk), so encoding any number of files of any lengths compiles at most one program per bucket;
``compiled_shapes`` lists what has been compiled. Within a call, chunks are sorted by length
before batching to keep padding small. Results do not depend on batching (the models are batch
independent), so a file gives the same codes alone or among others. Decoding buckets the token
axis the same way.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.audio.whisper_logmel import LogMelConfig, load_waveform, log_mel, split_chunks
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.bundle import load_bundle
from baichuan_audio_jax.conversion.components import open_reference
from baichuan_audio_jax.conversion.loading import load_component
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.models.pure import init_model, pure
from baichuan_audio_jax.models.vq_bridge import NUM_CODEBOOKS


def ladder(maximum: int, steps: int = 5, multiple: int = 8) -> tuple[int, ...]:
    """Bucket lengths maximum/2^(steps−1) … maximum, rounded up to ``multiple`` (≤ maximum)."""
    out = {maximum}
    for k in range(1, steps):
        v = -(-maximum // (2 ** k))
        out.add(min(maximum, -(-v // multiple) * multiple))
    return tuple(sorted(out))


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {buckets[-1]}")


class AudioTokenizerRuntime:
    """Jitted, bucketed encode/decode around an :class:`AudioTokenizer` state."""

    def __init__(self, cfg: ModelConfig, state: nnx.State, *, batch_size: int = 8,
                 frame_buckets: Sequence[int] | None = None, token_buckets: Sequence[int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.cfg = cfg
        self.batch_size = int(batch_size)
        self.frontend = LogMelConfig.from_encoder(cfg.audio_encoder, cfg.vq_bridge.avg_pooler)
        model = nnx.eval_shape(lambda: AudioTokenizer(cfg, rngs=nnx.Rngs(0)))
        self.max_tokens = model.audio_decoder.max_tokens
        self.codebook_sizes = tuple(cfg.codebook_sizes)
        graphdef, _ = nnx.split(model)
        self.state = state
        encode, _ = pure(nnx.merge(graphdef, state), "encode")
        decode, _ = pure(nnx.merge(graphdef, state), "decode")
        self._encode = jax.jit(encode)
        self._decode = jax.jit(decode)
        self.frame_buckets = tuple(sorted(frame_buckets or ladder(self.frontend.max_frames)))
        self.token_buckets = tuple(sorted(token_buckets or ladder(self.max_tokens)))
        if self.frame_buckets[-1] < self.frontend.max_frames:
            raise ValueError(f"frame buckets {self.frame_buckets} do not reach a full chunk "
                             f"({self.frontend.max_frames} frames)")
        self.compiled_shapes: set[tuple[str, int, int]] = set()

    # ------------------------------------------------------------------ construction

    @classmethod
    def random(cls, cfg: ModelConfig, seed: int = 0, **kw) -> "AudioTokenizerRuntime":
        """Randomly initialised weights (codes are then meaningless; for tests and benchmarks)."""
        model = init_model(lambda: AudioTokenizer(cfg, rngs=nnx.Rngs(seed)))
        return cls(cfg, nnx.state(model), **kw)

    @classmethod
    def from_reference(cls, cfg: ModelConfig, tensors: Mapping[str, np.ndarray] | Any, **kw) -> "AudioTokenizerRuntime":
        """From reference-named tensors (``audio_tokenizer.audio_model.*`` …: a mapping or a
        ``ReferenceCheckpoint``); other keys (the LLM, flow matching) are ignored. Every tokenizer
        tensor must be present with the config's shape."""
        model, _ = load_component("audio_tokenizer", cfg, tensors)
        return cls(cfg, nnx.state(model), **kw)

    @classmethod
    def from_weights_file(cls, cfg: ModelConfig, path: str | os.PathLike, **kw) -> "AudioTokenizerRuntime":
        """From reference-layout weights: a Hugging Face style directory (sharded or not), a
        directory of safetensors files, a ``.safetensors`` file or a ``.pt``/``.bin`` state_dict
        (needs torch). Only the ``audio_tokenizer.*`` tensors are read."""

        return cls.from_reference(cfg, open_reference(path, components=["audio_tokenizer"]), **kw)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, **kw) -> "AudioTokenizerRuntime":
        """From a model bundle holding the ``audio_tokenizer`` component (restored alone)."""

        loaded = load_bundle(path, components=["audio_tokenizer"], vocoder=False)
        return cls(loaded.config, nnx.state(loaded.model.audio_tokenizer), **kw)

    # ------------------------------------------------------------------ audio -> codes

    def load_waveform(self, path: str | os.PathLike) -> np.ndarray:
        """Mono 16 kHz waveform of a file, resampled as the reference does; :class:`AudioError`
        (naming the file) if it is unreadable or too short to give one audio token."""
        return load_waveform(path, self.frontend)

    def features(self, wav16k: np.ndarray) -> list[np.ndarray]:
        """Log-mel [L, n_mels] of each chunk of a 16 kHz waveform."""
        return [log_mel(chunk, self.frontend) for chunk in split_chunks(wav16k, self.frontend)]

    def encode_features(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes int32 [N_i, 8] of each log-mel chunk [L_i, n_mels] (batched and bucketed)."""
        order = sorted(range(len(features)), key=lambda i: -features[i].shape[0])
        out: list[np.ndarray | None] = [None] * len(features)
        n_mels = self.frontend.num_mel_bins
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = _bucket(max(features[i].shape[0] for i in rows), self.frame_buckets)
            batch = np.zeros((self.batch_size, width, n_mels), np.float32)
            lengths = np.zeros((self.batch_size,), np.int32)
            for r, i in enumerate(rows):
                batch[r, :features[i].shape[0]] = features[i]
                lengths[r] = features[i].shape[0]
            self.compiled_shapes.add(("encode", self.batch_size, width))
            codes, n = self._encode(self.state, jnp.asarray(batch), jnp.asarray(lengths))
            codes, n = np.asarray(codes), np.asarray(n)
            for r, i in enumerate(rows):
                out[i] = codes[r, :n[r]].astype(np.int32)
        return out

    def encode_batch(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes int32 [N_i, 8] of each 16 kHz waveform (chunks of all waveforms batched together).
        A waveform too short for one token gives an empty [0, 8] array."""
        feats, owner = [], []
        for w, wav in enumerate(waveforms):
            for f in self.features(wav):
                feats.append(f)
                owner.append(w)
        codes = self.encode_features(feats)
        out = []
        for w in range(len(waveforms)):
            parts = [c for c, o in zip(codes, owner) if o == w]
            out.append(np.concatenate(parts, axis=0) if parts else np.zeros((0, NUM_CODEBOOKS), np.int32))
        return out

    def encode_waveform(self, wav16k: np.ndarray) -> np.ndarray:
        """Codes int32 [N, 8] of one 16 kHz waveform."""
        return self.encode_batch([wav16k])[0]

    def encode_file(self, path: str | os.PathLike) -> np.ndarray:
        """Codes int32 [N, 8] of an audio file (any soundfile format and rate, ≤ 2 channels)."""
        return self.encode_waveform(self.load_waveform(path))

    def chunk_tokens(self, num_samples: int) -> list[int]:
        """Tokens per chunk of a 16 kHz waveform of ``num_samples`` (how its codes split)."""
        step = self.frontend.chunk_samples
        out = []
        for start in range(0, num_samples, step):
            n = min(step, num_samples - start)
            if n >= self.frontend.n_fft and self.frontend.tokens(n) > 0:
                out.append(int(self.frontend.tokens(n)))
        return out

    # ------------------------------------------------------------------ codes -> decoder outputs

    def check_codes(self, codes: np.ndarray, what: str = "codes") -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != NUM_CODEBOOKS:
            raise ValueError(f"{what}: expected an integer array [N, {NUM_CODEBOOKS}], got shape {codes.shape}")
        if codes.dtype.kind not in "iu":
            raise ValueError(f"{what}: expected integer codes, got dtype {codes.dtype}")
        for k, size in enumerate(self.codebook_sizes):
            col = codes[:, k]
            if col.size and (col.min() < 0 or col.max() >= size):
                bad = int(col[(col < 0) | (col >= size)][0])
                raise ValueError(f"{what}: code {bad} in codebook {k} is outside [0, {size}) "
                                 f"(EOS and padding codes cannot be decoded)")
        if codes.shape[0] > self.max_tokens:
            raise ValueError(f"{what}: {codes.shape[0]} tokens exceed the decoder's maximum of {self.max_tokens} "
                             "per segment; decode shorter segments")
        return codes.astype(np.int32)

    def decode_batch(self, segments: Sequence[np.ndarray]) -> list[dict]:
        """Decoder outputs of each code segment [N_i, 8] (see :meth:`decode_codes`)."""
        segments = [self.check_codes(c, f"segment {i}") for i, c in enumerate(segments)]
        out: list[dict | None] = [None] * len(segments)
        order = sorted(range(len(segments)), key=lambda i: -segments[i].shape[0])
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = _bucket(max(1, max(segments[i].shape[0] for i in rows)), self.token_buckets)
            batch = np.zeros((self.batch_size, width, NUM_CODEBOOKS), np.int32)
            lengths = np.zeros((self.batch_size,), np.int32)
            for r, i in enumerate(rows):
                batch[r, :segments[i].shape[0]] = segments[i]
                lengths[r] = segments[i].shape[0]
            self.compiled_shapes.add(("decode", self.batch_size, width))
            o = jax.tree.map(lambda a: np.asarray(a, np.float32 if jnp.issubdtype(a.dtype, jnp.floating) else None),
                             self._decode(self.state, jnp.asarray(batch), jnp.asarray(lengths)))
            for r, i in enumerate(rows):
                t, m = int(o.hidden_lengths[r]), int(o.mel_lengths[r])
                out[i] = dict(hidden_before_dconv2=o.hidden_before_dconv2[r, :t], coarse_mel=o.coarse_mel[r, :m],
                              refined_mel=o.refined_mel[r, :m],
                              lengths=dict(tokens=int(lengths[r]), hidden=t, mel=m))
        return out

    def decode_codes(self, codes: np.ndarray) -> dict:
        """One segment of codes [N, 8] -> ``hidden_before_dconv2`` [4N − 1, D] (the flow-matching
        input), ``coarse_mel`` and ``refined_mel`` [M, mel bins] (float32 numpy), and ``lengths``
        (tokens N, hidden 4N − 1, mel M)."""
        return self.decode_batch([codes])[0]
