"""Multi-process (multi-host) set-up and global arrays from per-host batches.

:func:`initialize` starts ``jax.distributed`` from the environment (or explicit arguments):

* explicit: ``BAICHUAN_COORDINATOR`` (``host:port`` of process 0), ``BAICHUAN_NUM_PROCESSES``,
  ``BAICHUAN_PROCESS_ID`` and optionally ``BAICHUAN_LOCAL_DEVICE_IDS`` (comma-separated) —
  GPU clusters, CPU tests, anything without auto-detection;
* automatic: on a Cloud TPU pod slice (``TPU_WORKER_HOSTNAMES`` / ``TPU_WORKER_ID`` set by the
  TPU VM) or inside a multi-task SLURM job (``SLURM_NTASKS`` > 1), ``jax.distributed.initialize()``
  with no arguments lets JAX's cluster detection find coordinator, count and id;
* otherwise a single process (nothing to do).

Every process runs the same program on its own devices; each feeds only its share of the global
batch, and :func:`global_batch` assembles the global ``jax.Array`` without moving data between
hosts (``jax.make_array_from_process_local_data``).

:func:`barrier` waits for every process through the distributed runtime's coordination service,
with its own timeout. Use it where processes may arrive minutes apart (one compiling while another
loads the program from the persistent compilation cache): a collective would give up first (the
CPU backend's cross-process collectives wait 30 s for the other side to connect).
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from orbax.checkpoint import multihost as ocp_multihost

from baichuan_audio_jax.errors import ReadableError

ENV_COORDINATOR = "BAICHUAN_COORDINATOR"
ENV_NUM_PROCESSES = "BAICHUAN_NUM_PROCESSES"
ENV_PROCESS_ID = "BAICHUAN_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "BAICHUAN_LOCAL_DEVICE_IDS"

_initialized = False
_barriers = 0  # meetings so far: part of each barrier's key


def detect(env: Mapping[str, str] | None = None) -> str:
    """``explicit``, ``tpu``, ``slurm`` or ``single``: how this process should start."""
    env = os.environ if env is None else env
    if env.get(ENV_COORDINATOR):
        return "explicit"
    if env.get("TPU_WORKER_HOSTNAMES") and "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return "slurm"
    return "single"


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: list[int] | None = None) -> str:
    """Initialises ``jax.distributed`` once per process; returns the mode used (see :func:`detect`).

    Arguments override the ``BAICHUAN_*`` environment variables."""
    global _initialized
    env = os.environ
    coordinator = coordinator or env.get(ENV_COORDINATOR)
    mode = "explicit" if coordinator else detect(env)
    if _initialized or mode == "single":
        return mode
    if mode == "explicit":
        if num_processes is None:
            num_processes = _int_env(ENV_NUM_PROCESSES)
        if process_id is None:
            process_id = _int_env(ENV_PROCESS_ID)
        if local_device_ids is None and env.get(ENV_LOCAL_DEVICE_IDS):
            local_device_ids = [int(x) for x in env[ENV_LOCAL_DEVICE_IDS].split(",") if x.strip()]
        if not 0 <= process_id < num_processes:
            raise ValueError(f"{ENV_PROCESS_ID}={process_id} is outside [0, {ENV_NUM_PROCESSES}={num_processes})")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids)
    else:
        jax.distributed.initialize()
    _initialized = True
    return mode


BARRIER_TIMEOUT_S = 3600.0  # a cold compile of the 7B step on a busy host takes minutes, not hours


class BarrierError(ReadableError):
    """Not every process reached a barrier in time (one is gone, stuck, or far behind)."""


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Returns once every process has called ``barrier(name)`` (at once with one process); fails
    after ``timeout_s`` with :class:`BarrierError` naming the barrier (one line on the command
    line). Every process must meet the same barriers in the same
    order (each meeting gets its own key: ``name`` and a count)."""
    global _barriers
    if jax.process_count() == 1:
        return
    _barriers += 1
    try:
        ocp_multihost.get_barrier_sync_fn()(key=f"{name}/{_barriers}", timeout_ms=int(timeout_s * 1000))
    except Exception as e:  # the runtime's error says DEADLINE_EXCEEDED with its own key names
        raise BarrierError(f"process {jax.process_index()} at barrier {name!r} (timeout {timeout_s:.0f} s): "
                           f"the other processes did not all arrive: {str(e).splitlines()[0]}") from e


def _int_env(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"{ENV_COORDINATOR} is set but {name} is not: a multi-process run needs "
                         f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def global_batch(local: Mapping[str, np.ndarray], shardings: Mapping[str, jax.sharding.Sharding],
                 global_rows: int) -> dict[str, jax.Array]:
    """Global arrays of ``global_rows`` rows from this process's rows of every field."""
    out = {}
    for k, sharding in shardings.items():
        x = np.asarray(local[k])
        shape = (global_rows, *x.shape[1:])
        out[k] = jax.make_array_from_process_local_data(sharding, x, shape)
    return out
