"""Running a suite: per task, records are read and checked, sorted by length, run in batches and
streamed to ``DIR/<task>.jsonl`` (one line per record: its result, or ``{"line", "skipped",
"detail"}``); then the report.

An interrupted evaluation continues where it stopped: the lines already in ``DIR/<task>.jsonl``
are kept (a line cut short by the interruption is dropped) and their records are not run again;
metrics are computed from every line of the file. Delete the file to evaluate a task afresh.

``DIR/report.json``::

    {"tasks": {"<name>": {"type": ..., "<metric>": ..., "count": N, "skipped": {"<reason>": n}}}, ...}

plus ``DIR/report.md`` (a markdown table) and, given a ``scalars`` callback, every numeric metric
as ``eval/<task>/<metric>`` (the CLI writes them to ``DIR/tensorboard``; ``train`` to its run).
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from typing import Callable

import numpy as np
from tqdm import tqdm

from baichuan_audio_jax.evaluation.inputs import SkipRecord, records
from baichuan_audio_jax.evaluation.models import EvalModel
from baichuan_audio_jax.evaluation.suite import Suite, TaskSpec
from baichuan_audio_jax.evaluation.tasks import TASK_TYPES

REPORT_FILE = "report.json"
HIDDEN_ITEM_KEYS = ("length", "record")


class Context:
    """What a task runs with: the model (built on first use), where results go, batch size."""

    def __init__(self, model, out_dir: str, *, suite_dir: str = ".", batch_size: int = 8, progress: bool = True,
                 log: Callable[[str], None] = print):
        self._model, self.out_dir, self.suite_dir = model, out_dir, suite_dir
        self.batch_size, self.progress, self.log = int(batch_size), progress, log
        self._asr_models: dict[str, object] = {}

    @property
    def model(self):
        if callable(self._model) and not hasattr(self._model, "gen"):
            self._model = self._model()
        return self._model

    def with_model(self, model) -> "Context":
        other = copy.copy(self)
        other._model = model
        return other

    def asr_model(self, spec: TaskSpec):
        path = spec.option("asr_checkpoint")
        if not path:
            return self.model
        if path not in self._asr_models:
            self._asr_models[path] = EvalModel.from_bundle(path, batch_size=self.model.batch_size,
                                                           mesh=self.model.mesh)
        return self._asr_models[path]


def _read_done(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    done, dropped = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                if isinstance(entry, dict) and "line" in entry:
                    done.append(entry)
                    continue
            except json.JSONDecodeError:
                pass
            dropped = True
    if dropped:  # a line cut short: rewrite the file with the whole ones
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in done)
        os.replace(path + ".tmp", path)
    return done


def _public(item: dict) -> dict:
    return {k: v for k, v in item.items() if k not in HIDDEN_ITEM_KEYS}


def run_task(ctx: Context, spec: TaskSpec) -> dict:
    """Runs (or continues) one task; returns its report entry."""
    kind = TASK_TYPES[spec.type]
    os.makedirs(ctx.out_dir, exist_ok=True)
    path = os.path.join(ctx.out_dir, f"{spec.name}.jsonl")
    done = _read_done(path)
    seen = {e["line"] for e in done}
    limit = int(spec.option("limit", 0) or 0)
    usable = sum("skipped" not in e for e in done)
    items, fresh = [], []
    for line, rec in records(spec.manifest):
        if line in seen:
            continue
        if limit and usable >= limit:
            break
        try:
            if isinstance(rec, SkipRecord):
                raise rec
            items.append(kind.prepare(spec, rec, line))
            usable += 1
        except SkipRecord as e:
            fresh.append({"line": line, "skipped": e.reason, "detail": e.detail})
    items.sort(key=lambda it: it.get("length", 0))
    batch = int(spec.option("batch_size", ctx.batch_size))
    t0 = time.perf_counter()
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in fresh)
        bar = tqdm(total=len(items), desc=spec.name, unit="utt", disable=not ctx.progress, dynamic_ncols=True)
        try:
            for start in range(0, len(items), batch):
                chunk = items[start:start + batch]
                for it, res in zip(chunk, kind.run(ctx, spec, chunk)):
                    if isinstance(res, SkipRecord):
                        entry = {"line": it["line"], "id": it.get("id"), "skipped": res.reason, "detail": res.detail}
                    else:
                        entry = {**_public(it), **res}
                    f.write(json.dumps(entry, ensure_ascii=False, default=_json_default) + "\n")
                    fresh.append(entry)
                f.flush()
                bar.update(len(chunk))
        finally:
            bar.close()
    seconds = time.perf_counter() - t0
    entries = done + fresh
    results = sorted((e for e in entries if "skipped" not in e), key=lambda e: e["line"])
    skipped = Counter(e["skipped"] for e in entries if "skipped" in e)
    report = {"type": spec.type}
    if results:
        report.update(kind.summarise(spec, results))
    report.update(count=len(results), skipped=dict(sorted(skipped.items())))
    if items:
        report["records_per_second"] = round(len(items) / max(seconds, 1e-9), 3)
    return report


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def numeric_metrics(entry: dict) -> dict[str, float]:
    return {k: float(v) for k, v in entry.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "records_per_second"}


def run_suite(suite: Suite, model, out_dir: str, *, batch_size: int = 8, progress: bool = True,
              log: Callable[[str], None] = print, scalars: Callable[[str, float], None] | None = None,
              extra: dict | None = None) -> dict:
    """Runs every task of ``suite`` on ``model`` (an EvalModel, or a function building one on first
    use); writes and returns the report. A task that cannot run at all (e.g. speech input without
    an audio tokenizer) is reported with ``error`` and the others still run."""
    ctx = Context(model, out_dir, suite_dir=os.path.dirname(suite.path) or ".", batch_size=batch_size,
                  progress=progress, log=log)
    report = {**(extra or {}), "suite": suite.path, "tasks": {}}
    for spec in suite.tasks:
        try:
            entry = run_task(ctx, spec)
        except (ValueError, OSError) as e:
            entry = {"type": spec.type, "error": str(e)}
            log(f"eval {spec.name}: error: {e}")
        report["tasks"][spec.name] = entry
        if "error" not in entry:
            log(f"eval {spec.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in numeric_metrics(entry).items()))
            if scalars is not None:
                for k, v in numeric_metrics(entry).items():
                    scalars(f"eval/{spec.name}/{k}", v)
        write_report(out_dir, report)
    return report


def write_report(out_dir: str, report: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, REPORT_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    os.replace(tmp, os.path.join(out_dir, REPORT_FILE))
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(report))


def markdown_table(report: dict) -> str:
    lines = ["| task | type | count | skipped | metrics |", "| --- | --- | --- | --- | --- |"]
    for name, e in report["tasks"].items():
        if "error" in e:
            lines.append(f"| {name} | {e['type']} | – | – | error: {e['error']} |")
            continue
        m = ", ".join(f"{k} {v:.4g}" for k, v in numeric_metrics(e).items() if k != "count")
        skipped = ", ".join(f"{k} {v}" for k, v in e["skipped"].items()) or "0"
        lines.append(f"| {name} | {e['type']} | {e['count']} | {skipped} | {m} |")
    return "\n".join(lines) + "\n"
