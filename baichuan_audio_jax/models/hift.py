"""The 24 kHz HiFT vocoder (CosyVoice2's HiFTGenerator, reference §3.7, §4.9, G9).

mel ``[B, T, 80]`` (natural-log 24 kHz mel, 50 Hz) -> waveform ``[B, 480·T]``:

1. F0 predictor: weight-normed conv + ELU layers, a linear classifier, |·| -> f0 ``[B, T]`` (Hz).
2. Harmonic NSF source: f0 repeated to the sample rate; per harmonic h = 1..H+1 the phase
   2π·((Σ h·f0/sr) mod 1) plus a random initial phase (none for the fundamental), 0.1·sin(·) on
   voiced samples (f0 > threshold), Gaussian noise everywhere, merged by Linear(H+1 -> 1) + tanh.
3. Decoder: STFT of the source (n_fft 16, hop 4) fused at every upsampling stage
   (``source_downs`` + Snake ResBlocks), Snake ResBlocks averaged per stage, LeakyReLU slope
   0.1 between stages but 0.01 before ``conv_post``, magnitude = min(exp(·), 100),
   phase = sin(·), iSTFT, clamp ±0.99.

The vocoder always computes in float32 (the reference runs it in float32 even when the LLM is
bf16). Weight-normed layers keep ``(g, v)`` as parameters (see
:mod:`baichuan_audio_jax.layers.weight_norm`).

**Phase accumulation.** The reference takes a float32 ``cumsum`` over up to 480·T samples; on CPU
PyTorch accumulates it in float64, so each prefix sum is the exact sum rounded once to float32. A
float32 running sum (or XLA's parallel scan) drifts by ~1e-3 over a few thousand samples, which
at a phase of 2π·(·) is far outside the parity tolerance. :func:`harmonic_phase` reproduces the
once-rounded prefix sums in float32 arithmetic only (so it runs unchanged under ``jit`` on
CPU/GPU/TPU without float64): the upsampled f0 is constant within a frame, so the prefix sum at
sample r of frame j is E_j + (r+1)·v_j with E_j the sum of whole frames. v_j is split exactly
into two 12-bit halves (bit masking), which makes every product by r+1 ≤ 4096 exact; E_j is an
``associative_scan`` in double-float (hi, lo) arithmetic built from error-free TwoSum steps; the
final sum is rounded once. The result equals the float64 reference except at exact rounding ties
of relative size ~2⁻⁴⁸ (tested bit for bit over 96,000 samples). This relies on IEEE float32
additions that XLA does not reassociate, and on a true division for the increments (XLA would
otherwise multiply by the rounded reciprocal of the sample rate; an optimisation barrier prevents
it). TPUs compute float32 division through a reciprocal, so there an increment may differ from
the reference in its last bit; the accumulation itself stays exact.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.config import VocoderConfig
from baichuan_audio_jax.layers.activations import Snake
from baichuan_audio_jax.layers.conv import Conv1d
from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.layers.weight_norm import WeightNormConv1d, WeightNormConvTranspose1d

_F32 = jnp.float32


# ----------------------------------------------------------------------------- STFT / iSTFT

def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (scipy ``get_window('hann', n, fftbins=True)``) as float32."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def frame_signal(x: jax.Array, frame_length: int, hop: int) -> jax.Array:
    """[..., L] -> [..., F, frame_length] with F = 1 + (L − frame_length) // hop."""
    n = 1 + (x.shape[-1] - frame_length) // hop
    if n < 1:
        raise ValueError(f"signal of {x.shape[-1]} samples is shorter than one frame ({frame_length})")
    idx = np.arange(n)[:, None] * hop + np.arange(frame_length)[None, :]
    return x[..., idx]


def stft(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """Centred STFT (reflect padding n_fft/2, periodic Hann of n_fft, one-sided), as
    ``torch.stft(center=True)``: [B, L] -> complex [B, L // hop + 1, n_fft // 2 + 1]."""
    pad = n_fft // 2
    x = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    return jnp.fft.rfft(frame_signal(x, n_fft, hop) * hann_window(n_fft), axis=-1)


def overlap_add(frames: jax.Array, hop: int) -> jax.Array:
    """[B, F, n] frames -> [B, n + hop·(F − 1)] sum, for n a multiple of hop."""
    b, f, n = frames.shape
    if n % hop:
        raise ValueError(f"overlap-add needs the frame length ({n}) to be a multiple of the hop ({hop})")
    r = n // hop
    parts = frames.reshape(b, f, r, hop)
    out = jnp.zeros((b, f + r - 1, hop), frames.dtype)
    for c in range(r):
        out = out.at[:, c:c + f].add(parts[:, :, c])
    return out.reshape(b, -1)


def istft(spec: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """Inverse of :func:`stft` (``torch.istft(center=True)``): complex [B, F, n_fft//2+1] ->
    [B, hop·(F − 1)]; windowed overlap-add divided by the summed squared window."""
    window = hann_window(n_fft)
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(_F32) * window
    y = overlap_add(frames, hop)
    f = spec.shape[1]
    env = np.zeros(n_fft + hop * (f - 1), np.float32)
    np.add.at(env, (np.arange(f)[:, None] * hop + np.arange(n_fft)[None, :]).ravel(), np.tile(window * window, f))
    # The first and last samples (window value 0) are cut below; dividing them by 1 instead of 0
    # leaves the result unchanged and keeps the gradient finite (0/0 would poison it with NaN).
    env = np.where(env > 1e-11, env, np.float32(1.0))
    pad = n_fft // 2
    return (y / env)[:, pad:y.shape[1] - pad]


# ----------------------------------------------------------------------------- harmonic source

def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """s + e = a + b exactly, s = fl(a + b) (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split_high_low(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x = hi + lo exactly with hi keeping the top 12 significant bits (mantissa masking)."""
    bits = jax.lax.bitcast_convert_type(x.astype(_F32), jnp.int32)
    hi = jax.lax.bitcast_convert_type(bits & jnp.int32(-4096), _F32)
    return hi, x - hi


def _df_add(a: tuple, b: tuple) -> tuple:
    s, e = _two_sum(a[0], b[0])
    return _two_sum(s, e + (a[1] + b[1]))


def harmonic_phase(f0: jax.Array, num_harmonics: int, hop: int, sample_rate: int) -> jax.Array:
    """(Σ_{m ≤ n} h·f0(m)/sr) mod 1 for h = 1..num_harmonics over f0 repeated ``hop`` times.

    f0 [B, T] -> [B, T·hop, num_harmonics] float32, each prefix sum being the exact sum of the
    float32 increments fl(fl(f0·h)/sr) rounded once to float32 (see the module docstring).
    """
    if hop > 4096:
        raise ValueError(f"hop {hop} > 4096: the exact in-frame products need hop ≤ 2^12")
    b, t = f0.shape
    h = jnp.arange(1, num_harmonics + 1, dtype=_F32)
    fh = f0.astype(_F32)[:, :, None] * h
    # A true division (as the reference): the barrier hides that the divisor is a broadcast
    # constant, which XLA would otherwise replace by a multiplication with its rounded reciprocal.
    sr = jax.lax.optimization_barrier(jnp.full(fh.shape, sample_rate, _F32))
    v = fh / sr  # [B, T, H] per-sample increment
    v_hi, v_lo = _split_high_low(v)
    frame = _two_sum(hop * v_hi, hop * v_lo)  # exact double-float hop·v
    inclusive = jax.lax.associative_scan(_df_add, frame, axis=1)
    zero = jnp.zeros((b, 1, num_harmonics), _F32)
    e_hi = jnp.concatenate([zero, inclusive[0][:, :-1]], axis=1)[:, :, None, :]  # whole frames before j
    e_lo = jnp.concatenate([zero, inclusive[1][:, :-1]], axis=1)[:, :, None, :]
    m = jnp.arange(1, hop + 1, dtype=_F32)[None, None, :, None]
    s1, e1 = _two_sum(e_hi, m * v_hi[:, :, None, :])
    s2, e2 = _two_sum(s1, m * v_lo[:, :, None, :])
    total = s2 + ((e1 + e2) + e_lo)
    return jnp.mod(total, 1.0).reshape(b, t * hop, num_harmonics)


# ----------------------------------------------------------------------------- modules

class F0Predictor(nnx.Module):
    """``condnet``: weight-normed Conv1d(k3, pad 1) + ELU layers; ``classifier``: Linear(C -> 1); |·|."""

    def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs):
        c = cfg.f0_cond_channels
        self.condnet = nnx.List([
            WeightNormConv1d(cfg.in_channels if i == 0 else c, c, 3, padding=1, rngs=rngs)
            for i in range(cfg.f0_num_layers)])
        self.classifier = Dense(c, cfg.f0_num_class, in_axis="conv_out", out_axes=None, rngs=rngs)

    def __call__(self, mel: jax.Array) -> jax.Array:
        """mel [B, T, 80] -> f0 [B, T] (Hz)."""
        x = mel.astype(_F32)
        for conv in self.condnet:
            x = jax.nn.elu(conv(x))
        return jnp.abs(self.classifier(x)[..., 0])


class ResBlock(nnx.Module):
    """Snake ResBlock: for each dilation d: x += conv2(snake2(conv1_d(snake1(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations, *, rngs: nnx.Rngs):
        self.convs1 = nnx.List([
            WeightNormConv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2,
                             rngs=rngs) for d in dilations])
        self.convs2 = nnx.List([
            WeightNormConv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, rngs=rngs)
            for _ in dilations])
        self.activations1 = nnx.List([Snake(channels, rngs=rngs) for _ in dilations])
        self.activations2 = nnx.List([Snake(channels, rngs=rngs) for _ in dilations])

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


class HarmonicSource(nnx.Module):
    """NSF harmonic source merged to one channel (reference ``SourceModuleHnNSF``)."""

    def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.l_linear = Dense(cfg.nb_harmonics + 1, 1, in_axis=None, out_axes=None, rngs=rngs)

    def __call__(self, f0: jax.Array, phase_u01: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
        """f0 [B, T]; phase_u01 [B, H+1] uniform in [0, 1) (the fundamental's entry is unused);
        noise [B, L, H+1] standard normal, L = T·hop. Returns (source [B, L], voiced [B, L])."""
        c = self.cfg
        hop = c.hop_length
        nh = c.nb_harmonics + 1
        frac = harmonic_phase(f0, nh, hop, c.sampling_rate)
        theta = jnp.float32(2 * math.pi) * frac
        low, high = np.float32(-math.pi), np.float32(math.pi)
        phase = jnp.float32(low) + phase_u01.astype(_F32) * jnp.float32(high - low)
        phase = phase.at[:, 0].set(0.0)[:, None, :]
        sine = jnp.float32(c.nsf_alpha) * jnp.sin(theta + phase)
        f0_up = jnp.repeat(f0.astype(_F32), hop, axis=1)[..., None]
        uv = (f0_up > c.nsf_voiced_threshold).astype(_F32)
        amp = uv * jnp.float32(c.nsf_sigma) + (1.0 - uv) * jnp.float32(c.nsf_alpha) / 3.0
        e = sine * uv + amp * noise.astype(_F32)
        return jnp.tanh(self.l_linear(e))[..., 0], uv[..., 0]


class HiFTGenerator(nnx.Module):
    def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.istft_n_fft % cfg.istft_hop_len:
            raise ValueError(f"istft n_fft {cfg.istft_n_fft} must be a multiple of hop {cfg.istft_hop_len}")
        base = cfg.base_channels
        n_up = len(cfg.upsample_rates)
        stft_ch = cfg.istft_n_fft + 2
        self.f0_predictor = F0Predictor(cfg, rngs=rngs)
        self.m_source = HarmonicSource(cfg, rngs=rngs)
        self.conv_pre = WeightNormConv1d(cfg.in_channels, base, 7, padding=3, rngs=rngs)
        self.ups = nnx.List([
            WeightNormConvTranspose1d(base // 2 ** i, base // 2 ** (i + 1), k, stride=u, padding=(k - u) // 2,
                                      rngs=rngs)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))])
        # The source STFT (hop istft_hop_len) is brought to each stage's frame rate.
        down_rates = np.cumprod([1, *cfg.upsample_rates[::-1][:-1]])[::-1]
        downs, source_blocks = [], []
        for i, (u, k, d) in enumerate(zip(down_rates, cfg.source_resblock_kernel_sizes,
                                          cfg.source_resblock_dilation_sizes)):
            ch = base // 2 ** (i + 1)
            u = int(u)
            downs.append(Conv1d(stft_ch, ch, 1, rngs=rngs) if u == 1 else
                         Conv1d(stft_ch, ch, 2 * u, stride=u, padding=u // 2, rngs=rngs))
            source_blocks.append(ResBlock(ch, k, d, rngs=rngs))
        self.source_downs = nnx.List(downs)
        self.source_resblocks = nnx.List(source_blocks)
        self.resblocks = nnx.List([
            ResBlock(base // 2 ** (i + 1), k, d, rngs=rngs)
            for i in range(n_up) for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)])
        self.conv_post = WeightNormConv1d(base // 2 ** n_up, stft_ch, 7, padding=3, rngs=rngs)

    # -- pieces

    def predict_f0(self, mel: jax.Array) -> jax.Array:
        return self.f0_predictor(mel)

    def source(self, f0: jax.Array, phase_u01: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.m_source(f0, phase_u01, noise)

    def decode(self, mel: jax.Array, source: jax.Array) -> tuple[jax.Array, jax.Array]:
        """mel [B, T, 80], source [B, T·hop] -> (waveform [B, T·hop], conv_post output
        [B, T·hop/istft_hop + 1, n_fft + 2])."""
        c = self.cfg
        n_fft, hop = c.istft_n_fft, c.istft_hop_len
        spec = stft(source.astype(_F32), n_fft, hop)
        s_stft = jnp.concatenate([spec.real, spec.imag], axis=-1).astype(_F32)
        x = self.conv_pre(mel.astype(_F32))
        n_up = len(self.ups)
        k = len(c.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(jax.nn.leaky_relu(x, c.lrelu_slope))
            if i == n_up - 1:
                x = jnp.concatenate([x[:, 1:2], x], axis=1)  # reflection pad (1, 0)
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * k](x)
            for j in range(1, k):
                xs = xs + self.resblocks[i * k + j](x)
            x = xs / k
        x = self.conv_post(jax.nn.leaky_relu(x, 0.01))  # PyTorch's default slope here, not lrelu_slope
        half = n_fft // 2 + 1
        magnitude = jnp.minimum(jnp.exp(x[..., :half]), 100.0)
        phase = jnp.sin(x[..., half:])
        wave = istft(jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase)), n_fft, hop)
        return jnp.clip(wave, -c.audio_limit, c.audio_limit), x

    def source_randomness(self, key: jax.Array, batch: int, frames: int) -> tuple[jax.Array, jax.Array]:
        """(phase_u01 [B, H+1], noise [B, T·hop, H+1]) drawn from ``key``."""
        k1, k2 = jax.random.split(key)
        nh = self.cfg.nb_harmonics + 1
        return (jax.random.uniform(k1, (batch, nh), _F32),
                jax.random.normal(k2, (batch, frames * self.cfg.hop_length, nh), _F32))

    def __call__(self, mel: jax.Array, phase_u01: jax.Array | None = None, noise: jax.Array | None = None,
                 key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """mel [B, T, 80] -> (waveform [B, T·hop], f0 [B, T]). The source randomness is given
        (``phase_u01``, ``noise``) or drawn from ``key``."""
        b, t, _ = mel.shape
        if phase_u01 is None or noise is None:
            if key is None:
                raise ValueError("HiFTGenerator needs either phase_u01 and noise, or a PRNG key")
            drawn = self.source_randomness(key, b, t)
            phase_u01 = drawn[0] if phase_u01 is None else phase_u01
            noise = drawn[1] if noise is None else noise
        f0 = self.predict_f0(mel)
        s, _ = self.source(f0, phase_u01, noise)
        wave, _ = self.decode(mel, s)
        return wave, f0
