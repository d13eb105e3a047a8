"""Run outputs a person can read and plot.

* ``<workdir>/metrics.jsonl``: one JSON object per logged step (``step``, ``loss``, the task's
  losses, ``grad_norm``, ``learning_rate``, ``steps_per_s``, ``tokens_per_s``, ``mfu`` when a
  peak is configured, ``time``).
* ``<workdir>/tensorboard/``: the same scalars as TensorBoard event files (tensorboardX).
* a tqdm progress line on the terminal: steps/s, ETA, loss and tokens/s.

On resume, lines and events past the restored step are dropped first, so the files describe a
single run however often it was interrupted.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

from tensorboardX import SummaryWriter
from tqdm import tqdm


class MetricsWriter:
    def __init__(self, workdir: str, *, start_step: int, total_steps: int, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.bar = None
        self.tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        _truncate_after(self.path, start_step)

        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)
        if progress:

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="train", smoothing=0.1)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in values.items()}, "time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(f"train/{k}", float(v), int(step))
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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_after(path: str, step: int) -> None:
    """Keeps the records of steps <= ``step`` (a resumed run rewrites the later ones)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue  # a line cut short by a kill
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
