"""Flow-matching mel decoder: prenet, conditional U-Net estimator and the CFM sampler.

Reference §3.6, §4.6–4.8, G3, G4, G6. Everything is channels-last: hidden states ``[B, T, d]``,
mels ``[B, T, 80]``, frame masks ``[B, T]``.

* :class:`FlowMatchingPrenet` maps the audio decoder's hidden states before ``dconv2`` (50 Hz)
  to the mel prior µ: ``in_mlp`` (Linear, SiLU, Linear), causal RMSNorm Whisper layers *without*
  positions (the unused ``positional_embedding`` buffer is kept so checkpoints round-trip), zeros
  past each length, final RMSNorm, bias-free ``out_proj``.
* :class:`ConditionalUNet` is the velocity estimator f(x, mask, µ, t): one resolution (the
  "down/up samplers" are stride-1 causal convs), causal ResNet blocks with Mish and channel
  LayerNorm, a sinusoidal time embedding, transformer blocks with the static block-chunk mask,
  and the skip concatenation ``[h ; skip]``.
* :class:`FlowMatchingDecoder` composes both; :meth:`FlowMatchingDecoder.sample` is the Euler
  sampler with classifier-free guidance as one ``lax.scan``; :meth:`FlowMatchingDecoder.loss`
  is the OT-CFM training loss of §4.8.

The sampler's time grid is computed on the host by :func:`time_grid`, reproducing the
reference's arithmetic in the compute dtype (torch ``linspace``, cosine schedule, accumulated t),
and passed to the compiled loop as data.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.config import FlowMatchingConfig, ModelConfig
from baichuan_audio_jax.layers.activations import mish
from baichuan_audio_jax.layers.attention import chunk_mask, key_padding_mask, length_mask
from baichuan_audio_jax.layers.conv import Conv1d
from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.layers.norms import LayerNorm, RMSNorm
from baichuan_audio_jax.layers.params import buffer
from baichuan_audio_jax.layers.sinusoids import sinusoid_table, timestep_embedding
from baichuan_audio_jax.layers.stack import run_stack, stacked
from baichuan_audio_jax.layers.transformer import WhisperLayer, run_layers, zero_padding


def _kw(cfg: ModelConfig, rngs: nnx.Rngs) -> dict:
    return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


# ----------------------------------------------------------------------------- prenet

def prenet_output_lengths(lengths: jax.Array, ratio: float) -> jax.Array:
    """int(float32(length) · ratio), the reference's target mel lengths."""
    return (jnp.asarray(lengths).astype(jnp.float32) * jnp.float32(ratio)).astype(jnp.int32)


def nearest_resize_indices(t_in: int, t_out: int) -> np.ndarray:
    """Source frame of each output frame under PyTorch's legacy nearest interpolation:
    min(floor(dst · float32(t_in / t_out)), t_in − 1)."""
    scale = np.float32(t_in) / np.float32(t_out)
    return np.minimum(np.floor(np.arange(t_out, dtype=np.float32) * scale).astype(np.int64), t_in - 1)


class FlowMatchingPrenet(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        fm = cfg.flow_matching
        kw = _kw(cfg, rngs)
        self.cfg = cfg
        d = fm.prenet_d_model
        if d % fm.prenet_attention_heads:
            raise ValueError(f"prenet_d_model {d} is not a multiple of prenet_attention_heads "
                             f"{fm.prenet_attention_heads}")
        # in_mlp: Linear(in, 4·d) -> SiLU -> Linear(4·d, d)
        self.in_fc1 = Dense(fm.prenet_in_dim, 4 * d, in_axis="embed", out_axes="mlp", **kw)
        self.in_fc2 = Dense(4 * d, d, in_axis="mlp", out_axes="embed", **kw)
        # Present in the reference state (a persistent buffer) but never added to the input.
        self.positional_embedding = buffer(sinusoid_table(fm.prenet_max_source_positions, d), (None, "embed"))
        self.layers = stacked(lambda r: WhisperLayer(d, fm.prenet_attention_heads, fm.prenet_ffn_dim,
                                                     norm="rmsnorm", eps=fm.rms_norm_eps, **{**kw, "rngs": r}),
                              fm.prenet_nlayers, rngs)
        self.final_norm = RMSNorm(d, eps=fm.rms_norm_eps, **kw)
        self.out_proj = Dense(d, fm.prenet_out_dim, in_axis="embed", out_axes=None, use_bias=False, **kw)

    def output_frames(self, t: int) -> int:
        """Padded output length for a padded input of ``t`` frames."""
        ratio = self.cfg.flow_matching.prenet_target_mel_length_scale_ratio
        return t if ratio == 1.0 else int(np.float32(t) * np.float32(ratio))

    def __call__(self, hidden: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """hidden [B, T, in_dim] (zero past ``lengths``; T = max length as the reference slices) ->
        (µ [B, T', out_dim] with exact zeros past the new lengths, new lengths)."""
        fm = self.cfg.flow_matching
        ratio = fm.prenet_target_mel_length_scale_ratio
        out_lengths = prenet_output_lengths(lengths, ratio)
        x = hidden.astype(jnp.dtype(self.cfg.dtype))
        if ratio != 1.0:
            x = x[:, nearest_resize_indices(x.shape[1], self.output_frames(x.shape[1]))]
        x = self.in_fc2(jax.nn.silu(self.in_fc1(x)))
        x = run_layers(self.layers, x, out_lengths, causal=True, scan=self.cfg.scan_layers,
                       remat_policy=self.cfg.remat_policy)
        x = self.final_norm(zero_padding(x, out_lengths))
        return self.out_proj(x), out_lengths


# ----------------------------------------------------------------------------- U-Net estimator

class CausalConv1d(Conv1d):
    """Conv1d with ``k − 1`` zeros on the left only (stride 1): frame t sees frames ≤ t."""
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **kw):
        super().__init__(in_channels, out_channels, kernel_size, padding=(kernel_size - 1, 0), **kw)


class CausalBlock(nnx.Module):
    """Mish(LayerNorm_channels(CausalConv_k3(x ⊙ mask))) ⊙ mask."""

    def __init__(self, in_channels: int, out_channels: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv = CausalConv1d(in_channels, out_channels, 3, **kw)
        self.norm = LayerNorm(out_channels, eps=eps, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return mish(self.norm(self.conv(x * mask))) * mask


class ResnetBlock(nnx.Module):
    """h = block1(x); h += Linear(Mish(temb)); h = block2(h); out = h + res_conv(x ⊙ mask)."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, *, eps: float, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.block1 = CausalBlock(in_channels, out_channels, eps=eps, **kw)
        self.time_proj = Dense(time_dim, out_channels, in_axis="mlp", out_axes="embed", **kw)
        self.block2 = CausalBlock(out_channels, out_channels, eps=eps, **kw)
        self.res_conv = Conv1d(in_channels, out_channels, 1, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array, temb: jax.Array) -> jax.Array:
        h = self.block1(x, mask)
        h = h + self.time_proj(mish(temb))[:, None, :]
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


def _transformer_stack(fm: FlowMatchingConfig, kw: dict, rngs: nnx.Rngs) -> nnx.Module:
    c = fm.channels[0]
    return stacked(lambda r: WhisperLayer(
        c, fm.num_heads, fm.ffn_multiplier * c, norm="layernorm", eps=fm.layer_norm_eps,
        head_dim=fm.attention_head_dim, qkv_bias=(False, False, False), clamp_overflow=False,
        **{**kw, "rngs": r}), fm.n_blocks, rngs)


class UNetStage(nnx.Module):
    """ResNet block, ``n_blocks`` transformer blocks and (down/up stages) a causal conv."""

    def __init__(self, cfg: ModelConfig, in_channels: int, *, with_conv: bool, rngs: nnx.Rngs):
        fm = cfg.flow_matching
        kw = _kw(cfg, rngs)
        c = fm.channels[0]
        self.resnet = ResnetBlock(in_channels, c, fm.time_embed_dim, eps=fm.layer_norm_eps, **kw)
        self.transformers = _transformer_stack(fm, kw, rngs)
        self.conv = CausalConv1d(c, c, 3, **kw) if with_conv else None


class TimeMLP(nnx.Module):
    """linear_2(SiLU(linear_1(e))) on the sinusoidal embedding e of scale·t."""

    def __init__(self, in_dim: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_1 = Dense(in_dim, dim, in_axis=None, out_axes="mlp", **kw)
        self.linear_2 = Dense(dim, dim, in_axis="mlp", out_axes="mlp", **kw)

    def __call__(self, e: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(e)))


def unet_attention_mask(mask: jax.Array, chunk_size: int) -> jax.Array:
    """[B, T, T]: key j visible to query i iff key j is valid and j < (⌊i/c⌋ + 1)·c."""
    t = mask.shape[1]
    return key_padding_mask(mask.astype(bool), t) & chunk_mask(t, chunk_size)


class ConditionalUNet(nnx.Module):
    """The velocity estimator f(x, mask, µ, t) (reference ``ConditionalDecoder``, §4.7)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        fm = cfg.flow_matching
        if len(fm.channels) != 1:
            raise ValueError(f"flow_matching.channels = {list(fm.channels)}: only the single-resolution U-Net "
                             "of the released model is implemented")
        if fm.spk_emb_dim:
            raise ValueError("flow_matching.spk_emb_dim > 0 (speaker conditioning) is not implemented")
        kw = _kw(cfg, rngs)
        self.cfg = cfg
        c = fm.channels[0]
        cin = fm.estimator_in_channels
        self.time_mlp = TimeMLP(cin, fm.time_embed_dim, **kw)
        self.down = UNetStage(cfg, cin, with_conv=True, rngs=rngs)
        self.mid = stacked(lambda r: UNetStage(cfg, c, with_conv=False, rngs=r), fm.num_mid_blocks, rngs)
        self.up = UNetStage(cfg, 2 * c, with_conv=True, rngs=rngs)
        self.final_block = CausalBlock(c, c, eps=fm.layer_norm_eps, **kw)
        self.final_proj = Conv1d(c, fm.in_channels, 1, **kw)

    def time_embedding(self, t: jax.Array) -> jax.Array:
        """[1 or B, time_embed_dim] from a scalar or per-row t (scale·t taken in t's dtype first)."""
        fm = self.cfg.flow_matching
        t = jnp.atleast_1d(jnp.asarray(t, jnp.dtype(self.cfg.dtype)))
        e = timestep_embedding(t, fm.estimator_in_channels, fm.time_embed_scale).astype(t.dtype)
        return self.time_mlp(e)

    def _run_stage(self, stage: UNetStage, h, maskf, attn_mask, temb):
        h = stage.resnet(h, maskf, temb)
        h, _ = run_stack(stage.transformers, h, lambda layer, x, _: (layer(x, attn_mask), None),
                         scan=self.cfg.scan_layers, remat_policy=self.cfg.remat_policy)
        return h

    def __call__(self, x: jax.Array, mask: jax.Array, mu: jax.Array, t: jax.Array) -> jax.Array:
        """x, µ [B, T, in_channels]; mask [B, T] (1/True on valid frames); t scalar or [B].
        Returns the velocity [B, T, in_channels], zero on padded frames."""
        dtype = jnp.dtype(self.cfg.dtype)
        maskf = mask.astype(dtype)[..., None]
        attn_mask = unet_attention_mask(mask, self.cfg.flow_matching.static_chunk_size)
        temb = self.time_embedding(t)
        h = jnp.concatenate([x.astype(dtype), mu.astype(dtype)], axis=-1)
        h = self._run_stage(self.down, h, maskf, attn_mask, temb)
        skip = h
        h = self.down.conv(h * maskf)

        def mid_block(stage, carry, _):
            return self._run_stage(stage, carry, maskf, attn_mask, temb), None

        h, _ = run_stack(self.mid, h, mid_block, scan=self.cfg.scan_layers, remat_policy=self.cfg.remat_policy)
        h = jnp.concatenate([h[:, :skip.shape[1]], skip], axis=-1)
        h = self._run_stage(self.up, h, maskf, attn_mask, temb)
        h = self.up.conv(h * maskf)
        h = self.final_block(h, maskf)
        return self.final_proj(h * maskf) * maskf


# ----------------------------------------------------------------------------- CFM sampler

def _f32(x) -> np.ndarray:
    """Round float64 values to float32 (exact float32 arithmetic for sums/products of float32s)."""
    return np.asarray(x, np.float64).astype(np.float32)


def time_grid(n_steps: int, scheduler: str = "cosine", dtype="float32") -> np.ndarray:
    """The reference's t_span, [n_steps + 1]: torch ``linspace(0, 1, n + 1)`` in float32, for the
    cosine schedule 1 − cos(t·0.5·π) (each operation rounded to float32; cos correctly rounded,
    which is what PyTorch's float32 kernel returns on these points), then cast to ``dtype``."""
    if n_steps < 1:
        raise ValueError(f"the sampler needs at least one step, got {n_steps}")
    if scheduler not in ("cosine", "linear"):
        raise ValueError(f"unknown t_scheduler {scheduler!r} (cosine or linear)")
    steps = n_steps + 1
    step = np.float64(_f32(1.0 / n_steps))
    half = steps // 2  # torch fills the first half from 0 and the second half back from 1
    grid = np.array([_f32(step * i) if i < half else _f32(1.0 - np.float64(_f32(step * (steps - i - 1))))
                     for i in range(steps)], np.float32)
    if scheduler == "cosine":
        arg = _f32(np.float64(_f32(grid * np.float64(0.5))) * np.float64(np.float32(np.pi)))
        grid = _f32(1.0 - np.float64(_f32(np.cos(arg.astype(np.float64)))))
    return grid.astype(jnp.dtype(dtype))


class EulerSchedule(NamedTuple):
    """Per-step estimator time and step size, as the reference accumulates them."""

    t: np.ndarray  # [n] time passed to the estimator at each step
    dt: np.ndarray  # [n] Euler step size


def euler_schedule(n_steps: int, scheduler: str = "cosine", dtype="float32") -> EulerSchedule:
    """t ← τ₀, Δ ← τ₁ − τ₀; per step: use (t, Δ); t ← t + Δ; Δ ← τ_{k+1} − t (t accumulated in
    ``dtype``, not re-read from the grid)."""
    grid = time_grid(n_steps, scheduler, dtype)
    dtype = grid.dtype
    ts, dts = [], []
    t = grid[0]
    d = (grid[1].astype(np.float32) - t.astype(np.float32)).astype(dtype)
    for k in range(1, n_steps + 1):
        ts.append(t)
        dts.append(d)
        t = (np.float32(t) + np.float32(d)).astype(dtype)
        if k < n_steps:
            d = (np.float32(grid[k + 1]) - np.float32(t)).astype(dtype)
    return EulerSchedule(np.array(ts, dtype), np.array(dts, dtype))


def guidance_weights(cfg_rate: float, dtype="float32") -> np.ndarray:
    """[(1 + r), r] rounded once to ``dtype`` (the reference evaluates 1 + r in double precision)."""
    return np.array([1.0 + cfg_rate, cfg_rate], np.float64).astype(np.float32).astype(jnp.dtype(dtype))


class Trajectory(NamedTuple):
    mel: jax.Array  # [B, T, 80] x after the last step
    xs: jax.Array | None  # [n, B, T, 80] x entering each step (when asked for)


class FlowMatchingDecoder(nnx.Module):
    """Prenet + U-Net estimator; hidden states before dconv2 -> mel at 50 Hz (reference
    ``OmniAudioFlowMatchingDecoder``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.prenet = FlowMatchingPrenet(cfg, rngs=rngs)
        self.estimator = ConditionalUNet(cfg, rngs=rngs)

    def guided_velocity(self, x: jax.Array, mask: jax.Array, mu: jax.Array, t: jax.Array,
                        weights: jax.Array) -> jax.Array:
        """w₀·f(x, µ) − w₁·f(x, 0). With ``flow_matching.batched_guidance`` one estimator call on
        the stacked [cond; uncond] batch (the estimator has no cross-row computation, so this equals
        two calls up to float32 rounding of differently shaped matmuls); otherwise the reference's
        two calls, conditional first."""
        if not self.cfg.flow_matching.batched_guidance:
            v_cond = self.estimator(x, mask, mu, t)
            v_uncond = self.estimator(x, mask, jnp.zeros_like(mu), t)
            return weights[0] * v_cond - weights[1] * v_uncond
        b = x.shape[0]
        v = self.estimator(jnp.concatenate([x, x]), jnp.concatenate([mask, mask]),
                           jnp.concatenate([mu, jnp.zeros_like(mu)]), t)
        return weights[0] * v[:b] - weights[1] * v[b:]

    def sample(self, mu: jax.Array, mask: jax.Array, noise: jax.Array, t: jax.Array, dt: jax.Array,
               weights: jax.Array, return_trajectory: bool = False) -> Trajectory:
        """Euler integration from x = noise over the schedule (``t``, ``dt`` from
        :func:`euler_schedule`, ``weights`` from :func:`guidance_weights`) as one ``lax.scan``.
        Padded frames keep the noise (the velocity is zero there)."""
        dtype = jnp.dtype(self.cfg.dtype)
        mu = mu.astype(dtype)

        def step(x, inp):
            tk, dk = inp
            v = self.guided_velocity(x, mask, mu, tk, weights.astype(dtype))
            return x + dk * v, (x if return_trajectory else None)

        x, xs = jax.lax.scan(step, noise.astype(dtype), (t.astype(dtype), dt.astype(dtype)))
        return Trajectory(x, xs)

    def __call__(self, hidden: jax.Array, lengths: jax.Array, noise: jax.Array, t: jax.Array, dt: jax.Array,
                 weights: jax.Array) -> tuple[jax.Array, jax.Array]:
        """hidden [B, T, d], lengths [B], noise [B, T', 80] -> (mel [B, T', 80], mel lengths).
        Frames past a length hold the raw noise, as in the reference (slice them off)."""
        mu, mel_lengths = self.prenet(hidden, lengths)
        mask = length_mask(mel_lengths, mu.shape[1])
        return self.sample(mu, mask, noise, t, dt, weights).mel, mel_lengths

    def loss(self, hidden: jax.Array, lengths: jax.Array, target: jax.Array, key: jax.Array) -> jax.Array:
        """OT-CFM loss on the target mel ``[B, T', 80]`` given the decoder hidden states."""
        mu, mel_lengths = self.prenet(hidden, lengths)
        mask = length_mask(mel_lengths, mu.shape[1])
        return cfm_loss(self.estimator, target, mask, mu, key, sigma_min=self.cfg.flow_matching.sigma_min,
                        cfg_dropout=self.cfg.flow_matching.training_cfg_rate,
                        scheduler=self.cfg.flow_matching.t_scheduler)


def cfm_loss(estimator: ConditionalUNet, x1: jax.Array, mask: jax.Array, mu: jax.Array, key: jax.Array, *,
             sigma_min: float, cfg_dropout: float, scheduler: str = "cosine",
             denominator: jax.Array | None = None) -> jax.Array:
    """The reference's OT-CFM training loss (§4.8, defined there but not called at inference).

    Per sample t ~ U(0, 1) (cosine schedule: t = 1 − cos(t·π/2)), z ~ N(0, I);
    y = (1 − (1 − σ)t)·z + t·x₁, target u = x₁ − (1 − σ)·z; µ is zeroed for a sample with
    probability ``cfg_dropout`` (classifier-free-guidance training); the loss is
    Σ((f(y, mask, µ, t) − u)² ⊙ mask) / (Σ mask · channels), in float32. A ``denominator``
    replaces Σ mask · channels (training normalises by the whole global batch, so microbatches add
    up to the batch's loss).
    """
    b, _, c = x1.shape
    k_t, k_z, k_drop = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (b,), jnp.float32)
    if scheduler == "cosine":
        t = 1.0 - jnp.cos(t * 0.5 * math.pi)
    z = jax.random.normal(k_z, x1.shape, jnp.float32)
    x1 = x1.astype(jnp.float32)
    tb = t[:, None, None]
    y = (1.0 - (1.0 - sigma_min) * tb) * z + tb * x1
    u = x1 - (1.0 - sigma_min) * z
    if cfg_dropout > 0:
        keep = jax.random.uniform(k_drop, (b,)) > cfg_dropout
        mu = mu * keep[:, None, None].astype(mu.dtype)
    maskf = mask.astype(jnp.float32)[..., None]
    pred = estimator(y, mask, mu, t).astype(jnp.float32)
    if denominator is None:
        denominator = jnp.sum(maskf) * c
    return jnp.sum(jnp.square(pred - u) * maskf) / denominator
