"""Non-finite steps and loss / gradient-norm spikes, read without a host round trip per step.

The compiled step reports ``nonfinite`` (1.0 when the loss or the trainable gradient norm is NaN
or infinite) and, under ``train.nonfinite = "skip"``, leaves parameters, model state and
optimiser state unchanged on such a step (``jnp.where`` inside the program). The trainer keeps
each step's metric arrays and :meth:`StepWatch.check` fetches the window at once — at log steps
and before every checkpoint, so a non-finite state is never saved:

* ``stop`` (default): :class:`Diverged` names the first non-finite step and the last good
  checkpoint (the run exits with status 3);
* ``skip``: each skipped step is logged; ``skipped_steps`` counts them in the metrics.

A finite loss (or gradient norm) above ``train.spike_factor`` times its running average
(exponential, over the steps seen) is logged as a spike (``0`` turns this off).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax

from baichuan_audio_jax.errors import ReadableError

MODES = ("stop", "skip")


class Diverged(ReadableError):
    exit_code = 3


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"train.nonfinite={mode!r} must be one of {', '.join(MODES)}")
    return mode


class StepWatch:
    def __init__(self, mode: str, spike_factor: float, log: Callable[[str], None], checkpoint_dir: str = ""):
        self.mode = check_mode(mode)
        self.spike_factor = float(spike_factor)
        self.log = log
        self.checkpoint_dir = checkpoint_dir
        self.pending: list[tuple[int, Any]] = []
        self.skipped = 0
        self.averages: dict[str, float] = {}

    def add(self, step: int, metrics: Any) -> None:
        self.pending.append((step, metrics))

    def check(self, last_checkpoint: int | None) -> dict[str, float]:
        """Fetches the pending steps' metrics; raises :class:`Diverged` under ``stop``. Returns
        the newest step's metrics as floats (empty if nothing was pending)."""
        if not self.pending:
            return {}
        steps = [s for s, _ in self.pending]
        fetched = jax.device_get([m for _, m in self.pending])
        self.pending = []
        for step, m in zip(steps, fetched):
            values = {k: float(v) for k, v in m.items()}
            if values.get("nonfinite", 0.0) > 0:
                what = f"loss {values['loss']}, gradient norm {values.get('grad_norm', float('nan'))}"
                if self.mode == "stop":
                    good = (f"the last good checkpoint is step {last_checkpoint} in {self.checkpoint_dir}"
                            if last_checkpoint is not None else "no checkpoint was saved")
                    raise Diverged(f"step {step}: non-finite training ({what}); stopped (train.nonfinite=stop), "
                                   f"{good}. Lower train.learning_rate, or set train.nonfinite=skip")
                self.skipped += 1
                self.log(f"step {step}: non-finite training ({what}); update skipped "
                         f"({self.skipped} skipped so far)")
                continue
            self._spikes(step, values)
        values["skipped_steps"] = float(self.skipped)
        return values

    def _spikes(self, step: int, values: dict[str, float]) -> None:
        for key in ("loss", "grad_norm"):
            v = values.get(key)
            if v is None or not math.isfinite(v):
                continue
            avg = self.averages.get(key)
            if avg is not None and self.spike_factor > 0 and avg > 0 and v > self.spike_factor * avg:
                self.log(f"step {step}: {key} spike {v:.4g} ({v / avg:.1f}x its running average {avg:.4g})")
            self.averages[key] = v if avg is None else 0.9 * avg + 0.1 * v
