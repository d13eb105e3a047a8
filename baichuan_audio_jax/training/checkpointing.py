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
* :meth:`Checkpointer.restore_latest_good` falls back to the previous checkpoint when the newest
  cannot be read (truncated or missing array files), warning with the bad step, and moves the
  bad one to ``<workdir>/checkpoints_unreadable/<step>``; it never starts from scratch silently.
* Failures become one-line :class:`CheckpointError` messages naming the step, the array and the
  cause (no space left, read-only, truncated, missing). An asynchronous save that failed is
  reported by :meth:`Checkpointer.check_for_errors`, which the trainer calls every step.
* ``workdir`` may be any path Orbax writes (a local or mounted directory, ``gs://bucket/run``).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from baichuan_audio_jax.errors import CheckpointError, array_of, cause_of

UNREADABLE_DIR = "checkpoints_unreadable"
_STEP_IN_PATH = re.compile(r"checkpoints/(\d+)(?:\.orbax-checkpoint-tmp[^/]*)?/")


class Checkpointer:
    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.workdir = workdir_path(workdir)
        self.directory = self.workdir / "checkpoints"
        self.pending_step: int | None = None  # an asynchronous save not yet known to be committed
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
        except Exception as e:
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {cause_of(e)}") from e

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any) -> None:
        """Starts saving (asynchronously if configured). ``data_state`` is this process's
        iterator state; every process must call this."""
        states = gather_json(data_state)
        payload = {"process_count": jax.process_count(), "states": states}
        self.check_for_errors()
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(payload)), force=True)
        except Exception as e:
            raise self._save_error(step, e) from e
        self.pending_step = step

    def _save_error(self, step: int | None, e: BaseException) -> CheckpointError:
        found = _STEP_IN_PATH.search(str(e)) or (e.__cause__ and _STEP_IN_PATH.search(str(e.__cause__)))
        if found:  # a failed asynchronous save is reported by the next call: name the step it was writing
            step = int(found.group(1))
        where = f"checkpoint step {step}" if step is not None else "a checkpoint"
        array = array_of(e)
        return CheckpointError(f"saving {where} to {self.directory} failed"
                               + (f" at array {array}" if array else "") + f": {cause_of(e)}")

    def check_for_errors(self) -> None:
        """Raises :class:`CheckpointError` if an asynchronous save has failed."""
        try:
            self.manager.check_for_errors()
        except Exception as e:
            raise self._save_error(self.pending_step, e) from e

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int]:
        """(state, this process's data iterator state, step) of ``step`` (default: latest).

        ``abstract_state``: ShapeDtypeStructs with the target shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:
            array = array_of(e)
            raise CheckpointError(f"checkpoint step {step} ({self.directory / str(step)}): cannot read "
                                  + (f"array {array}" if array else "it") + f": {cause_of(e)}") from e
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

    def restore_latest_good(self, abstract_state: Any, log: Callable[[str], None] = print
                            ) -> tuple[Any, Any, int] | None:
        """Like :meth:`restore` of the newest checkpoint, falling back to older ones when a
        checkpoint cannot be read (every process must agree, so the decision is gathered).
        ``None`` if there is no checkpoint; :class:`CheckpointError` if none can be read."""
        steps = sorted(self.all_steps(), reverse=True)
        failures = []
        for step in steps:
            error = None
            try:
                result = self.restore(abstract_state, step)
            except CheckpointError as e:
                error, result = e, None
            if all_processes_ok(error is None):
                if failures:
                    self._set_aside([s for s, _ in failures])
                return result
            failures.append((step, error or "failed on another process"))
            log(f"warning: {error or f'checkpoint step {step}: failed on another process'}; "
                "trying the previous checkpoint")
        if failures:
            raise CheckpointError("no checkpoint in {} can be read: {}".format(
                self.directory, "; ".join(str(e) for _, e in failures)))
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable checkpoints out of the manager's directory (process 0), so new saves
        can reuse their step numbers and rotation does not count them."""
        if jax.process_index() == 0:
            target = self.workdir / UNREADABLE_DIR
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                dest = target / str(step)
                if dest.exists():
                    dest.rmtree()
                (self.directory / str(step)).rename(dest)
        sync_processes("checkpoint_set_aside")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until the pending save is committed (raises :class:`CheckpointError` if it failed)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(self.pending_step, e) from e
        self.pending_step = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """The run directory as an ``epath.Path``: local paths made absolute, URLs (``gs://``) kept."""
    text = os.fspath(workdir)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def all_processes_ok(ok: bool) -> bool:
    """True on every process iff ``ok`` is true on every process."""
    if jax.process_count() == 1:
        return bool(ok)

    return bool(np.all(multihost_utils.process_allgather(np.array([int(bool(ok))], np.int32))))


def sync_processes(name: str) -> None:
    if jax.process_count() > 1:

        multihost_utils.sync_global_devices(name)


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
