"""Real-time factor on CPU of the CFM mel decoder and the HiFT vocoder.

RTF = wall-clock seconds of compute / seconds of audio produced (lower is better; < 1 is faster
than real time). Each configuration is timed for

* the package's path: the CFM decoder as one compiled program (prenet + a ``lax.scan`` over the
  Euler steps, conditional and unconditional estimator calls batched into one), the vocoder as
  one compiled program; against
* a same-run baseline: the CFM loop as the reference runs it (a Python loop over steps with two
  separate estimator calls per step, each call compiled), and the vocoder executed op by op
  without ``jit``. The vocoder's source randomness is drawn beforehand for both sides.

Both sides use the same modules and weights; compilation is excluded (one warm-up run); runs of
the two sides are interleaved and the median of ``--repeats`` is reported. Achieved GFLOP/s (XLA's
FLOP count) is compared with a float32 matmul measured in the same run: at the released widths
the CFM decoder is compute bound on CPU, so its RTF there is set by the hardware. Sizes: the
tiny config (``configs/tiny.py``) and the released widths (U-Net 256 channels × 4 blocks × 12 mid
blocks, prenet 12 × 512; vocoder 512 base channels).

    python benchmarks/decoder_rtf.py [--seconds 5] [--repeats 3] [--sizes tiny,real]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from baichuan_audio_jax.config import ModelConfig, VocoderConfig, load_config  # noqa: E402
from baichuan_audio_jax.inference.waveform import hidden_to_mel, mel_to_wave  # noqa: E402
from baichuan_audio_jax.layers.attention import length_mask  # noqa: E402
from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder, euler_schedule, guidance_weights  # noqa: E402
from baichuan_audio_jax.models.hift import HiFTGenerator  # noqa: E402
from baichuan_audio_jax.models.pure import init_model, pure  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = "python benchmarks/decoder_rtf.py"


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds per function, runs interleaved so both sides see the same machine load."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # warm-up / compilation
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def matmul_peak(repeats: int) -> float:
    """float32 GFLOP/s of a 2048³ matmul, measured in this run (the machine's practical ceiling)."""
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    mm = jax.jit(lambda x: x @ x)
    t = _interleaved({"mm": lambda: mm(a)}, max(repeats, 3))["mm"]
    return 2 * 2048 ** 3 / t / 1e9


def configs(size: str) -> ModelConfig:
    tiny = ModelConfig.from_config(load_config(os.path.join(REPO, "configs", "tiny.py")).model)
    if size == "tiny":
        return tiny
    # Released flow-matching and vocoder widths; the audio decoder width feeding the prenet is 1280.
    return dataclasses.replace(tiny, flow_matching=dataclasses.replace(ModelConfig().flow_matching),
                               vocoder=VocoderConfig())


def bench_cfm(cfg: ModelConfig, frames: int, repeats: int) -> tuple[float, float, float]:
    """(ours s, baseline s, FLOPs of one run)."""
    fm = cfg.flow_matching
    decoder = init_model(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(0)))
    key = jax.random.key(0)
    hidden = jax.random.normal(key, (1, frames, fm.prenet_in_dim))
    lengths = jnp.asarray([frames])

    # Baseline: the reference's loop, two separate (compiled) estimator calls per Euler step.
    prenet, prenet_state = pure(decoder.prenet)
    prenet = jax.jit(prenet)
    estimator, est_state = pure(decoder.estimator)
    estimator = jax.jit(estimator)
    schedule = euler_schedule(fm.diffusion_steps, fm.t_scheduler)
    w_cond, w_uncond = (float(w) for w in guidance_weights(fm.inference_cfg_rate))

    def reference_loop():
        mu, mel_len = prenet(prenet_state, hidden, lengths)
        mask = length_mask(mel_len, mu.shape[1])
        x = jax.random.normal(key, mu.shape)
        zeros = jnp.zeros_like(mu)
        for t, dt in zip(schedule.t, schedule.dt):
            v_c = estimator(est_state, x, mask, mu, t)
            v_u = estimator(est_state, x, mask, zeros, t)
            x = x + dt * (w_cond * v_c - w_uncond * v_u)
        return x

    t = _interleaved({"ours": lambda: hidden_to_mel(decoder, hidden, lengths, key=key)[0],
                      "baseline": reference_loop}, repeats)
    # FLOPs from XLA's cost model on an unrolled copy (loops would be counted once).
    unrolled = nnx.merge(nnx.split(nnx.eval_shape(lambda: FlowMatchingDecoder(
        dataclasses.replace(cfg, scan_layers=False), rngs=nnx.Rngs(0))))[0], nnx.state(decoder))
    mu = jnp.zeros((1, frames, fm.in_channels))
    mask = jnp.ones((1, frames), bool)
    flops = _flops(pure(unrolled.prenet)[0], nnx.state(unrolled.prenet), hidden, lengths)
    flops += fm.diffusion_steps * _flops(pure(unrolled, "guided_velocity")[0], nnx.state(unrolled), mu, mask, mu,
                                         jnp.float32(0.5), jnp.asarray(guidance_weights(0.7)))
    return t["ours"], t["baseline"], flops


def bench_vocoder(cfg: VocoderConfig, frames: int, repeats: int) -> tuple[float, float, float]:
    vocoder = init_model(lambda: HiFTGenerator(cfg, rngs=nnx.Rngs(0)))
    key = jax.random.key(1)
    mel = jax.random.normal(key, (1, frames, cfg.in_channels)) * 2.0 - 5.0
    # Both sides get the same pre-drawn source randomness (drawing 9 x 480·T normals is not the
    # vocoder's work; with threefry keys on CPU it costs about as much as the tiny vocoder).
    phase, noise = vocoder.source_randomness(key, 1, frames)
    t = _interleaved({"ours": lambda: mel_to_wave(vocoder, mel, phase_u01=phase, noise=noise)[0],
                      "baseline": lambda: vocoder(mel, phase, noise)[0]}, repeats)  # baseline: op by op
    flops = _flops(pure(vocoder)[0], nnx.state(vocoder), mel, phase, noise)
    return t["ours"], t["baseline"], flops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="audio length per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="tiny,real")
    args = p.parse_args(argv)
    frames = int(args.seconds * 50)
    audio_seconds = frames / 50
    cmd = f"{COMMAND} --seconds {args.seconds:g} --repeats {args.repeats} --sizes {args.sizes}"
    peak = matmul_peak(args.repeats)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s); {frames} mel frames "
          f"= {audio_seconds:g} s of 24 kHz audio per run; same-run float32 matmul peak {peak:.0f} GFLOP/s")
    rows = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        cfg = configs(size)
        for name, fn, arg, base_name in (
                ("CFM decoder (prenet + 10 Euler steps, CFG)", bench_cfm, cfg, "2 estimator calls/step, Python loop"),
                ("HiFT vocoder", bench_vocoder, cfg.vocoder, "op by op, no jit")):
            ours, base, flops = fn(arg, frames, args.repeats)
            r_ours, r_base = ours / audio_seconds, base / audio_seconds
            gflops = flops / ours / 1e9
            print(f"{size:5s} {name:44s} RTF {r_ours:8.4f}   baseline ({base_name}) RTF {r_base:8.4f}   "
                  f"speed-up {base / ours:5.2f}x   {flops / 1e9:7.1f} GFLOP/run = {gflops:6.1f} GFLOP/s "
                  f"({100 * gflops / peak:.0f}% of peak)")
            rows.append(f"| {name}, {size} widths | {r_ours:.3f} | {r_base:.3f} ({base_name}) | "
                        f"{base / ours:.2f}x | {100 * gflops / peak:.0f}% | `{cmd}` |")
    print("\nREADME rows (component | RTF | baseline RTF | speed-up | % of matmul peak | command):")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
