"""Train-step throughput: tokens/s and model FLOPs utilisation of the measured matmul peak.

    python benchmarks/train_step.py [--config configs/tiny.py] [--steps 10] [--config.k=v ...]

First measures the peak of this machine in the same run (median time of a float32 2048³ matmul
under ``jax.jit``), then compiles the real train step of the config (synthetic batches, one
mesh over the visible devices) and times ``--steps`` steps after two warm-up steps.
Utilisation = model FLOPs of a step (``Task.flops_per_step``: forward + backward, no remat
recompute) / step time / measured matmul FLOP/s. Prints a line for the README benchmark table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a jitted float32 n×n×n matmul (median of ``repeats``)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.py"))
    p.add_argument("--steps", type=int, default=10)
    known, rest = p.parse_known_args(argv)

    import jax

    from baichuan_audio_jax.config import load_config
    from baichuan_audio_jax.training.data_sources import build_iterator
    from baichuan_audio_jax.training.mesh import describe, mesh_from_config
    from baichuan_audio_jax.training.train_step import build_program

    config = load_config(known.config, rest)
    peak = matmul_peak()
    print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({jax.devices()[0].device_kind})")

    mesh = mesh_from_config(config.mesh)
    program = build_program(config, mesh)
    state = program.init()
    it = build_iterator(config)
    batches = [{k: jax.device_put(v, program.batch_shardings[k]) for k, v in next(it).items()}
               for _ in range(known.steps + 2)]
    t0 = time.perf_counter()
    for b in batches[:2]:
        state, metrics = program.step(state, b)
    jax.block_until_ready(metrics)
    print(f"compile + 2 warm-up steps: {time.perf_counter() - t0:.1f} s")
    tokens = sum(program.task.tokens(jax.device_get(b)) for b in batches[2:])
    t0 = time.perf_counter()
    for b in batches[2:]:
        state, metrics = program.step(state, b)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / known.steps
    achieved = program.flops_per_step / seconds
    tok_s = tokens / known.steps / seconds
    ratio = achieved / peak
    rows, seq = program.rows, program.seq_len
    mc = program.model_cfg
    print(f"train step: {seconds * 1e3:.1f} ms, {tok_s:,.0f} tokens/s, {achieved / 1e9:.1f} GFLOP/s model = "
          f"{100 * ratio:.1f}% of the measured matmul peak (mesh {describe(mesh)})")
    cmd = "python benchmarks/train_step.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    print(f"| train step, {os.path.basename(known.config)} (H={mc.llm.hidden_size}, L={mc.llm.num_layers}), "
          f"B={rows}×S={seq}, {mc.dtype}, stage {config.stage} | {tok_s:,.0f} tokens/s | "
          f"{100 * ratio:.1f}% of measured f32 matmul peak ({peak / 1e9:.0f} GFLOP/s) | `{cmd}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
