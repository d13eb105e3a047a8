"""Checkpoints of a run: Orbax ``CheckpointManager`` under ``<workdir>/checkpoints``.

A checkpoint at step n holds the whole :class:`TrainState` after n optimizer steps (parameters,
model state, optimizer state, step, RNG) and the data iterators' states after n batches, so a
resumed run continues with exactly the batches, keys and numbers of an uninterrupted one.

* Saving is asynchronous (``checkpoint.async_save``): training continues while arrays are
  written; the next save, or :meth:`Checkpointer.close`, waits for the previous one.
* Saves are atomic: Orbax writes into a temporary directory and renames it when complete, so a
  run killed mid-save leaves the previous checkpoint as the latest (the partial one is ignored
  and removed on the next start).
* ``checkpoint.max_to_keep`` newest checkpoints are kept.
* Restoring reads onto the *current* program's shardings (abstract target with shardings), so a
  run can resume on a different mesh shape or device count.
* Data iterator states are gathered from every process and stored as JSON
  (``{"process_count": P, "states": [...]}``); each process restores its own.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class Checkpointer:
    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any) -> None:
        """Starts saving (asynchronously if configured). ``data_state`` is this process's
        iterator state; every process must call this."""
        states = gather_json(data_state)
        payload = {"process_count": jax.process_count(), "states": states}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(payload)), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int]:
        """(state, this process's data iterator state, step) of ``step`` (default: latest).

        ``abstract_state``: ShapeDtypeStructs with the target shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        payload = restored["data"]
        states = payload["states"]
        if payload["process_count"] != jax.process_count():
            if any(s != states[0] for s in states):
                raise ValueError(
                    f"checkpoint {step} in {self.directory} holds data iterator states of "
                    f"{payload['process_count']} processes; this run has {jax.process_count()} and the "
                    "per-process states differ, so the data order cannot be resumed exactly")
            mine = states[0]
        else:
            mine = states[jax.process_index()]
        return restored["state"], mine, step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-serialisable ``obj``, in process order (one process: ``[obj]``)."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(obj))]

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
    width = int(np.max(lengths))
    padded = np.zeros(width, np.uint8)
    padded[: data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(rows[i, : int(lengths[i, 0])]).decode()) for i in range(rows.shape[0])]
