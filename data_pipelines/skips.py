"""Skipped samples: why a record was not turned into a training sequence, counted by reason.

A bad record never stops a pipeline and never disappears silently. Every stage that can reject a
record raises :class:`RecordError` with one of :data:`REASONS`; the pipeline turns it into a
:class:`Skip` marker that flows downstream like an example until :class:`CountSkipsIterDataset`
removes it, counts it (the counts are part of the iterator state, so they survive a resume) and
logs it. ``data check`` uses the same reasons.

=====================  ==========================================================================
reason                 meaning
=====================  ==========================================================================
``missing``            an audio file does not exist
``empty``              an audio file has zero bytes or no samples
``corrupt``            an audio file cannot be decoded or is truncated
``nonfinite``          an audio file holds NaN or infinite samples (float formats)
``too_many_channels``  more than two channels
``too_short``          too short to give one audio token
``too_long``           longer than ``data.max_audio_seconds``
``bad_json``           a manifest line is not a JSON object
``unknown_task``       the ``task`` field names no known task
``invalid_record``     a field a task needs is absent, empty or of the wrong type
``invalid_codes``      audio codes of the wrong shape or outside the codebooks
``sequence_too_long``  the built sequence exceeds ``data.seq_len``
=====================  ==========================================================================

An audio file at another sample rate is not skipped: it is resampled.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Mapping

import grain

from baichuan_audio_jax.record_schema import REASONS, RecordError

__all__ = ["REASONS", "RecordError", "Skip", "SkipCounter", "CountSkipsIterDataset"]


log = logging.getLogger("data_pipelines")


@dataclasses.dataclass(frozen=True)
class Skip:
    """Stands in for a record that was rejected, until it is counted."""

    reason: str
    detail: str
    origin: str

    @classmethod
    def of(cls, error: RecordError, origin: str = "") -> "Skip":
        return cls(error.reason, error.detail, error.origin or origin)


class SkipCounter:
    """Counts of skipped records by reason, with a bounded log of examples."""

    LOGGED_PER_REASON = 5

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts: collections.Counter = collections.Counter(dict(counts or {}))

    def add(self, skip: Skip) -> None:
        self.counts[skip.reason] += 1
        n = self.counts[skip.reason]
        if n <= self.LOGGED_PER_REASON:
            log.warning("skipped %s (%s): %s", skip.origin, skip.reason, skip.detail)
        if n == self.LOGGED_PER_REASON or (n > self.LOGGED_PER_REASON and (n & (n - 1)) == 0):
            log.warning("skipped so far: %s", self.summary())

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.counts.items())}

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.as_dict().items()) or "none"


class _CountSkipsIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, max_consecutive: int):
        super().__init__(parent)
        self.counter = SkipCounter()
        self._max_consecutive = max_consecutive

    def __next__(self):
        run = 0
        while True:
            element = next(self._parent)
            if not isinstance(element, Skip):
                return element
            self.counter.add(element)
            run += 1
            if run >= self._max_consecutive:
                raise RuntimeError(
                    f"{run} consecutive records were skipped (last: {element.origin}: {element.reason}, "
                    f"{element.detail}); skipped so far: {self.counter.summary()}. "
                    "Run `baichuan-audio data check` on the manifests.")

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "skipped": self.counter.as_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.counter = SkipCounter(state.get("skipped", {}))


class CountSkipsIterDataset(grain.IterDataset):
    """Drops :class:`Skip` markers, counting them; fails after ``max_consecutive`` in a row
    (a source where nothing is usable would otherwise be read forever)."""

    def __init__(self, parent: grain.IterDataset, *, max_consecutive: int = 10_000):
        super().__init__(parent)
        self._max_consecutive = max_consecutive

    def __iter__(self) -> _CountSkipsIterator:
        return _CountSkipsIterator(self._parent.__iter__(), self._max_consecutive)

    def __str__(self) -> str:
        return "CountSkipsIterDataset"
