"""The ``flow_matching`` training task (paper §3.2; spec §4.6–4.8, §8).

The audio encoder, VQ bridge and audio decoder are frozen (a trained tokenizer, loaded with
``config.init_from.tokenizer``); the prenet and the U-Net estimator learn. One step on a batch of
:mod:`baichuan_audio_jax.audio_batch` flow rows:

1. the frozen tokenizer encodes the 16 kHz features to codes on the inference path (nearest
   neighbour) and decodes them to the hidden states before ``dconv2`` (50 Hz, 4N − 1 frames), as
   generation does — so the decoder learns from exactly what it will be given;
2. the prenet maps them to the mel prior µ;
3. **OT-CFM loss** (the reference's own training loss, :func:`models.flow_matching.cfm_loss`): a
   cosine-scheduled t per sample, y = (1 − (1 − σ)t)·z + t·x₁, target x₁ − (1 − σ)·z, µ zeroed
   for a sample with probability ``flow_matching.training_cfg_rate`` (0.2; classifier-free
   guidance), the estimator with the static chunk attention mask of inference (100-frame
   blocks), masked MSE;
4. **prior loss** on the prenet output: the masked mean squared error between µ and the target
   mel (our choice where the paper names a "prior loss" without its form: µ is trained to be the
   target itself, the Gaussian-mean prior of Matcha-TTS up to constants);

total = ``flow_matching.loss_weight``·CFM + ``flow_matching.prenet_loss_weight``·prior. Targets
are the 24 kHz mel of the same audio aligned to the decoder's frames (``audio_batch``).
Metrics: ``cfm_loss``, ``prior_loss``, ``prior_mae`` (mean |µ − target|).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder, cfm_loss
from baichuan_audio_jax.training.tasks import Task, Trainable, register
from baichuan_audio_jax.training.tokenizer_task import _stack_flops

PREFIX = "fm"


class FlowTraining(nnx.Module):
    """The frozen audio tokenizer and the flow-matching decoder it feeds."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.tokenizer = AudioTokenizer(cfg, rngs=rngs)
        self.flow = FlowMatchingDecoder(cfg, rngs=rngs)


def make_model(model_cfg: ModelConfig, rngs: nnx.Rngs) -> FlowTraining:
    return FlowTraining(model_cfg, rngs=rngs)


def decoder_hidden(tokenizer: AudioTokenizer, features: jax.Array, feature_lengths: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    """(hidden states before dconv2 [B, T', D], T = 4N − 1) of the tokenizer's inference path,
    without gradient."""
    codes, n = tokenizer.encode(features, feature_lengths)
    hidden, t = tokenizer.audio_decoder.hidden(tokenizer.vq_bridge.decode(codes), n)
    return jax.lax.stop_gradient(hidden), t


def denominators(batch: Mapping[str, jax.Array], model_cfg: ModelConfig) -> dict[str, jax.Array]:
    frames = jnp.maximum(jnp.sum(batch["mel_lengths"]).astype(jnp.float32), 1.0)
    return dict(mel=frames * model_cfg.flow_matching.in_channels)


def flow_loss(model: FlowTraining, batch: Mapping[str, jax.Array], den: Mapping[str, jax.Array], rng: jax.Array,
              train_cfg, step) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train_cfg, step
    fm = model.flow.cfg.flow_matching
    hidden, t = decoder_hidden(model.tokenizer, batch["features"], batch["feature_lengths"])
    mu, mel_lengths = model.flow.prenet(hidden, t)
    target = batch["mel"].astype(jnp.float32)
    if target.shape[1] != mu.shape[1]:
        raise ValueError(f"field 'mel' has {target.shape[1]} frames per row, the decoder gives {mu.shape[1]}")
    mask = jnp.arange(mu.shape[1])[None, :] < mel_lengths[:, None]
    cfm = cfm_loss(model.flow.estimator, target, mask, mu, rng, sigma_min=fm.sigma_min,
                   cfg_dropout=fm.training_cfg_rate, scheduler=fm.t_scheduler, denominator=den["mel"])
    diff = (mu.astype(jnp.float32) - target) * mask[..., None]
    prior = jnp.sum(jnp.square(diff)) / den["mel"]
    loss = fm.loss_weight * cfm + fm.prenet_loss_weight * prior
    return loss, dict(cfm_loss=cfm, prior_loss=prior, prior_mae=jnp.sum(jnp.abs(diff)) / den["mel"])


def row_shapes(config) -> dict:
    return audio_batch.flow_row_shapes(ModelConfig.from_config(config.model), int(config.data.seq_len))


def validate(batch: Mapping[str, np.ndarray], model_cfg: ModelConfig) -> None:
    """Target lengths consistent with the decoder's frame count (4N − 1)."""
    for i, length in enumerate(np.asarray(batch["feature_lengths"]).tolist()):
        if length == 0:
            continue
        want = audio_batch.AudioGeometry.of(model_cfg, length, padded=False).decoder_frames
        got = int(batch["mel_lengths"][i])
        if got != want:
            raise ValueError(f"field 'mel_lengths' row {i}: {got} frames, the decoder gives {want} for "
                             f"{length} log-mel frames")


def flops_per_step(model_cfg: ModelConfig, batch_size: int, seq_len: int, train_cfg=None) -> float:
    """Model FLOPs of one step: the frozen tokenizer's forward (encoder + decoder, once) plus
    3 × the forward of prenet and U-Net (forward + backward)."""

    g = audio_batch.AudioGeometry.of(model_cfg, seq_len, padded=True)
    enc, dec, fm = model_cfg.audio_encoder, model_cfg.audio_decoder, model_cfg.flow_matching
    frozen = _stack_flops(enc.num_layers, enc.d_model, enc.ffn_dim, g.encoder_frames)
    frozen += _stack_flops(dec.num_layers, dec.d_model, dec.ffn_dim, g.decoder_frames)
    t = g.decoder_frames
    d = fm.prenet_d_model
    prenet = 2.0 * t * (fm.prenet_in_dim * 4 * d + 4 * d * d) + _stack_flops(fm.prenet_nlayers, d, fm.prenet_ffn_dim, t)
    c = fm.channels[0]
    inner = fm.num_heads * fm.attention_head_dim
    block = 2.0 * t * (4 * c * inner + 2 * c * fm.ffn_multiplier * c) + 4.0 * t * t * inner
    resnet = 2.0 * t * (3 * c * c * 2 + c * c)
    stages = 2 + fm.num_mid_blocks
    unet = stages * (resnet + fm.n_blocks * block) + 2.0 * t * 3 * c * c * 3
    return batch_size * (frozen + 3.0 * (prenet + unet))


FLOW_MATCHING = register(Task(
    name="flow_matching",
    prefix=PREFIX,
    make_model=make_model,
    batch_fields={},
    denominators=denominators,
    loss=flow_loss,
    stages={0: Trainable(only=(f"{PREFIX}/flow/*",), description="flow-matching prenet + U-Net (tokenizer frozen)")},
    flops_per_step=flops_per_step,
    tokens=lambda batch: int(np.sum(batch["mel_lengths"])),
    validate=validate,
    row_shapes=row_shapes,
))
