"""Parity runners for the audio tokenizer: ``whisper_logmel``, ``audio_encoder``, ``vq_bridge``,
``audio_decoder``.

Reference layouts are converted at the boundary: features are [B, n_mels, L] there and
[B, L, n_mels] here; the reference packs variable-length rows ([Σ N_b, ...]) where we keep padded
batches with lengths.

Batched reference outputs that depend on the batch (G12) are compared where they do not: the
audio decoder's batched outputs on the longest row(s) only, and its ``solo_last_row__*`` arrays
(the last row decoded alone) against the last row of *our batched* run — which therefore also
checks that our decoder is batch independent.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.audio.lengths import encoder_frames
from baichuan_audio_jax.audio.resample import resample
from baichuan_audio_jax.audio.whisper_logmel import ENCODER_LOWPASS_FILTER_WIDTH, LogMelConfig, log_mel, mel_filters
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.tables.audio_tokenizer import (
    audio_decoder_table,
    audio_encoder_table,
    vq_bridge_table,
)
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.parity.compare import Masked
from baichuan_audio_jax.parity.fixtures import FixtureComponent, FixtureError
from baichuan_audio_jax.parity.registry import register


def _tokenizer(comp: FixtureComponent, table) -> AudioTokenizer:
    """The tokenizer of the set's config with this component's weights (other parts zero)."""
    cfg = comp.model_config
    model, _ = load_model(lambda: AudioTokenizer(cfg, rngs=nnx.Rngs(0)), combine_tables(table(cfg)), comp.weights,
                          allow_uncovered=True)
    return model


def _pack(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[B, T, ...] padded -> [Σ lengths, ...] (the reference's packed layout)."""
    return np.concatenate([x[b, :int(n)] for b, n in enumerate(lengths)], axis=0)


def _unpack(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[Σ lengths, ...] -> [B, max(lengths), ...] with zeros past each length."""
    out = np.zeros((len(lengths), int(max(lengths))) + x.shape[1:], x.dtype)
    start = 0
    for b, n in enumerate(lengths):
        out[b, :int(n)] = x[start:start + int(n)]
        start += int(n)
    return out


def _rows_mask(lengths: np.ndarray, rows: np.ndarray, t: int) -> np.ndarray:
    """[B, T] validity restricted to ``rows`` (bool [B])."""
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]) & rows[:, None]


_COMMON_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)


def _source_rate(comp: FixtureComponent, n_in: int, n_out: int, target: int) -> int:
    """The rate of the fixture's input PCM: stated in ``source_audio``, else the common rate whose
    resampled length ceil(n·target/rate) gives the reference output's length."""
    rate = comp.spec.get("source_audio", {}).get("file_sample_rate")
    if rate:
        return int(rate)
    fits = [r for r in _COMMON_RATES if -(-n_in * target // r) == n_out]
    if len(fits) != 1:
        raise FixtureError(f"whisper_logmel: no source_audio.file_sample_rate in the manifest and the array "
                           f"lengths ({n_in} -> {n_out}) do not single out a rate")
    return fits[0]


def _as_float(pcm: np.ndarray) -> np.ndarray:
    """PCM as float in [−1, 1] (integers scaled by their full range, as a normalising load does)."""
    if pcm.dtype.kind in "iu":
        return pcm.astype(np.float32) / float(2 ** (8 * pcm.dtype.itemsize - 1))
    return pcm.astype(np.float32)


@register("whisper_logmel")
def whisper_logmel(comp: FixtureComponent) -> dict:
    audio = comp.manifest.get("tiny_config", {}).get("audio_config", {})
    defaults = LogMelConfig()
    get = lambda k: comp.config.get(k, audio.get(k, getattr(defaults, k)))
    fe = LogMelConfig(**{f: get(f) for f in ("sampling_rate", "n_fft", "hop_length", "num_mel_bins",
                                             "max_audio_seconds", "kernel_size", "stride_size", "avg_pooler")})
    a = comp.arrays
    pcm = a["pcm_48k"]
    rate = _source_rate(comp, pcm.shape[-1], a["waveform_16k"].shape[-1], fe.sampling_rate)
    wav16 = resample(_as_float(pcm), rate, fe.sampling_rate, lowpass_filter_width=ENCODER_LOWPASS_FILTER_WIDTH)
    feats = log_mel(wav16, fe)
    frames = fe.frames(wav16.shape[0])
    enc = encoder_frames(frames, fe.kernel_size, fe.stride_size)
    return {
        "waveform_16k": wav16,
        "features": feats.T,
        "valid_frame_nums": np.int64(frames),
        "encoder_length": np.int64(enc),
        "bridge_length": np.int64(enc // fe.avg_pooler),
        "mel_filters": mel_filters(fe.sampling_rate, fe.n_fft, fe.num_mel_bins),
    }


@register("audio_encoder")
def audio_encoder(comp: FixtureComponent) -> dict:
    model = _tokenizer(comp, audio_encoder_table)
    a = comp.arrays
    feats = np.transpose(a["input_features"], (0, 2, 1))
    lengths = a["feature_lengths"].astype(np.int32)
    # The reference lets conv2 read conv1's response to the batch padding for a shorter row of odd
    # length (G12); only then reproduce that, otherwise run our batch-independent path.
    t = feats.shape[1]
    reference_padding = bool(np.any((lengths % 2 == 1) & (lengths < t)))
    fn, state = pure(model.audio_encoder)
    hidden, out_lengths = jax.jit(fn, static_argnames="mask_conv_padding")(
        state, jnp.asarray(feats), jnp.asarray(lengths), mask_conv_padding=not reference_padding)
    out = {"hidden_states": np.asarray(hidden)}
    if "output_length" in a:
        out["output_length"] = np.asarray(out_lengths).astype(np.int64)
    return out


@register("vq_bridge")
def vq_bridge(comp: FixtureComponent) -> dict:
    model = _tokenizer(comp, vq_bridge_table)
    a = comp.arrays
    x = a["x"]
    n = a["output_length"].astype(np.int32)
    bridge = model.vq_bridge
    pre_fn, state = pure(bridge, "pre_quantize")
    q_fn, _ = pure(bridge, "quantize")
    # The reference gets token counts, not encoder lengths; x is already zero past each row's
    # encoder length, so the whole tensor is passed (every group, as in ``pre_vq``).
    z = jax.jit(pre_fn)(state, jnp.asarray(x), jnp.full((x.shape[0],), x.shape[1], jnp.int32))
    codes = np.asarray(jax.jit(q_fn)(state, z))
    ref_codes = jnp.asarray(a["code_ids"]).astype(jnp.int32)
    dec_fn, _ = pure(bridge, "decode")
    rec_fn, _ = pure(bridge, "recover")
    return {
        "pre_vq": np.asarray(z),
        "code_ids": _pack(codes, n).astype(np.int64),
        "decoder_embedding": np.asarray(jax.jit(dec_fn)(state, ref_codes)),
        "recovered": np.asarray(jax.jit(rec_fn)(state, ref_codes)),
    }


@register("audio_decoder")
def audio_decoder(comp: FixtureComponent) -> dict:
    model = _tokenizer(comp, audio_decoder_table)
    a = comp.arrays
    n = a["input_length"].astype(np.int32)
    emb = _unpack(a["audio_embed"], n)
    fn, state = pure(model.audio_decoder)
    o = jax.tree.map(np.asarray, jax.jit(fn)(state, jnp.asarray(emb), jnp.asarray(n)))
    longest = n == n.max()
    hidden_mask = _pack(_rows_mask(o.hidden_lengths, longest, o.hidden_before_dconv2.shape[1]), o.hidden_lengths)
    mel_rows = _rows_mask(np.full_like(o.mel_lengths, o.coarse_mel.shape[1]), longest, o.coarse_mel.shape[1])
    coarse_rows = _rows_mask(np.full_like(o.dconv2_lengths, o.dconv2_out.shape[1]), longest, o.dconv2_out.shape[1])
    last = len(n) - 1
    return {
        "refined_mel": Masked(o.refined_mel, mel_rows),
        "coarse_mel": Masked(o.coarse_mel, mel_rows),
        "mel_length": o.mel_lengths.astype(np.int64),
        "hidden_states_before_dconv2": Masked(_pack(o.hidden_before_dconv2, o.hidden_lengths), hidden_mask),
        "output_length_before_dconv2": o.hidden_lengths.astype(np.int64),
        "dconv2_out": Masked(o.dconv2_out, coarse_rows),
        "dconv2_length": o.dconv2_lengths.astype(np.int64),
        "solo_last_row__refined_mel": o.refined_mel[last:, :o.mel_lengths[last]],
        "solo_last_row__hidden_states_before_dconv2": o.hidden_before_dconv2[last, :o.hidden_lengths[last]],
        "solo_last_row__mel_length": o.mel_lengths[last:].astype(np.int64),
    }
