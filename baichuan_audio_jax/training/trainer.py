"""The training loop behind ``baichuan-audio train``.

1. ``jax.distributed`` from the environment (multi-host), the mesh from ``config.mesh``;
2. the compiled program (:mod:`train_step`), the trainable-parameter report;
3. the latest checkpoint in ``<workdir>/checkpoints`` restored if there is one (onto this
   run's mesh), otherwise a fresh state with the parts named by ``config.init_from`` loaded
   from trained runs or bundles (:mod:`initial_weights`); the data iterator resumed from the
   checkpoint;
4. steps until ``config.steps``: host batch -> global arrays -> step; metrics every
   ``log_every`` steps (and the last), a checkpoint every ``checkpoint_every`` steps and at the
   end.

The config of the run is written to ``<workdir>/config.json`` for reference.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from baichuan_audio_jax.training import distributed
from baichuan_audio_jax.training.checkpointing import Checkpointer
from baichuan_audio_jax.training.data_sources import build_iterator
from baichuan_audio_jax.training.initial_weights import apply_init_from
from baichuan_audio_jax.training.mesh import describe, mesh_from_config
from baichuan_audio_jax.training.metrics import MetricsWriter
from baichuan_audio_jax.training.tasks import check_batch_fields
from baichuan_audio_jax.training.train_step import build_program


def train(config, workdir: str, *, progress: bool = True, log=print, hooks=()) -> dict[str, Any]:
    """Runs (or resumes) the training of ``config`` in ``workdir``; returns the last metrics.
    ``hooks``: functions ``hook(step, graphdef, state, metrics_writer)`` called after every step,
    before that step's checkpoint (e.g. periodic evaluation on the live parameters)."""
    distributed.initialize()
    pid, pcount = jax.process_index(), jax.process_count()
    primary = pid == 0
    say = log if primary else (lambda *_: None)
    os.makedirs(workdir, exist_ok=True)
    total = int(config.steps)
    log_every = max(1, int(config.log_every))
    ckpt_every = int(config.checkpoint_every)
    rows = int(config.data.batch_size)

    mesh = mesh_from_config(config.mesh)
    say(f"mesh: {describe(mesh)}; processes: {pcount}; devices: {jax.devices()[0].platform}")
    program = build_program(config, mesh)
    say(program.report())
    if primary:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=1, default=str)

    checkpointer = Checkpointer(workdir, max_to_keep=int(config.checkpoint.max_to_keep),
                                async_save=bool(config.checkpoint.async_save))
    iterator = build_iterator(config, process_index=pid, process_count=pcount)
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state, start = checkpointer.restore(program.abstract_state, latest)
        iterator.set_state(data_state)
        say(f"resumed from step {start} ({checkpointer.directory})")
    else:
        state, start = program.init(), 0
        state = apply_init_from(config, state, program.state_shardings, mesh, log=say)
        say(f"initialised a new state in {workdir}")
    local_rows = rows // pcount
    metrics_out = MetricsWriter(workdir, start_step=start, total_steps=total, enabled=primary,
                                progress=progress)
    peak = float(config.train.peak_flops_per_device)
    last: dict[str, Any] = {}
    window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
    try:
        for step in range(start + 1, total + 1):
            host = next(iterator)
            check_batch_fields(program.task, host, local_rows, program.seq_len,
                               where=f"data.source={config.data.source!r} batch {step}",
                               model_cfg=program.model_cfg, fields=program.fields)
            batch = distributed.global_batch(host, program.batch_shardings, rows)
            state, metrics = program.step(state, batch)
            window_steps += 1
            window_tokens += program.task.tokens(host) * pcount
            metrics_out.advance()
            if step % log_every == 0 or step == total:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                values["steps_per_s"] = window_steps / elapsed
                values["tokens_per_s"] = window_tokens / elapsed
                if peak > 0:
                    values["mfu"] = program.flops_per_step * window_steps / elapsed / (peak * mesh.size)
                if not np.isfinite(values["loss"]):
                    metrics_out.message(f"step {step}: loss is {values['loss']}")
                metrics_out.write(step, values)
                last = {"step": step, **values}
                window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
            for hook in hooks:
                hook(step, program.graphdef, state, metrics_out)
            if (ckpt_every > 0 and step % ckpt_every == 0) or step == total:
                checkpointer.save(step, state, iterator.get_state())
        checkpointer.wait()
    finally:
        checkpointer.close()
        metrics_out.close()
    if start >= total:
        say(f"nothing to do: the checkpoint is at step {start} of {total}")
    return last
