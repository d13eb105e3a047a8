"""The training loop behind ``baichuan-audio train``.

1. ``jax.distributed`` from the environment (multi-host), an exclusive lock on the workdir
   (:mod:`run_guard`), the mesh from ``config.mesh``;
2. the compiled program (:mod:`train_step`), the trainable-parameter report;
3. the newest readable checkpoint in ``<workdir>/checkpoints`` restored if there is one (onto
   this run's mesh; an unreadable newest one falls back to the previous, see
   :mod:`checkpointing`) after checking the config against the run's ``config.json``;
   otherwise a fresh state with the parts named by ``config.init_from`` loaded from trained runs
   or bundles (:mod:`initial_weights`); the data iterator resumed from the checkpoint;
4. steps until ``config.steps``: host batch -> global arrays -> step; metrics every
   ``log_every`` steps (and the last), a checkpoint every ``checkpoint_every`` steps and at the
   end; non-finite steps and spikes handled by :mod:`divergence`; a preemption notice stops
   after the current step with a checkpoint at that step (:mod:`preemption`);
5. a goodput summary (:mod:`goodput`).

The config of the run is written to ``<workdir>/config.json`` once the state is restored or
initialised. ``workdir`` may be a local or mounted directory or a URL Orbax writes (``gs://``).
"""
from __future__ import annotations

import time
from typing import Any

import jax

from baichuan_audio_jax.training import distributed
from baichuan_audio_jax.training.checkpointing import Checkpointer, workdir_path
from baichuan_audio_jax.training.data_sources import build_iterator
from baichuan_audio_jax.training.divergence import StepWatch, check_mode
from baichuan_audio_jax.training.goodput import Goodput, append_record
from baichuan_audio_jax.training.initial_weights import apply_init_from
from baichuan_audio_jax.training.mesh import describe, mesh_from_config
from baichuan_audio_jax.training.metrics import MetricsWriter
from baichuan_audio_jax.training.preemption import Preempted, PreemptionWatch
from baichuan_audio_jax.training.run_guard import WorkdirLock, check_resume, write_config
from baichuan_audio_jax.training.tasks import check_batch_fields
from baichuan_audio_jax.training.train_step import build_program


def _compile_step(program, state, clock: Goodput):
    """The step compiled ahead of its first run; every process then waits for the others.

    Processes can finish compiling far apart: with a persistent compilation cache only process 0
    writes it, and on CPU the other processes' programs have keys of their own, so a warm restart
    loads one process's step in a second while another compiles for minutes. The first step's
    collectives would time out waiting for it; the distributed runtime's barrier does not."""
    with clock.measure("compile"):
        compiled = program.step.lower(state, program.abstract_batch()).compile()
        distributed.barrier("train_step_compiled")
    return compiled


def _check_run_config(config) -> None:
    if int(config.steps) < 0:
        raise ValueError(f"steps={config.steps} must be >= 0")
    if float(config.train.learning_rate) < 0 or float(config.train.min_learning_rate) < 0:
        raise ValueError(f"train.learning_rate={config.train.learning_rate} and train.min_learning_rate="
                         f"{config.train.min_learning_rate} must be >= 0")
    check_mode(str(config.train.get("nonfinite", "stop")))


def train(config, workdir: str, *, progress: bool = True, log=print, hooks=()) -> dict[str, Any]:
    """Runs (or resumes) the training of ``config`` in ``workdir``; returns the last metrics.
    Raises :class:`Preempted` after a preemption checkpoint is committed. ``hooks``: functions
    ``hook(step, graphdef, state, metrics_writer)`` called after every step, before that step's
    checkpoint (e.g. periodic evaluation on the live parameters)."""
    clock = Goodput()
    _check_run_config(config)
    distributed.initialize()
    say = log if jax.process_index() == 0 else (lambda *_: None)
    root = workdir_path(workdir)
    lock = WorkdirLock(root, log=say).acquire()
    watch = PreemptionWatch(log=say)
    try:
        return _train_locked(config, root, clock, watch, lock, progress=progress, say=say, hooks=hooks)
    finally:
        watch.close()
        lock.release()


def _train_locked(config, root, clock: Goodput, watch: PreemptionWatch, lock: WorkdirLock, *, progress, say,
                  hooks=()):
    pid, pcount = jax.process_index(), jax.process_count()
    total, rows = int(config.steps), int(config.data.batch_size)
    log_every, ckpt_every = max(1, int(config.log_every)), int(config.checkpoint_every)
    mesh = mesh_from_config(config.mesh)
    say(f"mesh: {describe(mesh)}; processes: {pcount}; devices: {jax.devices()[0].platform}")
    program = build_program(config, mesh)
    say(program.report())

    checkpointer = Checkpointer(root, max_to_keep=int(config.checkpoint.max_to_keep),
                                async_save=bool(config.checkpoint.async_save))
    iterator = build_iterator(config, process_index=pid, process_count=pcount)
    if checkpointer.latest_step() is not None:
        check_resume(root, config, log=say)
    with clock.measure("restore"):
        restored = checkpointer.restore_latest_good(program.abstract_state, log=say)
    if restored is not None:
        state, data_state, start = restored
        iterator.set_state(data_state)
        say(f"resumed from step {start} ({checkpointer.directory})")
    else:
        state, start = program.init(), 0
        state = apply_init_from(config, state, program.state_shardings, mesh, log=say)
        say(f"initialised a new state in {root}")
    write_config(root, config)
    metrics_out = MetricsWriter(root, start_step=start, total_steps=total, enabled=pid == 0, progress=progress)
    clock.redone_steps = metrics_out.redone_steps
    steps = StepWatch(str(config.train.get("nonfinite", "stop")), float(config.train.get("spike_factor", 0.0)),
                      metrics_out.message, str(checkpointer.directory))
    peak = float(config.train.peak_flops_per_device)
    last: dict[str, Any] = {}
    saved = start if restored is not None else None  # the newest committed, finite checkpoint
    stopped_at = None  # the step a preemption notice stopped the run at (before the end)
    run_step = _compile_step(program, state, clock)
    clock.start_loop()
    window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
    finished = False
    try:
        for step in range(start + 1, total + 1):
            if watch.requested() and step == start + 1:
                stopped_at = start  # a notice during start-up: nothing new to save
                break
            host = next(iterator)
            check_batch_fields(program.task, host, rows // pcount, program.seq_len,
                               where=f"data.source={config.data.source!r} batch {step}",
                               model_cfg=program.model_cfg, fields=program.fields)
            batch = distributed.global_batch(host, program.batch_shardings, rows)
            state, metrics = run_step(state, batch)
            clock.steps += 1
            steps.add(step, metrics)
            checkpointer.check_for_errors()
            window_steps += 1
            window_tokens += program.task.tokens(host) * pcount
            metrics_out.advance()
            stop = watch.should_stop(step)
            if step % log_every == 0 or step == total:
                values = steps.check(saved)
                elapsed = time.perf_counter() - window_start
                values.update(steps_per_s=window_steps / elapsed, tokens_per_s=window_tokens / elapsed)
                if peak > 0:
                    values["mfu"] = program.flops_per_step * window_steps / elapsed / (peak * mesh.size)
                metrics_out.write(step, values)
                lock.heartbeat()
                last = {"step": step, **values}
                window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
            for hook in hooks:
                hook(step, program.graphdef, state, metrics_out)
            if (ckpt_every > 0 and step % ckpt_every == 0) or step == total or stop:
                steps.check(saved)  # never save a non-finite state
                with clock.measure("checkpoint"):
                    checkpointer.save(step, state, iterator.get_state())
                saved = step
            if stop and step < total:
                stopped_at = step
                break
        with clock.measure("checkpoint"):
            checkpointer.wait()
        finished = True
    finally:
        checkpointer.close()
        metrics_out.close(after_error=not finished)
    record = clock.summary(watch.signal_time)
    if pid == 0:
        append_record(root, record)
    say(Goodput.line(record))
    if stopped_at is not None:
        raise Preempted(stopped_at, saved=saved == stopped_at)
    if start >= total:
        say(f"nothing to do: the checkpoint is at step {start} of {total}")
    return last

