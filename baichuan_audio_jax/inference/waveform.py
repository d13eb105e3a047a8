"""Decoder hidden states -> 24 kHz waveform (reference §4.6–4.9, §6.7).

The back half of codes -> waveform, for the audio decoder's hidden states before ``dconv2``
``[B, T, d]`` (50 Hz, T = 4N − 1 for N tokens):

* :func:`hidden_to_mel`: prenet + CFM sampler (Euler, classifier-free guidance) as one compiled
  program; the noise is given or drawn from a PRNG key; steps and guidance rate configurable.
* :func:`mel_to_wave`: the HiFT vocoder; its source randomness is given or drawn from a key.
* :func:`decode_segments`: each segment decoded on its own (batch 1, fresh randomness), vocoded,
  and joined with :func:`concat_segments` — the reference's generation path (§6.7).
* :func:`concat_segments`: the reference's *inserting* cross-fade.
* :func:`write_wav`: a waveform to a WAV file (soundfile).

Compiled programs are cached per model structure and input shape (``jax.jit`` with the module's
graph definition as a static argument), so repeated calls with the same shapes do not recompile.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder, euler_schedule, guidance_weights
from baichuan_audio_jax.models.hift import HiFTGenerator

SAMPLE_RATE = 24000
CROSSFADE_SAMPLES = 240  # 10 ms at 24 kHz, the value the reference demos pass


@functools.partial(jax.jit, static_argnums=0)
def _hidden_to_mel(graphdef, state, hidden, lengths, t, dt, weights, noise, key, temperature):
    decoder = nnx.merge(graphdef, state)
    dtype = jnp.dtype(decoder.cfg.dtype)
    if noise is None:
        shape = (hidden.shape[0], decoder.prenet.output_frames(hidden.shape[1]), decoder.cfg.flow_matching.in_channels)
        noise = jax.random.normal(key, shape, dtype)
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
    if noise is not None:
        noise = jnp.asarray(noise)
        expected = (hidden.shape[0], decoder.prenet.output_frames(hidden.shape[1]), fm.in_channels)
        if noise.shape != expected:
            raise ValueError(f"noise must be {expected}, got {tuple(noise.shape)}")
        key = None
    dtype = decoder.cfg.dtype
    schedule = euler_schedule(steps or fm.diffusion_steps, fm.t_scheduler, dtype)
    weights = guidance_weights(fm.inference_cfg_rate if cfg_rate is None else cfg_rate, dtype)
    graphdef, state = nnx.split(decoder)
    return _hidden_to_mel(graphdef, state, hidden, lengths, jnp.asarray(schedule.t), jnp.asarray(schedule.dt),
                          jnp.asarray(weights), noise, key, temperature)


@functools.partial(jax.jit, static_argnums=0)
def _mel_to_wave(graphdef, state, mel, phase_u01, noise, key):
    return nnx.merge(graphdef, state)(mel, phase_u01, noise, key)


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
    graphdef, state = nnx.split(vocoder)
    return _mel_to_wave(graphdef, state, mel, None if phase_u01 is None else jnp.asarray(phase_u01),
                        None if noise is None else jnp.asarray(noise), key)


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


def decode_segments(decoder: FlowMatchingDecoder, vocoder: HiFTGenerator, hidden_segments: Sequence,
                    key: jax.Array, *, steps: int | None = None, cfg_rate: float | None = None,
                    overlap: int = CROSSFADE_SAMPLES) -> np.ndarray:
    """Audio segments' hidden states (each [T_i, d], valid frames only) -> one 24 kHz waveform.

    Every segment is decoded alone with fresh randomness (split from ``key``): mel by
    :func:`hidden_to_mel`, waveform by :func:`mel_to_wave` (480·T_i samples), then
    :func:`concat_segments`.
    """
    waves = []
    for i, hidden in enumerate(hidden_segments):
        hidden = jnp.asarray(hidden)
        if hidden.ndim != 2 or hidden.shape[0] == 0:
            raise ValueError(f"segment {i}: hidden states must be a non-empty [T, d] array, got {tuple(hidden.shape)}")
        k_mel, k_wave = jax.random.split(jax.random.fold_in(key, i))
        mel, _ = hidden_to_mel(decoder, hidden[None], jnp.asarray([hidden.shape[0]]), key=k_mel, steps=steps,
                               cfg_rate=cfg_rate)
        wave, _ = mel_to_wave(vocoder, mel.astype(jnp.float32), key=k_wave)
        waves.append(np.asarray(wave[0]))
    return concat_segments(waves, overlap)


def write_wav(path: str | os.PathLike, wave, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> str:
    """Writes a mono waveform (float, nominally in [−1, 1]; values beyond are clipped) with
    soundfile; ``subtype`` as soundfile names it (``PCM_16``, ``FLOAT``, ...). Returns the path."""
    import soundfile as sf

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
