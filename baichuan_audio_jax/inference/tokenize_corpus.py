"""Offline tokenization of many audio files: per-file ``.npz`` outputs or ArrayRecord shards.

* :func:`tokenize_files` writes ``<name>.npz`` per audio file: ``codes`` int32 [N, 8],
  ``chunk_tokens`` (tokens of each 30 s chunk, in order; their sum is N), ``num_samples`` (16 kHz
  samples) and ``source`` (the input path). A file that cannot be tokenized stops the run with an
  :class:`~baichuan_audio_jax.audio.io.AudioError` naming it.
* :func:`tokenize_manifest` reads a JSONL manifest (``records.py``) and writes every record with
  the codes of its audio references to ArrayRecord shards ``<stem>-NNNNN-of-MMMMM.array_record``
  (``records.encode_tokenized``). Every record is first checked by the validator ``data check``
  and the training pipelines use (:mod:`baichuan_audio_jax.record_schema`); a record it rejects,
  or whose audio cannot be read, is skipped and counted under the same reason names; the summary
  lists every skipped item.

Both gather several files per step so the runtime batches their chunks (the next step's files are
read and resampled on a thread pool while the current one encodes), show a progress bar with
files/s and audio seconds per wall second, append one JSON line per step to
``tokenize_metrics.jsonl`` in the output directory (plot-ready: elapsed time, files, audio
seconds, rates), and return a summary dict (also written as JSON).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tqdm import tqdm

from baichuan_audio_jax.audio.io import AudioError
from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
from baichuan_audio_jax.record_schema import RecordError, validate
from baichuan_audio_jax.records import (
    ManifestLineError,
    audio_refs,
    encode_tokenized,
    read_manifest,
    resolve_audio_path,
)

METRICS_FILE = "tokenize_metrics.jsonl"
T = TypeVar("T")


@dataclasses.dataclass
class Progress:
    """Counts, the progress bar and the metrics log of one run."""

    out_dir: str
    total: int | None
    description: str
    files: int = 0
    audio_seconds: float = 0.0
    steps: int = 0
    skipped: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.bar = tqdm(total=self.total, unit="file", desc=self.description, dynamic_ncols=True)
        self.metrics = open(os.path.join(self.out_dir, METRICS_FILE), "w", encoding="utf-8")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _postfix(self) -> None:
        rate = self.audio_seconds / max(self.elapsed, 1e-9)
        extra = dict(skipped=self.skipped) if self.skipped else {}
        self.bar.set_postfix(audio_s_per_s=f"{rate:.1f}", **extra)

    def advance(self, files: int, audio_seconds: float) -> None:
        """``files`` more files (``audio_seconds`` of audio) tokenized: one metrics line."""
        self.files += files
        self.audio_seconds += audio_seconds
        self.steps += 1
        self.bar.update(files)
        self._postfix()
        elapsed = max(self.elapsed, 1e-9)
        self.metrics.write(json.dumps(dict(step=self.steps, elapsed_s=round(elapsed, 3), files=self.files,
                                           audio_seconds=round(self.audio_seconds, 3), skipped=self.skipped,
                                           files_per_s=round(self.files / elapsed, 3),
                                           audio_seconds_per_s=round(self.audio_seconds / elapsed, 3))) + "\n")
        self.metrics.flush()

    def note_skip(self, message: str | None = None) -> None:
        self.skipped += 1
        if message:
            self.bar.write(message, file=sys.stderr)
        self._postfix()

    def close(self) -> dict:
        self.bar.close()
        self.metrics.close()
        wall = self.elapsed
        return dict(files=self.files, audio_seconds=round(self.audio_seconds, 3), wall_seconds=round(wall, 3),
                    files_per_second=round(self.files / max(wall, 1e-9), 3),
                    audio_seconds_per_second=round(self.audio_seconds / max(wall, 1e-9), 3))


def _encode_step(runtime: AudioTokenizerRuntime, waves: Sequence[np.ndarray]) -> list[tuple[np.ndarray, list[int]]]:
    codes = runtime.encode_batch(waves)
    return [(c, runtime.chunk_tokens(w.shape[0])) for c, w in zip(codes, waves)]


_END = object()


class Loader:
    """Reads and resamples audio files on a pool of threads, one step ahead of the encoder, so
    host-side decoding overlaps with encoding. Failures come back as :class:`AudioError` values
    (in input order) for the caller to raise or count."""

    def __init__(self, runtime: AudioTokenizerRuntime, workers: int):
        self.runtime = runtime
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="audio-load")
        self.ahead = ThreadPoolExecutor(1, thread_name_prefix="audio-prefetch")

    def _one(self, path: str) -> np.ndarray | AudioError:
        try:
            return self.runtime.load_waveform(path)
        except AudioError as e:
            return e

    def load(self, paths: Sequence[str]) -> list[np.ndarray | AudioError]:
        return list(self.pool.map(self._one, paths))

    def pipelined(self, steps: Iterable[T], paths_of: Callable[[T], Sequence[str]]
                  ) -> Iterator[tuple[T, list[np.ndarray | AudioError]]]:
        """Yields (step, its loaded audio) while the next step's audio loads in the background."""
        it = iter(steps)

        def submit():
            step = next(it, _END)
            return None if step is _END else (step, self.ahead.submit(self.load, list(paths_of(step))))

        current = submit()
        while current is not None:
            following = submit()
            step, loaded = current
            yield step, loaded.result()
            current = following

    def close(self) -> None:
        self.ahead.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)


def default_load_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def output_names(paths: Sequence[str]) -> list[str]:
    """``<stem>.npz`` per path, made unique with ``-2``, ``-3`` … when stems collide."""
    seen: collections.Counter = collections.Counter()
    out = []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0] or "audio"
        seen[stem] += 1
        out.append(f"{stem}.npz" if seen[stem] == 1 else f"{stem}-{seen[stem]}.npz")
    return out


def tokenize_files(runtime: AudioTokenizerRuntime, paths: Sequence[str], out_dir: str, *,
                   files_per_step: int = 16, load_workers: int | None = None) -> dict:
    """Writes ``<name>.npz`` per input file; stops at the first unreadable file (AudioError)."""
    os.makedirs(out_dir, exist_ok=True)
    names = output_names(paths)
    progress = Progress(out_dir, len(paths), "tokenize")
    loader = Loader(runtime, load_workers or default_load_workers())
    sr = runtime.frontend.sampling_rate
    written = []
    groups = [list(range(s, min(s + files_per_step, len(paths)))) for s in range(0, len(paths), files_per_step)]
    try:
        for group, waves in loader.pipelined(groups, lambda g: [paths[i] for i in g]):
            for w in waves:
                if isinstance(w, AudioError):
                    raise w
            for i, w, (codes, chunks) in zip(group, waves, _encode_step(runtime, waves)):
                target = os.path.join(out_dir, names[i])
                np.savez(target, codes=codes, chunk_tokens=np.asarray(chunks, np.int32),
                         num_samples=np.int64(w.shape[0]), source=np.str_(os.fspath(paths[i])))
                written.append(target)
            progress.advance(len(group), sum(w.shape[0] for w in waves) / sr)
    finally:
        loader.close()
        summary = progress.close()
    summary["outputs"] = written
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    return summary


class ShardWriter:
    """ArrayRecord shards of at most ``records_per_shard`` records, named
    ``<stem>-NNNNN-of-MMMMM.array_record`` once the total is known (:meth:`close`). Until then they
    carry a ``.partial`` suffix, so an interrupted run never looks complete."""

    def __init__(self, out_dir: str, stem: str, records_per_shard: int):
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be ≥ 1, got {records_per_shard}")
        self.out_dir, self.stem, self.per_shard = out_dir, stem, records_per_shard
        self.partial: list[str] = []
        self.writer = None
        self.in_shard = 0
        self.records = 0

    def write(self, data: bytes) -> None:
        if self.writer is None or self.in_shard == self.per_shard:
            self._close_current()
            path = os.path.join(self.out_dir, f"{self.stem}-{len(self.partial):05d}.array_record.partial")
            self.writer = ArrayRecordWriter(path, "group_size:1")
            self.partial.append(path)
            self.in_shard = 0
        self.writer.write(data)
        self.in_shard += 1
        self.records += 1

    def _close_current(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        """Closes without naming the shards final (they keep the ``.partial`` suffix)."""
        self._close_current()

    def close(self) -> list[str]:
        self._close_current()
        final = []
        for i, path in enumerate(self.partial):
            name = os.path.join(self.out_dir, f"{self.stem}-{i:05d}-of-{len(self.partial):05d}.array_record")
            os.replace(path, name)
            final.append(name)
        return final


def _checked(rec: dict | ManifestLineError) -> dict | RecordError:
    """The record, or why the shared validator rejects it (``bad_json``, ``unknown_task``,
    ``invalid_record``)."""
    if isinstance(rec, ManifestLineError):
        return RecordError("bad_json", str(rec).split(": ", 1)[-1])
    try:
        validate(rec)
    except RecordError as e:
        return e
    return rec


def _manifest_steps(manifest: str, files_per_step: int) -> Iterator[list[tuple[str, dict | RecordError, list]]]:
    """Groups of (source, record or why it is rejected, resolved audio paths) holding ≥
    files_per_step audio references (the last group may hold fewer)."""
    name = os.path.basename(manifest)
    step, files = [], 0
    for line, raw in read_manifest(manifest):
        rec = _checked(raw)
        paths = [] if isinstance(rec, RecordError) else [resolve_audio_path(manifest, r) for r in audio_refs(rec)]
        step.append((f"{name}:{line}", rec, paths))
        files += len(paths)
        if files >= files_per_step:
            yield step
            step, files = [], 0
    if step:
        yield step


def tokenize_manifest(runtime: AudioTokenizerRuntime, manifest: str, out_dir: str, *,
                      files_per_step: int = 16, records_per_shard: int = 10_000, load_workers: int | None = None,
                      verbose: bool = True) -> dict:
    """Writes the manifest's records with their codes to ArrayRecord shards; returns the summary
    (``skipped`` counts by reason, ``skipped_items`` with source line, path and detail)."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(manifest))[0]
    name = os.path.basename(manifest)
    sr = runtime.frontend.sampling_rate
    with open(manifest, encoding="utf-8") as f:
        total_lines = sum(1 for line in f if line.strip())
    writer = ShardWriter(out_dir, stem, records_per_shard)
    progress = Progress(out_dir, None, f"tokenize {name}")
    loader = Loader(runtime, load_workers or default_load_workers())
    skipped: collections.Counter = collections.Counter()
    skipped_items: list[dict] = []
    records_seen = 0

    def skip(source: str, reason: str, path: str | None, detail: str) -> None:
        skipped[reason] += 1
        skipped_items.append(dict(source=source, reason=reason, path=path, detail=detail))
        message = f"skipped {source}: {reason}" + (f" ({path})" if path else "") + (f": {detail}" if detail else "")
        progress.note_skip(message if verbose else None)

    try:
        steps = _manifest_steps(manifest, files_per_step)
        for step, loaded in loader.pipelined(steps, lambda st: [p for _, _, paths in st for p in paths]):
            kept, waves, k = [], [], 0
            for source, rec, paths in step:
                records_seen += 1
                mine, k = loaded[k:k + len(paths)], k + len(paths)
                if isinstance(rec, RecordError):
                    skip(source, rec.reason, None, rec.detail)
                    continue
                bad = next((w for w in mine if isinstance(w, AudioError)), None)
                if bad is not None:
                    skip(source, bad.reason, bad.path, bad.detail)
                    continue
                kept.append((source, rec, len(mine)))
                waves.extend(mine)
            results = _encode_step(runtime, waves)
            k = 0
            for source, rec, count in kept:
                writer.write(encode_tokenized(rec, [c for c, _ in results[k:k + count]], source))
                k += count
            progress.advance(len(waves), sum(w.shape[0] for w in waves) / sr)
    except BaseException:
        writer.abort()
        raise
    finally:
        loader.close()
        summary = progress.close()
    shards = writer.close()
    summary.update(manifest=manifest, records_in_manifest=total_lines, records_seen=records_seen,
                   records_written=writer.records, records_skipped=sum(skipped.values()),
                   skipped=dict(sorted(skipped.items())), shards=shards, skipped_items=skipped_items)
    with open(os.path.join(out_dir, f"{stem}.summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    return summary


def read_shards(paths: Iterable[str]) -> list[bytes]:
    """Every record of the given ArrayRecord shards, in order (for checks and small corpora)."""

    out = []
    for p in paths:
        r = ArrayRecordReader(p)
        try:
            out.extend(r.read_all())
        finally:
            r.close()
    return out
