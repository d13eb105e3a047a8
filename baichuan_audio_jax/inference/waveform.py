"""Codes -> 24 kHz waveform (reference §4.4–4.9, §6.7).

:func:`codes_to_wave` is the whole path for code segments ``[N, 8]``: RVQ decode and the audio
decoder (hidden states before ``dconv2``, 4N − 1 frames at 50 Hz), prenet + CFM, vocoder, and the
reference's cross-fade concatenation, with the models of a :class:`SpeechDecoder` (from a model
bundle, from reference weights + a vocoder checkpoint, or random).

The back half works on the audio decoder's hidden states before ``dconv2`` ``[B, T, d]``
(T = 4N − 1 for N tokens):

* :func:`hidden_to_mel`: prenet + CFM sampler (Euler, classifier-free guidance) as one compiled
  program; the noise is given or drawn from a PRNG key; steps and guidance rate configurable.
* :func:`mel_to_wave`: the HiFT vocoder; its source randomness is given or drawn from a key.
  Without vocoder weights (``vocoder=None``) the mel is inverted by Griffin-Lim instead
  (:mod:`baichuan_audio_jax.inference.griffin_lim`).
* :func:`decode_segments`: each segment decoded on its own (batch 1, fresh randomness), vocoded,
  and joined with :func:`concat_segments` — the reference's generation path (§6.7).
* :func:`concat_segments`: the reference's *inserting* cross-fade.
* :func:`write_wav`: a waveform to a WAV file (soundfile).

Compiled programs are cached per model structure and input shape (``jax.jit`` with the module's
graph definition as a static argument), so repeated calls with the same shapes do not recompile;
randomness drawn from a key is drawn outside them, so given and drawn randomness share one
program.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf
from flax import nnx

from baichuan_audio_jax.audio.mel24k import MelGeometry
from baichuan_audio_jax.conversion.bundle import load_bundle, read_bundle_info
from baichuan_audio_jax.conversion.components import open_reference
from baichuan_audio_jax.conversion.loading import load_component
from baichuan_audio_jax.conversion.vocoder import load_vocoder
from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
from baichuan_audio_jax.inference.griffin_lim import griffin_lim_wave
from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder, euler_schedule, guidance_weights
from baichuan_audio_jax.models.hift import HiFTGenerator
from baichuan_audio_jax.models.pure import init_model

SAMPLE_RATE = 24000
CROSSFADE_SAMPLES = 240  # 10 ms at 24 kHz, the value the reference demos pass


@functools.partial(jax.jit, static_argnums=0)
def _hidden_to_mel(graphdef, state, hidden, lengths, t, dt, weights, noise, temperature):
    decoder = nnx.merge(graphdef, state)
    dtype = jnp.dtype(decoder.cfg.dtype)
    return decoder(hidden, lengths, noise.astype(dtype) * jnp.asarray(temperature, dtype), t, dt, weights)


def hidden_to_mel(decoder: FlowMatchingDecoder, hidden, lengths, *, key: jax.Array | None = None,
                  noise=None, steps: int | None = None, cfg_rate: float | None = None,
                  temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """hidden [B, T, d] (zero past ``lengths`` [B]) -> (mel [B, T, 80], mel lengths [B]).

    ``noise`` [B, T, 80] (standard normal, scaled by ``temperature``) or ``key`` supplies the
    starting point; ``steps`` (default ``diffusion_steps``) and ``cfg_rate`` (default
    ``inference_cfg_rate``) set the sampler. Frames past a length hold noise: slice them off.
    """
    fm = decoder.cfg.flow_matching
    hidden = jnp.asarray(hidden)
    lengths = jnp.asarray(lengths, jnp.int32)
    if hidden.ndim != 3 or hidden.shape[-1] != fm.prenet_in_dim:
        raise ValueError(f"hidden states must be [B, T, {fm.prenet_in_dim}], got {tuple(hidden.shape)}")
    if lengths.shape != hidden.shape[:1]:
        raise ValueError(f"lengths {tuple(lengths.shape)} do not match the batch of hidden {tuple(hidden.shape)}")
    if noise is None and key is None:
        raise ValueError("hidden_to_mel needs either noise or a PRNG key")
    dtype = decoder.cfg.dtype
    expected = (hidden.shape[0], decoder.prenet.output_frames(hidden.shape[1]), fm.in_channels)
    if noise is None:  # drawn outside the compiled program, so given and drawn noise share it
        noise = jax.random.normal(key, expected, jnp.dtype(dtype))
    noise = jnp.asarray(noise)
    if noise.shape != expected:
        raise ValueError(f"noise must be {expected}, got {tuple(noise.shape)}")
    schedule = euler_schedule(steps or fm.diffusion_steps, fm.t_scheduler, dtype)
    weights = guidance_weights(fm.inference_cfg_rate if cfg_rate is None else cfg_rate, dtype)
    graphdef, state = nnx.split(decoder)
    return _hidden_to_mel(graphdef, state, hidden, lengths, jnp.asarray(schedule.t), jnp.asarray(schedule.dt),
                          jnp.asarray(weights), noise, temperature)


@functools.partial(jax.jit, static_argnums=0)
def _mel_to_wave(graphdef, state, mel, phase_u01, noise):
    return nnx.merge(graphdef, state)(mel, phase_u01, noise)


def mel_to_wave(vocoder: HiFTGenerator, mel, *, key: jax.Array | None = None, phase_u01=None,
                noise=None) -> tuple[jax.Array, jax.Array]:
    """mel [B, T, 80] -> (waveform [B, 480·T] in [−0.99, 0.99], f0 [B, T]).

    The source randomness is ``phase_u01`` [B, 9] and ``noise`` [B, 480·T, 9], or drawn from
    ``key``. The vocoder is not causal: a padded batch row's last samples see the padding, so
    vocode segments at their own length for exact per-segment output (:func:`decode_segments`).
    """
    mel = jnp.asarray(mel)
    if mel.ndim != 3 or mel.shape[-1] != vocoder.cfg.in_channels:
        raise ValueError(f"mel must be [B, T, {vocoder.cfg.in_channels}], got {tuple(mel.shape)}")
    if (phase_u01 is None or noise is None) and key is None:
        raise ValueError("mel_to_wave needs either phase_u01 and noise, or a PRNG key")
    if phase_u01 is None or noise is None:  # drawn outside the compiled program (one program either way)
        drawn = vocoder.source_randomness(key, mel.shape[0], mel.shape[1])
        phase_u01 = drawn[0] if phase_u01 is None else phase_u01
        noise = drawn[1] if noise is None else noise
    graphdef, state = nnx.split(vocoder)
    return _mel_to_wave(graphdef, state, mel, jnp.asarray(phase_u01), jnp.asarray(noise))


def concat_segments(waves: Sequence[np.ndarray], overlap: int = CROSSFADE_SAMPLES) -> np.ndarray:
    """Joins waveforms as the reference does (§6.7): between a wave p and the next wave w (both
    longer than ``overlap``) an *extra* piece p[−overlap:]·(1→0) + w[:overlap]·(0→1) (linear
    ramps including both endpoints) is inserted; nothing is removed, so each such boundary adds
    ``overlap`` samples."""
    if overlap < 0:
        raise ValueError(f"overlap must be ≥ 0, got {overlap}")
    waves = [np.asarray(w, np.float32).reshape(-1) for w in waves]
    if not waves:
        return np.zeros((0,), np.float32)
    pieces = [waves[0]]
    fade_out = np.linspace(1.0, 0.0, overlap, dtype=np.float32)
    fade_in = np.linspace(0.0, 1.0, overlap, dtype=np.float32)
    for prev, cur in zip(waves[:-1], waves[1:]):
        if overlap and len(prev) > overlap and len(cur) > overlap:
            pieces.append(prev[-overlap:] * fade_out + cur[:overlap] * fade_in)
        pieces.append(cur)
    return np.concatenate(pieces)


def decode_segments(decoder: FlowMatchingDecoder, vocoder: HiFTGenerator | None, hidden_segments: Sequence,
                    key: jax.Array | None = None, *, noise: Sequence | None = None, source: Sequence | None = None,
                    steps: int | None = None, cfg_rate: float | None = None,
                    overlap: int = CROSSFADE_SAMPLES) -> np.ndarray:
    """Audio segments' hidden states (each [T_i, d], valid frames only) -> one 24 kHz waveform.

    Every segment is decoded alone (batch 1, as the reference's generation path does): mel by
    :func:`hidden_to_mel` (sliced to its length), waveform by :func:`mel_to_wave` on the float32
    mel (480 samples per mel frame), then :func:`concat_segments`. Randomness per segment i: the
    CFM noise ``noise[i]`` [T_i', 80] and the vocoder source ``source[i] = (phase_u01 [H+1],
    noise [480·T_i', H+1])`` when given, else drawn from ``fold_in(key, i)``. ``vocoder=None``:
    Griffin-Lim phase reconstruction instead of HiFT (``source`` unused).
    """
    n = len(hidden_segments)
    for name, given in (("noise", noise), ("source", source)):
        if given is not None and len(given) != n:
            raise ValueError(f"{name}: {len(given)} entries for {n} segments")
    if key is None and (noise is None or source is None):
        raise ValueError("decode_segments needs a PRNG key unless both noise and source are given")
    waves = []
    for i, hidden in enumerate(hidden_segments):
        hidden = jnp.asarray(hidden)
        if hidden.ndim != 2 or hidden.shape[0] == 0:
            raise ValueError(f"segment {i}: hidden states must be a non-empty [T, d] array, got {tuple(hidden.shape)}")
        k_mel, k_wave = jax.random.split(jax.random.fold_in(key, i)) if key is not None else (None, None)
        mel, mel_len = hidden_to_mel(decoder, hidden[None], jnp.asarray([hidden.shape[0]]), key=k_mel,
                                     noise=None if noise is None else jnp.asarray(noise[i])[None], steps=steps,
                                     cfg_rate=cfg_rate)
        mel = mel[:, :int(mel_len[0])].astype(jnp.float32)
        if vocoder is None:

            waves.append(griffin_lim_wave(np.asarray(mel[0]), MelGeometry.of(decoder.cfg.flow_matching), seed=i))
            continue
        phase, src_noise = (None, None) if source is None else (jnp.asarray(source[i][0])[None],
                                                                jnp.asarray(source[i][1])[None])
        wave, _ = mel_to_wave(vocoder, mel, key=k_wave, phase_u01=phase, noise=src_noise)
        waves.append(np.asarray(wave[0]))
    return concat_segments(waves, overlap)


def expected_samples(token_counts: Sequence[int], hop: int = 480, ratio: float = 1.0,
                     overlap: int = CROSSFADE_SAMPLES) -> int:
    """Length of :func:`codes_to_wave`'s output for segments of these token counts: 4N − 1 decoder
    frames each, ``int(float32(4N − 1)·ratio)`` mel frames of ``hop`` samples, plus ``overlap`` per
    boundary between segments longer than the overlap."""
    lengths = [hop * int(np.float32(4 * n - 1) * np.float32(ratio)) for n in token_counts]
    joins = sum(1 for a, b in zip(lengths[:-1], lengths[1:]) if a > overlap and b > overlap)
    return sum(lengths) + overlap * joins


@dataclasses.dataclass
class SpeechDecoder:
    """The models that turn codes into speech: the audio tokenizer runtime (RVQ decode + audio
    decoder, batched and bucketed), the flow-matching decoder and the HiFT vocoder (None: the mel
    is inverted by Griffin-Lim, for models without trained vocoder weights)."""

    tokenizer: Any  # AudioTokenizerRuntime
    flow_matching: FlowMatchingDecoder
    vocoder: HiFTGenerator | None

    @property
    def cfg(self):
        return self.tokenizer.cfg

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, *, batch_size: int = 8) -> "SpeechDecoder":
        """From a model bundle with the ``audio_tokenizer`` and ``flow_matching`` components and,
        if it has one, a vocoder (``convert --component vocoder`` adds one; without it the mel is
        inverted by Griffin-Lim, with a warning)."""


        has_vocoder = "vocoder" in read_bundle_info(path).get("checkpoints", {})
        b = load_bundle(path, components=["audio_tokenizer", "flow_matching"], vocoder=has_vocoder)
        runtime = AudioTokenizerRuntime(b.config, nnx.state(b.model.audio_tokenizer), batch_size=batch_size)
        if not has_vocoder:
            warn_no_vocoder(path)
        return cls(runtime, b.model.flow_matching, b.vocoder)

    @classmethod
    def from_parts(cls, cfg, *, weights: str | os.PathLike | None = None, vocoder: str | os.PathLike | None = None,
                   seed: int = 0, batch_size: int = 8, warn: bool = True) -> "SpeechDecoder":
        """Tokenizer and flow matching from reference-layout model weights (a Hugging Face style
        directory or file holding ``audio_tokenizer.*``), the vocoder from a ``hift.pt``-layout
        checkpoint; a part without a source is randomly initialised from ``cfg`` with ``seed``
        (a warning names it: its output is meaningless)."""


        random_parts = []
        if weights is not None:
            ckpt = open_reference(weights, components=["audio_tokenizer", "flow_matching"])
            runtime = AudioTokenizerRuntime.from_reference(cfg, ckpt, batch_size=batch_size)
            flow, _ = load_component("flow_matching", cfg, ckpt)
        else:
            runtime = AudioTokenizerRuntime.random(cfg, seed=seed, batch_size=batch_size)
            flow = init_model(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(seed)))
            random_parts += ["audio tokenizer", "flow-matching decoder"]
        if vocoder is not None:
            voc = load_vocoder(open_reference(vocoder, "vocoder"), cfg.vocoder)
        else:
            voc = init_model(lambda: HiFTGenerator(cfg.vocoder, rngs=nnx.Rngs(seed)))
            random_parts.append("vocoder")
        if random_parts and warn:
            print(f"warning: randomly initialised {', '.join(random_parts)} (no weights given): the audio is "
                  "meaningless (use it only to test pipelines)", file=sys.stderr)
        return cls(runtime, flow, voc)


def warn_no_vocoder(path: str | os.PathLike) -> None:
    print(f"note: {os.fspath(path)} has no vocoder weights: speech is rendered from the mel by Griffin-Lim "
          "phase reconstruction (lower quality than HiFT; `convert --component vocoder` adds a vocoder)",
          file=sys.stderr)


def codes_to_wave(speech: SpeechDecoder, codes, *, key: jax.Array | None = None, noise: Sequence | None = None,
                  source: Sequence | None = None, steps: int | None = None, cfg_rate: float | None = None,
                  overlap: int = CROSSFADE_SAMPLES, decoded: Sequence[dict] | None = None) -> np.ndarray:
    """Codes -> 24 kHz waveform (float32 in [−0.99, 0.99]), the reference's §6.7 path.

    ``codes``: one segment int [N, 8] or a list of segments (each decoded on its own). Each goes
    through RVQ decode and the audio decoder (hidden states before ``dconv2``, 4N − 1 frames),
    the prenet and the CFM sampler (``steps``, ``cfg_rate``; noise ``noise[i]`` or from ``key``),
    the vocoder (source randomness ``source[i]`` or from ``key``), and the segments are joined
    with the inserting cross-fade: ``expected_samples([N_i...])`` samples. ``decoded``: the
    tokenizer's :meth:`decode_batch` outputs of these segments, if the caller already has them.
    """
    segments = [codes] if getattr(codes, "ndim", None) == 2 else list(codes)
    if not segments:
        raise ValueError("no code segments to decode")
    if decoded is None:
        decoded = speech.tokenizer.decode_batch(segments)
    elif len(decoded) != len(segments):
        raise ValueError(f"decoded: {len(decoded)} outputs for {len(segments)} segments")
    hidden = [d["hidden_before_dconv2"] for d in decoded]
    return decode_segments(speech.flow_matching, speech.vocoder, hidden, key, noise=noise, source=source,
                           steps=steps, cfg_rate=cfg_rate, overlap=overlap)


def write_wav(path: str | os.PathLike, wave, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> str:
    """Writes a mono waveform (float, nominally in [−1, 1]; values beyond are clipped) with
    soundfile; ``subtype`` as soundfile names it (``PCM_16``, ``FLOAT``, ...). Returns the path."""

    path = os.fspath(path)
    w = np.asarray(wave, np.float32)
    if w.ndim == 2 and 1 in w.shape:
        w = w.reshape(-1)
    if w.ndim != 1:
        raise ValueError(f"{path}: expected a mono waveform [samples], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{path}: waveform has non-finite samples")
    if sample_rate <= 0:
        raise ValueError(f"{path}: sample rate must be positive, got {sample_rate}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    sf.write(path, np.clip(w, -1.0, 1.0), sample_rate, subtype=subtype)
    return path
