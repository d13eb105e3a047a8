"""Where a run's wall time went: the share spent on training steps ("goodput") and the losses.

Each ``train`` invocation (a run segment) measures, from the moment ``train()`` starts:

* ``startup``: distributed set-up, program construction, data iterator, lock and config checks;
* ``restore``: reading the checkpoint it resumes from;
* ``compile``: tracing and compiling the step before the loop (from the persistent compilation
  cache when it has the program), and waiting for the other processes to finish theirs;
* ``checkpoint``: time the loop was blocked by saves (the synchronous part of an asynchronous
  save, and the final wait for the commit);
* ``preemption``: from the preemption notice to the exit (overlaps ``checkpoint``);
* ``redone_steps``: steps computed by an earlier segment after its last checkpoint and computed
  again by this one (counted from ``metrics.jsonl``), priced at this segment's mean step time.

``productive`` is the loop time minus ``checkpoint``; ``goodput`` is productive
over the segment's wall time. The segment's record is appended to ``<workdir>/goodput.jsonl``
and summarised on one line at the end of the run.
"""
from __future__ import annotations

import contextlib
import json
import time

from etils import epath

BUCKETS = ("startup", "restore", "compile", "checkpoint", "preemption")


class Goodput:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.seconds = {k: 0.0 for k in BUCKETS}
        self.loop_start: float | None = None
        self.steps = 0
        self.redone_steps = 0

    @contextlib.contextmanager
    def measure(self, bucket: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[bucket] += time.perf_counter() - t

    def start_loop(self) -> None:
        self.loop_start = time.perf_counter()
        self.seconds["startup"] = self.loop_start - self.t0 - self.seconds["restore"] - self.seconds["compile"]

    def summary(self, preempted_at: float | None = None) -> dict:
        end = time.perf_counter()
        if preempted_at is not None:
            self.seconds["preemption"] = end - preempted_at
        total = end - self.t0
        loop = end - self.loop_start if self.loop_start is not None else 0.0
        productive = max(loop - self.seconds["checkpoint"], 0.0)
        step_time = productive / self.steps if self.steps else 0.0
        record = {"wall_s": total, "productive_s": productive, "goodput": productive / total if total > 0 else 0.0,
                  "steps": self.steps, **{f"{k}_s": v for k, v in self.seconds.items()},
                  "redone_steps": self.redone_steps, "redone_s": self.redone_steps * step_time,
                  "time": time.time()}
        return record

    @staticmethod
    def line(r: dict) -> str:
        parts = [f"{k} {r[k + '_s']:.1f} s" for k in BUCKETS if r[k + "_s"] > 0]
        if r["redone_steps"]:
            parts.append(f"{r['redone_steps']} steps redone after the last interruption ({r['redone_s']:.1f} s)")
        return (f"goodput: {100 * r['goodput']:.1f}% ({r['productive_s']:.1f} s of {r['wall_s']:.1f} s in "
                f"{r['steps']} training steps); " + ", ".join(parts))


def append_record(workdir: epath.Path, record: dict) -> None:
    """Appends a JSON line to ``<workdir>/goodput.jsonl`` (read + rewrite where appending is not
    available, e.g. object stores)."""
    path = workdir / "goodput.jsonl"
    old = path.read_text() if path.exists() else ""
    path.write_text(old + json.dumps(record) + "\n")
