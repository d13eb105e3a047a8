"""Run outputs a person can read and plot.

* ``<workdir>/metrics.jsonl``: one JSON object per logged step (``step``, ``loss``, the task's
  losses, ``grad_norm``, ``learning_rate``, ``steps_per_s``, ``tokens_per_s``, ``mfu`` when a
  peak is configured, ``time``).
* ``<workdir>/tensorboard/``: the same scalars as TensorBoard event files (tensorboardX's event
  format, written synchronously by :class:`ScalarEvents`).
* a tqdm progress line on the terminal: steps/s, ETA, loss and tokens/s.

On resume, lines and events past the restored step are dropped first, so the files describe a
single run however often it was interrupted (``redone_steps``: how many steps were dropped, for the
goodput record).

The workdir may be a URL (``gs://bucket/run``, through ``etils.epath``): object stores cannot
append, so there ``metrics.jsonl`` is rewritten at each log step; TensorBoard writes ``gs://``
through tensorboardX's own writer (which needs ``google-cloud-storage``).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Mapping

from etils import epath
from tqdm import tqdm


@contextlib.contextmanager
def _without_torch():
    """tensorboardX imports PyTorch whenever it is installed (to accept its tensors): 1.8 s of
    start-up in every training process of an environment with the torch extra. The scalars
    written here are floats, so tensorboardX is imported with ``torch`` unimportable, unless the
    process has already imported it."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        yield
    finally:
        del sys.modules["torch"]


with _without_torch():
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.record_writer import directory_check
    from tensorboardX.summary import scalar


class ScalarEvents:
    """TensorBoard scalars written in the caller's thread.

    tensorboardX's ``SummaryWriter`` hands events to a worker thread through a bounded queue and
    closes it again at interpreter exit. When a write fails (a full disk) the worker dies, the queue
    fills, and the next ``add_scalar`` -- or the exit hook -- waits forever. Here a failed write
    raises ``OSError`` where it happens, and :meth:`close` cannot block. ``purge_step`` hides the
    events of earlier attempts at steps >= it (a resumed run), as ``SummaryWriter``'s does.
    """

    def __init__(self, logdir: str, *, purge_step: int | None = None):
        logdir = os.fspath(logdir)
        directory_check(logdir)
        # Names start with the second the file was opened; the nanosecond suffix keeps two writers
        # opened in the same second (a resume in the same process) apart and in order.
        self._events = EventsWriter(os.path.join(logdir, "events"), f".{time.time_ns()}")
        self._closed = False
        self._failed = False
        if purge_step is not None:
            self._events.write_event(Event(step=purge_step, wall_time=time.time(),
                                           session_log=SessionLog(status=SessionLog.START)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._guarded(self._events.write_event,
                      Event(step=int(step), wall_time=time.time(), summary=scalar(tag, float(value))))

    def flush(self) -> None:
        self._guarded(self._events.flush)

    def close(self) -> None:
        """Closes the file. After a write has already failed, a second failure here is not raised
        again (the first one is the error the caller is handling)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._events.close()
        except OSError:
            if not self._failed:
                raise

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except OSError:
            self._failed = True
            raise


class MetricsWriter:
    def __init__(self, workdir: str, *, start_step: int, total_steps: int, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.appendable = "://" not in os.fspath(workdir)
        self.lines: list[str] = []  # the whole file, where it cannot be appended to
        self.bar = None
        self.tb = None
        self.redone_steps = 0
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines, last_dropped = _truncate_after(self.path, start_step)
        self.redone_steps = max(last_dropped - start_step, 0)

        self.tb = ScalarEvents(os.path.join(os.fspath(workdir), "tensorboard"), purge_step=start_step + 1)
        if progress:

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="train", smoothing=0.1)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in values.items()}, "time": time.time()}
        line = json.dumps(record) + "\n"
        if self.appendable:
            with open(self.path, "a") as f:
                f.write(line)
        else:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))
        for k, v in values.items():
            self.tb.add_scalar(f"train/{k}", float(v), int(step))
        self.tb.flush()  # one flush per logged step: TensorBoard sees the run as it goes
        if self.bar is not None:
            post = {"loss": f"{values['loss']:.4f}"}
            if "tokens_per_s" in values:
                post["tok/s"] = f"{values['tokens_per_s']:,.0f}"
            if "mfu" in values:
                post["mfu"] = f"{100 * values['mfu']:.1f}%"
            self.bar.set_postfix(post, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self, *, after_error: bool = False) -> None:
        """Closes the progress bar and the event file. ``after_error``: the run is already failing,
        so a failure to write the last events (the same full disk) is not raised over that error."""
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            tb, self.tb = self.tb, None
            try:
                tb.close()
            except OSError:
                if not after_error:
                    raise


def _truncate_after(path: epath.Path, step: int) -> tuple[list[str], int]:
    """Keeps the records of steps <= ``step`` (a resumed run rewrites the later ones); returns
    the kept lines and the highest step seen (``step`` if none was later)."""
    if not path.exists():
        return [], step
    keep, last = [], step
    for line in path.read_text().splitlines(keepends=True):
        try:
            s = json.loads(line)["step"]
        except (ValueError, KeyError):
            continue  # a line cut short by a kill
        last = max(last, s)
        if s <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)
    return keep, last


def read_metrics(workdir) -> list[dict]:
    text = (epath.Path(workdir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
