"""Manifest records as a task reads them, and the reasons a record is skipped.

A bad record never stops an evaluation: it becomes a line ``{"line": N, "skipped": REASON,
"detail": ...}`` of ``DIR/<task>.jsonl`` and is counted under its reason in the report.

==================  ========================================================================
reason              meaning
==================  ========================================================================
``bad_json``        the manifest line is not a JSON object
``missing_field``   a field the task needs is absent or of the wrong type
``empty_reference`` the reference text (transcript, translation, answer) is empty
``bad_field``       a field has a value the task cannot use (a label outside the endings, ...)
``audio_<cause>``   an audio file cannot be used: ``audio_missing``, ``audio_empty``,
                    ``audio_corrupt``, ``audio_too_many_channels``, ``audio_too_short``,
                    ``audio_too_long`` (:data:`baichuan_audio_jax.audio.io.REASONS`)
``too_long``        the prompt does not fit the model's context
``judge_failed``    the judge command gave no score for the record
==================  ========================================================================
"""
from __future__ import annotations

import os
from typing import Any, Iterator

from baichuan_audio_jax.audio.io import AudioError
from baichuan_audio_jax.records import ManifestLineError, read_manifest, resolve_audio_path


class SkipRecord(Exception):
    """Raised while preparing or running a record: the record is counted under ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def audio_skip(e: AudioError) -> SkipRecord:
    return SkipRecord(f"audio_{e.reason}", str(e))


def records(manifest: str) -> Iterator[tuple[int, dict | SkipRecord]]:
    """(line number, record) per non-blank line; a line that is not a JSON object gives a
    ``bad_json`` :class:`SkipRecord` instead."""
    for n, rec in read_manifest(manifest):
        if isinstance(rec, ManifestLineError):
            yield n, SkipRecord("bad_json", str(rec))
        else:
            yield n, rec


def text_field(rec: dict, key: str, *, reference: bool = True) -> str:
    """A string field; ``missing_field`` if absent or not a string, ``empty_reference`` (or
    ``missing_field`` for non-reference fields) if blank."""
    if key not in rec or not isinstance(rec[key], str):
        raise SkipRecord("missing_field", f"no string field {key!r}")
    if not rec[key].strip():
        raise SkipRecord("empty_reference" if reference else "missing_field", f"field {key!r} is empty")
    return rec[key]


def optional_text(rec: dict, key: str, default: str | None = None) -> str | None:
    value = rec.get(key, default)
    if value is not None and not isinstance(value, str):
        raise SkipRecord("missing_field", f"field {key!r} must be a string")
    return value


def audio_field(rec: dict, key: str, manifest: str) -> str:
    """The absolute path of an audio reference; ``missing_field`` / ``audio_missing``."""
    ref = rec.get(key)
    if not isinstance(ref, str) or not ref.strip():
        raise SkipRecord("missing_field", f"no audio path field {key!r}")
    path = resolve_audio_path(manifest, ref)
    if not os.path.isfile(path):
        raise SkipRecord("audio_missing", f"{path} does not exist")
    return path


def string_list(rec: dict, key: str, *, min_items: int = 1) -> list[str]:
    value = rec.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) < min_items or not all(isinstance(v, str) for v in value):
        raise SkipRecord("missing_field", f"field {key!r} must be a list of at least {min_items} string(s)")
    if not all(v.strip() for v in value):
        raise SkipRecord("empty_reference", f"field {key!r} holds an empty string")
    return value


def record_id(rec: dict, line: int) -> Any:
    for key in ("id", "uttid", "utt_id", "key"):
        if isinstance(rec.get(key), (str, int)):
            return rec[key]
    return line
