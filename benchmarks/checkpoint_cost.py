"""Checkpoint cost: step time with asynchronous saves every N steps vs no saves, and the time
the loop is blocked per save.

    python benchmarks/checkpoint_cost.py [--size small|tiny|7b-layer | --config FILE] [--steps 30] \
        [--every 5] [--workdir DIR] [--config.k=v ...]

``--size`` picks one of the shared benchmark models (``benchmarks/sizes.py``; default ``small``);
``--config`` runs a config file instead. Compiles the train step once (synthetic batches, one
mesh over the visible devices), then runs ``--steps`` steps three ways in the same process,
after two warm-up steps each: (a) no checkpoints, (b) an asynchronous save (``checkpoint.async_save``) every ``--every``
steps, (c) a synchronous save every ``--every`` steps. Reports the median step time of (a),
the mean step time of (b) and (c) including their saves, the ratio (b)/(a), and the blocking
time per save (the time ``save()`` holds the loop, plus the final wait for the last commit
spread over the saves). Checkpoints go to a temporary directory unless ``--workdir`` is given
(e.g. a gs:// bucket to measure object-store saves).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument("--config", default="", help="a config file instead of --size")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--workdir", default="")
    known, rest = p.parse_known_args(argv)

    import jax

    from baichuan_audio_jax.config import load_config
    from baichuan_audio_jax.training.checkpointing import Checkpointer
    from baichuan_audio_jax.training.data_sources import build_iterator
    from baichuan_audio_jax.training.mesh import describe, mesh_from_config
    from baichuan_audio_jax.training.train_step import build_program
    from benchmarks.sizes import size_config

    config = load_config(known.config, rest) if known.config else size_config(known.size, rest)
    mesh = mesh_from_config(config.mesh)
    program = build_program(config, mesh)
    state = program.init()
    it = build_iterator(config)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    print(f"{known.config or 'size ' + known.size}: mesh {describe(mesh)}; {n_params:,} parameters; "
          f"train state {state_bytes / 2**20:.1f} MiB")

    def batch():
        host = next(it)
        return {k: jax.device_put(v, program.batch_shardings[k]) for k, v in host.items()}

    def run(mode: str, root: str):
        nonlocal state
        saver = Checkpointer(root, max_to_keep=2, async_save=mode == "async") if mode != "none" else None
        for _ in range(2):
            state, m = program.step(state, batch())
        jax.block_until_ready(m)
        times, blocked, saves = [], 0.0, 0
        t_all = time.perf_counter()
        for i in range(1, known.steps + 1):
            t = time.perf_counter()
            state, m = program.step(state, batch())
            if saver is not None and i % known.every == 0:
                # The step's result first: otherwise save() would also wait for the step's
                # compute (the step is dispatched asynchronously) and count it as blocking.
                jax.block_until_ready(state)
                t_save = time.perf_counter()
                saver.save(int(jax.device_get(state.step)), state, it.get_state())
                blocked += time.perf_counter() - t_save
                saves += 1
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
        if saver is not None:
            t_wait = time.perf_counter()
            saver.close()
            blocked += time.perf_counter() - t_wait
        total = time.perf_counter() - t_all
        return times, total / known.steps, blocked / max(saves, 1), saves

    base = known.workdir or tempfile.mkdtemp(prefix="checkpoint_cost_")
    none_times, none_mean, _, _ = run("none", "")
    _, async_mean, async_block, saves = run("async", os.path.join(base, "async"))
    _, sync_mean, sync_block, _ = run("sync", os.path.join(base, "sync"))
    median = statistics.median(none_times)
    print(f"no saves:             median step {1e3 * median:.1f} ms, mean {1e3 * none_mean:.1f} ms")
    print(f"async save every {known.every}:  mean step {1e3 * async_mean:.1f} ms "
          f"({async_mean / none_mean:.2f}x no saves); blocking per save {1e3 * async_block:.1f} ms ({saves} saves)")
    print(f"sync save every {known.every}:   mean step {1e3 * sync_mean:.1f} ms "
          f"({sync_mean / none_mean:.2f}x no saves); blocking per save {1e3 * sync_block:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
