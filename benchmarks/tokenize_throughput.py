"""Tokenize throughput on CPU: audio seconds encoded per wall-clock second.

Tokenizes the same synthetic corpus (48 kHz WAV files of 1–12 s, every one a different length)
two ways, in the same run, and prints both rates and their ratio:

* **baseline** — the straightforward approach: one file at a time, each chunk jitted at its own
  exact length (batch 1), so every new length compiles a new program;
* **runtime** — what ``baichuan-audio tokenize FILES...`` does (``tokenize_files``): files read
  and resampled on a thread pool one step ahead, their chunks encoded with
  ``AudioTokenizerRuntime.encode_batch`` (sorted, batched, padded to a few bucket lengths: one
  compilation per bucket). Reported cold (compilations included, like the baseline) and warm
  (a second pass: the steady state of a long job).

Both include reading, resampling to 16 kHz and the log-mel front end. Run from the repository
root::

    python benchmarks/tokenize_throughput.py                   # tiny and small configs
    python benchmarks/tokenize_throughput.py --configs tiny --files 8

Each config ends with a line for the README benchmark table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from baichuan_audio_jax.config import ModelConfig, load_config  # noqa: E402
from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime  # noqa: E402
from baichuan_audio_jax.inference.tokenize_corpus import tokenize_files  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = os.path.join(REPO, "configs", "tiny.py")
# "small": a mid-size encoder (d 512, 6 layers) with the real 30 s chunks, on the tiny config's file.
CONFIGS = {
    "tiny": [],
    "small": ["model.audio_encoder.d_model=512", "model.audio_encoder.num_layers=6", "model.audio_encoder.num_heads=8",
              "model.audio_encoder.ffn_dim=2048", "model.audio_encoder.max_audio_seconds=30",
              "model.audio_encoder.max_source_positions=1500", "model.vq_bridge.d_model=512",
              "model.audio_decoder.d_model=512", "model.audio_decoder.num_heads=8",
              "model.audio_decoder.ffn_dim=1024"],
}


SOURCE_RATE = 48000


def corpus(directory: str, files: int, seed: int) -> tuple[list[str], float]:
    """Speech-like 48 kHz WAV files (a wandering tone plus noise under a syllable-rate envelope)
    of 1–12 s; returns their paths and total duration."""
    rng = np.random.default_rng(seed)
    paths, seconds = [], 0.0
    for i in range(files):
        n = int(rng.integers(SOURCE_RATE, 12 * SOURCE_RATE))
        t = np.arange(n) / SOURCE_RATE
        carrier = np.sin(2 * np.pi * (150 + 40 * np.sin(2 * np.pi * 0.7 * t)) * t)
        envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)))
        wav = 0.2 * envelope * (carrier + 0.3 * rng.standard_normal(n))
        path = os.path.join(directory, f"utt{i:03d}.wav")
        sf.write(path, wav.astype(np.float32), SOURCE_RATE, subtype="PCM_16")
        paths.append(path)
        seconds += n / SOURCE_RATE
    return paths, seconds


def baseline(rt: AudioTokenizerRuntime, paths: list[str]) -> float:
    encode = jax.jit(lambda s, f, n: rt._encode(s, f, n))  # a fresh cache: compiles per shape
    t0 = time.perf_counter()
    for p in paths:
        for feats in rt.features(rt.load_waveform(p)):
            codes, n = encode(rt.state, jnp.asarray(feats[None]), jnp.asarray([feats.shape[0]], jnp.int32))
            np.asarray(codes)
    return time.perf_counter() - t0


def runtime_pass(rt: AudioTokenizerRuntime, paths: list[str], files_per_step: int, out_dir: str) -> float:
    """What ``tokenize FILES...`` does (threaded loading one step ahead, batched encoding)."""
    t0 = time.perf_counter()
    tokenize_files(rt, paths, out_dir, files_per_step=files_per_step)
    return time.perf_counter() - t0


def bench(name: str, overrides: list[str], files: int, seed: int, batch_size: int, directory: str) -> str:
    cfg = ModelConfig.from_config(load_config(TINY, overrides).model)
    rt = AudioTokenizerRuntime.random(cfg, seed=0, batch_size=batch_size)
    paths, audio = corpus(directory, files, seed)
    rt.features(rt.load_waveform(paths[0]))  # first-call costs of the front end's libraries
    t0 = time.perf_counter()
    for p in paths:
        rt.features(rt.load_waveform(p))
    frontend = time.perf_counter() - t0
    base = baseline(rt, paths)
    out = os.path.join(directory, f"codes-{name}")
    cold = runtime_pass(rt, paths, 16, out)
    warm = runtime_pass(rt, paths, 16, out)
    buckets = len({s for s in rt.compiled_shapes if s[0] == "encode"})
    rate = lambda s: audio / s
    print(f"[{name}] d_model {cfg.audio_encoder.d_model}, {cfg.audio_encoder.num_layers} layers, "
          f"{cfg.audio_encoder.max_audio_seconds:g} s chunks; {files} files, {audio:.1f} s of audio "
          f"(reading + resampling + log-mel alone: {rate(frontend):.0f} audio-s/s)")
    print(f"  baseline (per file, exact shapes, {files}+ compiles): {rate(base):8.1f} audio-s/s")
    print(f"  runtime cold ({buckets} bucket compiles, batch {batch_size}):   {rate(cold):8.1f} audio-s/s  "
          f"ratio {base / cold:.2f}x")
    print(f"  runtime warm:                                  {rate(warm):8.1f} audio-s/s  ratio {base / warm:.2f}x")
    return (f"| tokenize throughput, {name} config, CPU ({files} files, {audio:.0f} s) | {rate(warm):.1f} audio-s/s "
            f"warm, {rate(cold):.1f} cold | {rate(base):.1f} audio-s/s (per file, recompiling per length) | "
            f"{base / warm:.1f}x warm, {base / cold:.1f}x cold | `python benchmarks/tokenize_throughput.py` |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,small", help=f"comma-separated, from {sorted(CONFIGS)}")
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        lines = [bench(c, CONFIGS[c], args.files, args.seed, args.batch_size, d) for c in args.configs.split(",")]
    print("\nREADME rows:")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
