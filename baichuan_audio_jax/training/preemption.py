"""Stopping a run cleanly when the machine is about to go away.

A preemption notice — SIGTERM (what spot/queued TPU capacity, GKE and SLURM send before they
kill a job), SIGINT (Ctrl-C), or a Cloud TPU maintenance event — makes ``train`` finish the step
it is running, save a checkpoint at that step on every host, wait until the checkpoint is
committed and exit with :data:`EXIT_PREEMPTED` (143, the status of a process ended by SIGTERM),
which the launch scripts read as "resume me".

* One process: Python signal handlers set a flag; the loop stops after the step in flight.
* Several processes: the hosts must stop at the *same* step or the collective save hangs. JAX's
  distributed runtime already owns SIGTERM (and, on TPU VMs, the maintenance-event notice): it
  tells the coordination service, which picks a step every process reaches
  (``multihost_utils.reached_preemption_sync_point``). SIGINT is forwarded to this process as
  SIGTERM so that Ctrl-C takes the same path.
* A second signal while the checkpoint is being written is noted and ignored (the runtime's
  SIGTERM handler ignores repeats too), so the save is never cut short by the signal itself;
  a kill -9 during the save leaves the previous checkpoint as the latest (Orbax commits by
  renaming a finished temporary directory).
"""
from __future__ import annotations

import os
import signal
import sys
import time

import jax
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 143  # 128 + SIGTERM: "preempted, checkpoint saved, run the same command again"


class Preempted(Exception):
    """Raised by the trainer after the preemption checkpoint at ``step`` is committed."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, saved: bool):
        self.step, self.saved = step, saved
        super().__init__(f"preempted: stopped after step {step}"
                         + ("; checkpoint saved, run the same command to resume" if saved else ""))


class PreemptionWatch:
    """Installs the handlers on construction (main thread only) and restores them on :meth:`close`."""

    def __init__(self, log=print):
        self.log = log
        self.signal_time: float | None = None
        self.signal_name = ""
        self.multi = jax.process_count() > 1
        self._previous = {}
        if self.multi:
            self._install(signal.SIGINT, self._forward_as_sigterm)
        else:
            self._install(signal.SIGTERM, self._note)
            self._install(signal.SIGINT, self._note)

    def _install(self, sig, handler) -> None:
        try:
            self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. train() called from a worker thread)
            pass

    def _note(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_time is None:
            self.signal_time, self.signal_name = time.perf_counter(), name
            self.log(f"{name} received: finishing this step, then saving a checkpoint and exiting")
        else:
            print(f"{name} received again: still stopping (a checkpoint is being written); "
                  "not interrupting it", file=sys.stderr, flush=True)

    def _forward_as_sigterm(self, signum, frame) -> None:
        if self.signal_time is None:
            self.signal_time, self.signal_name = time.perf_counter(), signal.Signals(signum).name
        os.kill(os.getpid(), signal.SIGTERM)  # the distributed runtime's notifier agrees on a step

    def should_stop(self, step: int) -> bool:
        """Called once per step by every process, with the same ``step``; True on all of them at
        the same step once a notice arrived anywhere."""
        if not self.multi:
            return self.signal_time is not None

        stop = bool(multihost_utils.reached_preemption_sync_point(step))
        if stop and self.signal_time is None:
            self.signal_time, self.signal_name = time.perf_counter(), "SIGTERM"
        return stop

    def requested(self) -> bool:
        """Whether a notice arrived before the first step (one process: stop without stepping;
        several: the agreed step decides, inside the loop)."""
        return not self.multi and self.signal_time is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except ValueError:
                pass
        self._previous = {}
