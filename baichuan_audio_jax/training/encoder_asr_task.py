"""The ``encoder_asr`` training task: the audio encoder pretrained as a speech recogniser.

The paper's tokenizer starts from Whisper's encoder, a model already trained to recognise speech,
so that the first codebook of the RVQ learns from features that carry the words. This task
recreates that starting point on any transcribed corpus: a CTC head (one linear layer from the
encoder width to the text vocabulary, id ``model.tokens.pad_token_id`` as the CTC blank) over the
encoder's 50 Hz hidden states, trained on the transcript ids of :mod:`baichuan_audio_jax.audio_batch`
rows (the trailing EOS is not a CTC label). A tokenizer run then starts its encoder from this run
through ``init_from`` (``init_from["tokenizer/audio_encoder"] = "RUN#audio_encoder"``), the path a
converted Whisper encoder takes.

Augmentation (``train.encoder_asr``): SpecAugment-style masking of the log-mel features inside the
step, ``freq_masks`` bands of up to ``freq_width`` mel bins and ``time_masks`` spans of up to
``time_width`` × the row's valid frames each, filled with the row's mean feature value. Speed
perturbation is done by the data pipeline on the waveform (``data.speed_perturb``).

Metrics: ``ctc_loss`` (per transcript token), ``frames_per_label`` (encoder frames per label:
CTC needs at least one, more with repeats). :func:`greedy_decode` gives the CTC head's best path
(repeats merged, blanks dropped) for held-out checks.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.models.audio_encoder import AudioEncoder
from baichuan_audio_jax.training.tasks import Task, Trainable, register
from baichuan_audio_jax.training.tokenizer_task import _stack_flops

PREFIX = "asr"


class EncoderASR(nnx.Module):
    """The audio encoder with a CTC head over the text vocabulary."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.blank_id = int(cfg.tokens.pad_token_id)
        self.audio_encoder = AudioEncoder(cfg, rngs=rngs)
        self.ctc_head = Dense(cfg.audio_encoder.d_model, cfg.llm.vocab_size, in_axis="embed", out_axes="vocab",
                              use_bias=True, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                              rngs=rngs)

    def __call__(self, features: jax.Array, feature_lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(CTC logits [B, E, vocab] in float32, encoder frames E [B])."""
        hidden, lengths = self.audio_encoder(features, feature_lengths)
        return self.ctc_head(hidden).astype(jnp.float32), lengths


def make_model(model_cfg: ModelConfig, rngs: nnx.Rngs) -> EncoderASR:
    return EncoderASR(model_cfg, rngs=rngs)


def _settings(train_cfg) -> Any:
    s = train_cfg.get("encoder_asr") if hasattr(train_cfg, "get") else None
    if s is None:
        raise ValueError("task 'encoder_asr' needs the config section train.encoder_asr "
                         "(see configs/encoder_asr_tiny.py)")
    return s


# ----------------------------------------------------------------------------- augmentation

def _spans(rng: jax.Array, count: int, max_width: jax.Array, extent: jax.Array, size: int) -> jax.Array:
    """[B, size] bool: ``count`` spans per row, each of a width drawn uniformly from
    0..max_width[b] and placed uniformly inside 0..extent[b]."""
    b = max_width.shape[0]
    k_w, k_s = jax.random.split(rng)
    width = jnp.floor(jax.random.uniform(k_w, (b, count)) * (max_width[:, None] + 1)).astype(jnp.int32)
    room = jnp.maximum(extent[:, None] - width + 1, 1)
    start = jnp.floor(jax.random.uniform(k_s, (b, count)) * room).astype(jnp.int32)
    pos = jnp.arange(size)[None, None, :]
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
    return jnp.any(inside, axis=1)


def spec_augment(rng: jax.Array, features: jax.Array, lengths: jax.Array, *, freq_masks: int, freq_width: int,
                 time_masks: int, time_width: float) -> jax.Array:
    """``features`` [B, T, F] with frequency bands and time spans masked (SpecAugment without time
    warping), filled with each row's mean over its valid frames; padded frames are left as they
    are. Time-span widths scale with each row's valid length (at most ``time_width`` × it)."""
    b, t, f = features.shape
    lengths = jnp.asarray(lengths, jnp.int32)
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    k_f, k_t = jax.random.split(rng)
    mask = jnp.zeros((b, t, f), bool)
    if freq_masks > 0 and freq_width > 0:
        bands = _spans(k_f, freq_masks, jnp.full((b,), freq_width, jnp.int32), jnp.full((b,), f, jnp.int32), f)
        mask = mask | bands[:, None, :]
    if time_masks > 0 and time_width > 0:
        max_w = jnp.floor(lengths.astype(jnp.float32) * time_width).astype(jnp.int32)
        spans = _spans(k_t, time_masks, max_w, lengths, t)
        mask = mask | spans[:, :, None]
    mask = mask & valid[:, :, None]
    x = features.astype(jnp.float32)
    count = jnp.maximum(lengths.astype(jnp.float32) * f, 1.0)
    mean = jnp.sum(x * valid[:, :, None], axis=(1, 2)) / count
    return jnp.where(mask, mean[:, None, None], x).astype(features.dtype)


# ----------------------------------------------------------------------------- loss

def label_lengths(batch: Mapping[str, jax.Array]) -> jax.Array:
    """CTC labels per row: the transcript ids without the trailing EOS."""
    return jnp.maximum(jnp.asarray(batch["text_lengths"], jnp.int32) - 1, 0)


def denominators(batch: Mapping[str, jax.Array], model_cfg: ModelConfig) -> dict[str, jax.Array]:
    del model_cfg
    return dict(labels=jnp.maximum(jnp.sum(label_lengths(batch)).astype(jnp.float32), 1.0))


def ctc_loss(model: EncoderASR, batch: Mapping[str, jax.Array], den: Mapping[str, jax.Array], rng: jax.Array,
             train_cfg, step) -> tuple[jax.Array, dict[str, jax.Array]]:
    del step
    s = _settings(train_cfg)
    features = batch["features"]
    if any(int(s.get(k, 0)) > 0 for k in ("freq_masks", "time_masks")):
        features = spec_augment(rng, features, batch["feature_lengths"], freq_masks=int(s.freq_masks),
                                freq_width=int(s.freq_width), time_masks=int(s.time_masks),
                                time_width=float(s.time_width))
    logits, frames = model(features, batch["feature_lengths"])
    labels = jnp.asarray(batch["text_ids"], jnp.int32)
    n_labels = label_lengths(batch)
    logit_pad = (jnp.arange(logits.shape[1])[None, :] >= frames[:, None]).astype(jnp.float32)
    label_pad = (jnp.arange(labels.shape[1])[None, :] >= n_labels[:, None]).astype(jnp.float32)
    per_row = optax.ctc_loss(logits, logit_pad, labels, label_pad, blank_id=model.blank_id)
    has = n_labels > 0  # rows of batch padding carry no transcript
    total = jnp.sum(jnp.where(has, per_row, 0.0)) / den["labels"]
    ratio = jnp.sum(jnp.where(has, frames, 0)).astype(jnp.float32) / den["labels"]
    return total, dict(ctc_loss=total, frames_per_label=ratio)


def greedy_decode(model: EncoderASR, features: jax.Array, feature_lengths: jax.Array) -> list[list[int]]:
    """The CTC best path of every row: argmax per frame, repeats merged, blanks dropped."""
    logits, frames = model(features, feature_lengths)
    best = np.asarray(jnp.argmax(logits, axis=-1))
    out = []
    for row, n in zip(best, np.asarray(frames)):
        ids, prev = [], -1
        for t in row[: int(n)].tolist():
            if t != prev and t != model.blank_id:
                ids.append(t)
            prev = t
        out.append(ids)
    return out


# ----------------------------------------------------------------------------- task

def row_shapes(config) -> dict:
    return audio_batch.asr_row_shapes(ModelConfig.from_config(config.model), int(config.data.seq_len),
                                      int(config.data.get("text_len", 0) or 1))


def validate(batch: Mapping[str, np.ndarray], model_cfg: ModelConfig) -> None:
    """Transcript ids inside the vocabulary; no blank id among a row's labels."""
    ids = np.asarray(batch["text_ids"])
    if ids.size and (ids.min() < 0 or ids.max() >= model_cfg.llm.vocab_size):
        raise ValueError(f"field 'text_ids': ids outside [0, {model_cfg.llm.vocab_size})")
    blank = int(model_cfg.tokens.pad_token_id)
    for i, n in enumerate(np.asarray(batch["text_lengths"]).tolist()):
        if n > 1 and np.any(ids[i, : n - 1] == blank):
            raise ValueError(f"field 'text_ids' row {i}: holds the CTC blank id {blank} (the pad token)")


def flops_per_step(model_cfg: ModelConfig, batch_size: int, seq_len: int, train_cfg=None) -> float:
    """Model FLOPs of one step (3 × forward): encoder convolutions and layers plus the CTC head."""

    g = audio_batch.AudioGeometry.of(model_cfg, seq_len, padded=True)
    enc = model_cfg.audio_encoder
    fwd = 2.0 * seq_len * 3 * enc.num_mel_bins * enc.d_model + 2.0 * g.encoder_frames * 3 * enc.d_model ** 2
    fwd += _stack_flops(enc.num_layers, enc.d_model, enc.ffn_dim, g.encoder_frames)
    fwd += 2.0 * g.encoder_frames * enc.d_model * model_cfg.llm.vocab_size
    return 3.0 * batch_size * fwd


ENCODER_ASR = register(Task(
    name="encoder_asr",
    prefix=PREFIX,
    make_model=make_model,
    batch_fields={},
    denominators=denominators,
    loss=ctc_loss,
    stages={0: Trainable(description="audio encoder + CTC head")},
    flops_per_step=flops_per_step,
    tokens=lambda batch: int(np.sum(batch["feature_lengths"])),
    validate=validate,
    row_shapes=row_shapes,
))
