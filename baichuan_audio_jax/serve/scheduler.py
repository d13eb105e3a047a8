"""Batching concurrent requests into the decoding engine.

A :class:`Scheduler` owns two threads: the *engine thread* decodes, the *speech thread* turns
finished audio segments into sound (so vocoding overlaps decoding). Requests (:class:`Job`)
wait in a bounded queue per mode. The engine thread takes the waiting jobs of the mode whose
oldest job has waited longest — up to ``max_batch``, waiting at most ``max_wait`` seconds after
the first for others to join — pads the batch with idle rows to the next compiled batch size
and decodes them together with the engine's batched API (:meth:`DecodingEngine.start` and
:meth:`DecodingEngine.run`). This is step-synchronous dynamic batching: a batch runs until its
last row ends and requests that arrive meanwhile form the next batch; a row that ends early
finishes its request at once.

The compiled loop returns to the host every ``stream_steps`` steps (and whenever a row ends an
audio segment). Then each row's new text goes to its job, finished audio segments go to the
speech thread, and rows whose job was cancelled (its client went away) or ran past its deadline
are stopped, so they no longer hold the batch up. Each job receives its events through its
``emit`` callback, in order: ``("text", delta)``, ``("audio", chunk)`` (24 kHz float32),
then ``("done", Outcome)`` or ``("error", status, message)``.

A row's tokens do not depend on the rows it is batched with (the engine draws each row's
randomness from its own seed), so a request gets the same answer alone or in a batch; its audio
is vocoded at bucketed lengths (:mod:`.speech`).
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time
import traceback
from typing import Callable, Sequence

import jax
import numpy as np

from baichuan_audio_jax.inference import interleave as il
from baichuan_audio_jax.inference.engine import Request, bucket
from baichuan_audio_jax.inference.generator import MODES, Generator
from baichuan_audio_jax.inference.streaming import AudioStream
from baichuan_audio_jax.serve.speech import BucketedSpeech

log = logging.getLogger("baichuan_audio_jax.serve")


class QueueFull(Exception):
    """The server's request queue is at its limit."""


@dataclasses.dataclass
class Outcome:
    """A finished request."""

    text: str
    text_tokens: list[int]
    segments: list[np.ndarray]  # audio segments, codes int32 [N_i, 8]
    segment_text_ends: list[int]
    finish_reason: str  # the engine's, or "cancelled" / "timeout"
    new_tokens: int
    audio_seconds: float
    timings: dict[str, float]


Event = tuple
_ids = itertools.count()


@dataclasses.dataclass(eq=False)
class Job:
    """One request: its engine row, how to report to its client, and its progress."""

    mode: str
    request: Request
    protocol: il.Protocol
    seed: int
    emit: Callable[[Event], None]
    timeout: float | None = None  # seconds from submission
    id: int = dataclasses.field(default_factory=lambda: next(_ids))
    created: float = dataclasses.field(default_factory=time.perf_counter)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)
    # filled in while it runs
    started: float | None = None
    batch_size: int = 0
    tokens: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    segments: list[np.ndarray] = dataclasses.field(default_factory=list)
    segment_text_ends: list[int] = dataclasses.field(default_factory=list)
    stream: AudioStream | None = None
    vocoded: int = 0  # segments handed to the speech thread's decoder so far
    stopped: str | None = None  # "cancelled" | "timeout" when the server stopped it

    @property
    def speech(self) -> bool:
        return MODES[self.mode].speech_output

    @property
    def deadline(self) -> float:
        return float("inf") if self.timeout is None else self.created + self.timeout

    def cancel(self) -> None:
        """Called when the client goes away: the row stops at the next return to the host."""
        self.cancelled.set()

    def fail(self, status: int, message: str) -> None:
        if not self.finished.is_set():
            self.finished.set()
            self.emit(("error", status, message))


def build_job(gen: Generator, mode: str, prompts: Sequence, options: dict, emit: Callable[[Event], None], *,
              timeout: float | None = None) -> Job:
    """A job for ``prompts`` (:class:`~baichuan_audio_jax.inference.prompts.Prompt`; several for
    TTS, one per text piece) with the settings :meth:`Generator.generate` uses for ``mode``."""
    m = MODES[mode]
    protocol, sampling, max_new, seed = gen._settings(m, options)
    if mode == "tts":
        max_new = options.get("max_new_tokens") or max_new * len(prompts)
    ids, codes = prompts[0].arrays()
    request = Request(ids, codes, start="audio" if mode == "tts" else "text", sampling=sampling, seed=seed,
                      max_new_tokens=max_new, continuations=[p.arrays()[0] for p in prompts[1:]])
    return Job(mode, request, protocol, seed, emit, timeout)


def batch_ladder(max_batch: int) -> tuple[int, ...]:
    """Compiled batch sizes: powers of two below ``max_batch``, then ``max_batch``."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return tuple(out) + (int(max_batch),)


class Scheduler:
    """See the module docstring. ``metrics``: a :class:`~baichuan_audio_jax.serve.metrics.Metrics`
    (or None)."""

    def __init__(self, gen: Generator, *, max_batch: int = 8, max_wait: float = 0.01, max_queue: int = 64,
                 batch_sizes: Sequence[int] | None = None, stream_steps: int = 8, metrics=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        self.gen = gen
        self.engine = gen.engine
        self.max_batch = int(max_batch)
        self.batch_sizes = tuple(sorted(set(batch_sizes or batch_ladder(max_batch))))
        if self.batch_sizes[-1] < self.max_batch:
            raise ValueError(f"batch sizes {self.batch_sizes} do not reach max_batch {max_batch}")
        self.max_wait = float(max_wait)
        self.max_queue = int(max_queue)
        self.stream_steps = int(stream_steps)
        self.metrics = metrics
        self.speech = None  # segments to sound, batched across requests
        if gen.speech is not None and gen.speech.flow_matching is not None:
            self.speech = BucketedSpeech(gen.speech, batch_sizes=self.batch_sizes)
        self._queues: dict[str, collections.deque[Job]] = {m: collections.deque() for m in MODES}
        self._cv = threading.Condition()
        self._speech_q: queue.Queue = queue.Queue()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.running_jobs = 0
        self.batches = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._start_speech_thread()
        t = threading.Thread(target=self._engine_loop, name="serve-engine", daemon=True)
        t.start()
        self._threads.append(t)

    def _start_speech_thread(self) -> None:
        if not any(t.name == "serve-speech" for t in self._threads):
            t = threading.Thread(target=self._speech_loop, name="serve-speech", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            pending = [j for q in self._queues.values() for j in q]
            for q in self._queues.values():
                q.clear()
            self._cv.notify_all()
        for j in pending:
            j.fail(503, "the server is shutting down")
        self._speech_q.put(None)
        for t in self._threads:
            t.join(timeout)

    def warm_up(self, batches: Sequence[Sequence[Job]]) -> None:
        """Runs each batch now, on the calling thread (before :meth:`start`): compiles the
        programs those shapes need, so the first requests do not wait for compilation."""
        self._start_speech_thread()
        for jobs in batches:
            self._run_batch(list(jobs))
            for j in jobs:
                j.finished.wait()

    # ------------------------------------------------------------------ queueing

    @property
    def queue_depth(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self.queue_depth >= self.max_queue:
                raise QueueFull(f"{self.queue_depth} requests are waiting (the limit, --max-queue, is "
                                f"{self.max_queue}); retry later")
            self._queues[job.mode].append(job)
            self._gauge()
            self._cv.notify_all()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queue_depth)
            self.metrics.running.set(self.running_jobs)

    def _take(self) -> list[Job] | None:
        with self._cv:
            while True:
                while not self._stopping and not self.queue_depth:
                    self._cv.wait()
                if self._stopping:
                    return None
                mode = min((q[0].created, m) for m, q in self._queues.items() if q)[1]
                q = self._queues[mode]
                until = q[0].created + self.max_wait
                while len(q) < self.max_batch and not self._stopping and (left := until - time.perf_counter()) > 0:
                    self._cv.wait(left)
                jobs = []
                now = time.perf_counter()
                while q and len(jobs) < self.max_batch:
                    j = q.popleft()
                    if j.cancelled.is_set():
                        self._count_stop("cancelled")
                        j.fail(499, "cancelled: the client went away")
                    elif now > j.deadline:
                        self._count_stop("timeout")
                        j.fail(504, f"timed out after {j.timeout:g} s waiting in the queue")
                    else:
                        jobs.append(j)
                self._gauge()
                if jobs:
                    return jobs

    def _count_stop(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.stopped.labels(reason=reason).inc()

    # ------------------------------------------------------------------ the engine thread

    def _engine_loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._run_batch(jobs)
            except Exception as e:  # keep serving: the batch's requests fail, the server does not
                log.error("batch of %d %s request(s) failed:\n%s", len(jobs), jobs[0].mode, traceback.format_exc())
                for j in jobs:
                    j.fail(500, f"generation failed: {type(e).__name__}: {e}")
            finally:
                self.running_jobs = 0
                self._gauge()

    def _run_batch(self, jobs: list[Job]) -> None:
        eng, gen = self.engine, self.gen
        n = len(jobs)
        size_b = bucket(n, self.batch_sizes)
        protocol = jobs[0].protocol
        idle = Request(np.asarray([gen.cfg.tokens.eos_token_id], np.int32), start="text", max_new_tokens=1)
        requests = [j.request for j in jobs] + [idle] * (size_b - n)
        now = time.perf_counter()
        for j in jobs:
            j.started, j.batch_size = now, n
        self.running_jobs = n
        self.batches += 1
        self._gauge()
        if self.metrics is not None:
            self.metrics.batch_size.observe(n)
            for j in jobs:
                self.metrics.queue_seconds.observe(now - j.created)
        batch = eng.decode(requests, protocol)
        batch.stop(np.arange(n, size_b))  # idle rows only fill the compiled batch size
        open_rows = set(range(n))
        while open_rows:
            finished = batch.step(self.stream_steps)
            rows = batch.rows
            for r in open_rows:
                self._new_text(jobs[r], rows.out_text[r, len(jobs[r].tokens):rows.out_count[r]])
            for seg in finished:
                if seg.row in open_rows:
                    self._segment(jobs[seg.row], seg.codes, seg.text_end)
            now = time.perf_counter()
            for r in sorted(open_rows):
                j = jobs[r]
                if rows.phase[r] != il.DONE and (j.cancelled.is_set() or now > j.deadline):
                    j.stopped = "cancelled" if j.cancelled.is_set() else "timeout"
                    self._count_stop(j.stopped)
                    batch.stop(r)
            for r in sorted(open_rows):
                if rows.phase[r] == il.DONE:
                    open_rows.discard(r)
                    self._finish(jobs[r], rows, r, batch.budgets[r])
                    self.running_jobs = len(open_rows)
                    self._gauge()

    def _new_text(self, job: Job, tokens: np.ndarray) -> None:
        if not len(tokens):
            return
        job.tokens.extend(int(t) for t in tokens)
        text = self.gen.display_text(job.tokens).rstrip("\ufffd")  # hold back a partly decoded character
        if text.startswith(job.text) and len(text) > len(job.text):
            job.emit(("text", text[len(job.text):]))
            job.text = text

    def _segment(self, job: Job, codes: np.ndarray, text_count: int) -> None:
        job.segments.append(codes)
        job.segment_text_ends.append(int(text_count))
        if job.speech and not job.cancelled.is_set():
            self._speech_q.put((job, codes))

    def _finish(self, job: Job, rows: il.RowState, r: int, budget: int) -> None:
        reason = job.stopped or il.FINISH_REASONS[int(rows.finish[r])]
        now = time.perf_counter()
        outcome = Outcome(
            text=self.gen.display_text(job.tokens), text_tokens=list(job.tokens), segments=job.segments,
            segment_text_ends=job.segment_text_ends, finish_reason=reason, new_tokens=int(rows.generated[r]),
            audio_seconds=0.0, timings=dict(queue_seconds=job.started - job.created,
                                            decode_seconds=now - job.started, batch_size=float(job.batch_size),
                                            max_new_tokens=float(budget)))
        if job.speech:
            self._speech_q.put((job, outcome))  # after its last segment's audio
        else:
            self._done(job, outcome)

    def _done(self, job: Job, outcome: Outcome) -> None:
        outcome.timings["total_seconds"] = time.perf_counter() - job.created
        if job.stream is not None:
            outcome.audio_seconds = len(job.stream.waveform) / job.stream.sample_rate
            if job.stream.first_chunk_seconds is not None:
                outcome.timings["first_audio_chunk_seconds"] = job.stream.first_chunk_seconds
        if job.stopped == "timeout":
            job.fail(504, f"timed out after {job.timeout:g} s")
            return
        if job.stopped == "cancelled":
            job.fail(499, "cancelled: the client went away")
            return
        if not job.finished.is_set():
            job.finished.set()
            job.emit(("done", outcome))

    # ------------------------------------------------------------------ the speech thread

    def _speech_loop(self) -> None:
        """Vocodes every segment waiting (of any request) together, then hands each request its
        chunks and, after its last, its outcome, in the order they arrived."""
        while True:
            items = [self._speech_q.get()]
            while True:
                try:
                    items.append(self._speech_q.get_nowait())
                except queue.Empty:
                    break
            if any(item is None for item in items):
                return
            live = [i for i, (job, what) in enumerate(items)
                    if not isinstance(what, Outcome) and not job.cancelled.is_set() and not job.finished.is_set()]
            waves = {}
            try:
                keys = []
                for i in live:
                    job = items[i][0]
                    keys.append(jax.random.fold_in(self._speech_key(job), job.vocoded))
                    job.vocoded += 1
                if live:
                    waves = dict(zip(live, self.speech.to_waves([items[i][1] for i in live], keys)))
            except Exception as e:
                log.error("speech decoding failed:\n%s", traceback.format_exc())
                for i in live:
                    items[i][0].fail(500, f"speech decoding failed: {type(e).__name__}: {e}")
            for i, (job, what) in enumerate(items):
                if isinstance(what, Outcome):
                    self._done(job, what)
                elif i in waves and not job.finished.is_set():
                    self._stream(job).add(what, waves[i])

    @staticmethod
    def _speech_key(job: Job) -> jax.Array:
        return jax.random.fold_in(jax.random.key(job.seed), 0x5EED)  # as Generator._run

    def _stream(self, job: Job) -> "_Stream":
        if job.stream is None:
            def on_chunk(chunk):
                job.emit(("audio", chunk))
                if self.metrics is not None:
                    self.metrics.audio_seconds.inc(len(chunk) / job.stream.sample_rate)

            job.stream = _Stream(on_chunk=on_chunk, start=job.created)
        return job.stream


class _Stream(AudioStream):
    """An :class:`AudioStream` fed waveforms already decoded (in a batch with other requests')."""

    def __init__(self, **kw):
        super().__init__(self._given, **kw)
        self._wave = None

    def _given(self, codes, index):
        return self._wave

    def add(self, codes: np.ndarray, wave: np.ndarray | None = None) -> np.ndarray | None:
        self._wave = wave
        return super().add(codes)
