"""The ``vocoder`` training task: the HiFT generator against multi-period and multi-resolution
spectrogram discriminators (HiFi-GAN's objective, as in CosyVoice's HiFT recipe).

A batch holds 24 kHz waveform segments ``wave [B, S]``, S = ``data.seq_len`` mel frames × the
vocoder's hop (480), cut at random offsets of the training audio by the ``grain_audio`` source.
One step:

1. the segment's natural-log 24 kHz mel (:func:`~baichuan_audio_jax.audio.mel24k.log_mel_24k`,
   the flow-matching decoder's output and the vocoder's input) is computed on the device;
2. the generator renders it back to a waveform ŷ (source randomness from the step's key);
3. **discriminator loss** (least squares) on y and on ŷ with its gradient stopped;
4. **generator loss** = ``mel_weight``·mel L1 + ``feature_weight``·feature matching +
   ``adversarial_weight``·least-squares adversarial, the discriminators' parameters held fixed
   (:mod:`~baichuan_audio_jax.training.vocoder_losses`); before
   ``train.vocoder.adversarial_start_step`` the generator learns from the mel loss alone (the
   discriminators train from step 0).

The two losses are summed into the differentiated scalar with the stops placed so that the
generator's gradient is that of the generator loss and the discriminators' that of the
discriminator loss; each part has its own AdamW (:func:`make_optimizer`: the run's schedule for
the generator, ``train.vocoder.discriminator_learning_rate`` for the discriminators) — both
optimisers update from the same step (simultaneous, not alternating, updates). The reported
``loss`` is that sum; ``mel_l1`` is the quality measure (``mel_l1_eval`` on held-out audio).

Metrics: ``mel_l1``, ``g_loss``, ``g_adv``, ``feature_loss``, ``d_loss``, ``d_real``, ``d_fake``,
``f0_mean`` (Hz, predicted), ``voiced_fraction``.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.audio.mel24k import log_mel_24k
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.models.discriminators import DiscriminatorConfig, VocoderDiscriminator
from baichuan_audio_jax.models.hift import HiFTGenerator
from baichuan_audio_jax.training import vocoder_losses as vl
from baichuan_audio_jax.training.optimizer import FROZEN, TRAIN, _decay_mask, learning_rate_schedule
from baichuan_audio_jax.training.tasks import Task, Trainable, path_tree, register

PREFIX = "voc"
DISCRIMINATOR = "discriminator"  # optimizer label of the discriminators' parameters

# train.vocoder defaults (a run config may omit the section or any key)
DEFAULTS = dict(mel_weight=45.0, feature_weight=2.0, adversarial_weight=1.0, adversarial_start_step=0,
                discriminator_learning_rate=0.0, periods=DiscriminatorConfig.periods,
                resolutions=DiscriminatorConfig.resolutions)


def vocoder_options(train_cfg) -> dict:
    given = train_cfg.get("vocoder", None) if hasattr(train_cfg, "get") else None
    given = given.to_dict() if isinstance(given, ml_collections.ConfigDict) else dict(given or {})
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in train.vocoder (known: {sorted(DEFAULTS)})")
    return {**DEFAULTS, **given}


class VocoderTraining(nnx.Module):
    """The generator (``generator``: exactly the reference ``HiFTGenerator``) and its training
    discriminators (``discriminator``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, periods=DiscriminatorConfig.periods,
                 resolutions=DiscriminatorConfig.resolutions):
        if cfg.vocoder.hop_length != cfg.flow_matching.hop_length or \
                cfg.vocoder.sampling_rate != cfg.flow_matching.sampling_rate:
            raise ValueError(f"model.vocoder (hop {cfg.vocoder.hop_length}, {cfg.vocoder.sampling_rate} Hz) does not "
                             f"match the mel of model.flow_matching (hop {cfg.flow_matching.hop_length}, "
                             f"{cfg.flow_matching.sampling_rate} Hz)")
        self.mel_cfg = cfg.flow_matching
        self.generator = HiFTGenerator(cfg.vocoder, rngs=rngs)
        disc = DiscriminatorConfig.for_generator(cfg.vocoder, periods=periods, resolutions=resolutions)
        self.discriminator = VocoderDiscriminator(disc, rngs=rngs)


def make_model(model_cfg: ModelConfig, rngs: nnx.Rngs, **options) -> VocoderTraining:
    return VocoderTraining(model_cfg, rngs=rngs, **options)


def model_options(config) -> dict:
    """The discriminators' periods and (n_fft, hop, window) resolutions from ``train.vocoder``."""
    opt = vocoder_options(config.train)
    return dict(periods=tuple(int(p) for p in opt["periods"]),
                resolutions=tuple(tuple(int(x) for x in r) for r in opt["resolutions"]))


def denominators(batch: Mapping[str, jax.Array], model_cfg: ModelConfig) -> dict[str, jax.Array]:
    return dict(rows=jnp.asarray(batch["wave"].shape[0], jnp.float32))


def vocoder_loss(model: VocoderTraining, batch: Mapping[str, jax.Array], den: Mapping[str, jax.Array],
                 rng: jax.Array, train_cfg, step) -> tuple[jax.Array, dict[str, jax.Array]]:
    opt = vocoder_options(train_cfg)
    real = batch["wave"].astype(jnp.float32)
    share = real.shape[0] / den["rows"]  # microbatch share: sums over microbatches give batch means
    mel = log_mel_24k(real, model.mel_cfg)
    fake, f0 = model.generator(mel, key=rng)
    disc = model.discriminator
    graphdef, disc_state = nnx.split(disc)
    fixed = nnx.merge(graphdef, jax.lax.stop_gradient(disc_state))

    real_j = disc(real)
    d_loss, d_real, d_fake = vl.discriminator_loss(real_j.scores, disc(jax.lax.stop_gradient(fake)).scores)
    fake_j = fixed(fake)
    features = vl.feature_matching(real_j.features, fake_j.features)
    adv = vl.generator_adversarial_loss(fake_j.scores)
    mel_loss = vl.mel_l1(fake, real, model.mel_cfg, real_mel=mel)
    on = (step >= int(opt["adversarial_start_step"])).astype(jnp.float32)
    g_loss = float(opt["mel_weight"]) * mel_loss + on * (float(opt["feature_weight"]) * features
                                                         + float(opt["adversarial_weight"]) * adv)
    voiced = (f0 > model.generator.cfg.nsf_voiced_threshold).astype(jnp.float32)
    sums = dict(mel_l1=mel_loss, g_loss=g_loss, g_adv=adv, feature_loss=features, d_loss=d_loss, d_real=d_real,
                d_fake=d_fake, f0_mean=jnp.mean(f0), voiced_fraction=jnp.mean(voiced))
    sums = {k: v * share for k, v in sums.items()}
    return (g_loss + d_loss) * share, sums


def make_optimizer(train_cfg, labels, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Two AdamW optimisers: the generator's with the run's schedule (``train.learning_rate``,
    warmup, cosine decay), the discriminators' with the same schedule scaled to
    ``train.vocoder.discriminator_learning_rate`` (0: the generator's); each clips its own
    gradient norm at ``train.max_grad_norm``. Frozen parameters get no update and no state."""
    opt = vocoder_options(train_cfg)
    g_schedule = learning_rate_schedule(train_cfg, total_steps)
    d_peak = float(opt["discriminator_learning_rate"]) or float(train_cfg.learning_rate)
    ratio = d_peak / float(train_cfg.learning_rate) if float(train_cfg.learning_rate) else 0.0
    d_schedule = lambda count: g_schedule(count) * ratio

    def adamw(schedule):
        parts = []
        if float(train_cfg.max_grad_norm) > 0:
            parts.append(optax.clip_by_global_norm(float(train_cfg.max_grad_norm)))
        parts.append(optax.adamw(schedule, b1=float(train_cfg.b1), b2=float(train_cfg.b2), eps=float(train_cfg.eps),
                                 weight_decay=float(train_cfg.weight_decay), mask=_decay_mask))
        return optax.chain(*parts)

    disc_prefix = f"{PREFIX}/{DISCRIMINATOR}/"
    groups = jax.tree.map(lambda lab, path: lab if lab == FROZEN else (DISCRIMINATOR if path.startswith(disc_prefix)
                                                                       else TRAIN),
                          labels, path_tree(labels, PREFIX))
    tx = optax.multi_transform({TRAIN: adamw(g_schedule), DISCRIMINATOR: adamw(d_schedule),
                                FROZEN: optax.set_to_zero()}, groups)
    return tx, g_schedule


def row_shapes(config) -> dict:
    return audio_batch.vocoder_row_shapes(ModelConfig.from_config(config.model), int(config.data.seq_len))


def validate(batch: Mapping[str, np.ndarray], model_cfg: ModelConfig) -> None:
    wave = np.asarray(batch["wave"])
    if not np.all(np.isfinite(wave)):
        raise ValueError("field 'wave' holds non-finite samples")


def _conv_flops(k: int, cin: int, cout: int, length: int) -> float:
    return 2.0 * k * cin * cout * length


def flops_per_step(model_cfg: ModelConfig, batch_size: int, seq_len: int, train_cfg=None) -> float:
    """Model FLOPs of one step (convolutions only; STFTs and activations are left out): the
    generator once forward and backward (3×), the discriminators on real, detached fake and fake
    (3 forwards, two of them with a backward: 7×)."""
    c = model_cfg.vocoder
    t = seq_len
    gen = _conv_flops(7, c.in_channels, c.base_channels, t)
    gen += c.f0_num_layers * _conv_flops(3, c.f0_cond_channels, c.f0_cond_channels, t)
    length = t
    for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
        cin, cout = c.base_channels // 2 ** i, c.base_channels // 2 ** (i + 1)
        length *= u
        gen += _conv_flops(k, cin, cout, length) / u
        for kr, dil in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
            gen += 2 * len(dil) * _conv_flops(kr, cout, cout, length)
        gen += 2 * len(c.source_resblock_dilation_sizes[i]) * _conv_flops(
            c.source_resblock_kernel_sizes[i], cout, cout, length)
    gen += _conv_flops(7, c.base_channels // 2 ** len(c.upsample_rates), c.istft_n_fft + 2, length)
    d = DiscriminatorConfig.for_generator(c, **(model_options(ml_collections.ConfigDict(dict(train=train_cfg)))
                                                  if train_cfg is not None else {}))
    samples = t * c.hop_length
    disc = 0.0
    for _ in d.periods:
        chans, n = (1, *d.period_channels), samples
        for i in range(len(d.period_channels)):
            stride = 1 if i == len(d.period_channels) - 1 else d.period_stride
            n = n // stride
            disc += _conv_flops(d.period_kernel, chans[i], chans[i + 1], n)
        disc += _conv_flops(3, chans[-1], 1, n)
    for n_fft, hop, _ in d.resolutions:
        frames, bins, ch = samples // hop + 1, n_fft // 2 + 1, d.spec_channels
        disc += _conv_flops(27, 1, ch, frames * bins)
        for _ in range(3):
            bins = -(-bins // 2)
            disc += _conv_flops(27, ch, ch, frames * bins)
        disc += _conv_flops(9, ch, ch, frames * bins) + _conv_flops(9, ch, 1, frames * bins)
    return batch_size * (3.0 * gen + 7.0 * disc)


VOCODER = register(Task(
    name="vocoder",
    prefix=PREFIX,
    make_model=make_model,
    batch_fields={},
    denominators=denominators,
    loss=vocoder_loss,
    stages={0: Trainable(description="HiFT generator + discriminators"),
            1: Trainable(exclude=(f"{PREFIX}/generator/f0_predictor/*",),
                         description="generator and discriminators, F0 predictor frozen")},
    flops_per_step=flops_per_step,
    tokens=lambda batch: int(np.size(batch["wave"])),
    validate=validate,
    row_shapes=row_shapes,
    make_optimizer=make_optimizer,
    model_options=model_options,
))
