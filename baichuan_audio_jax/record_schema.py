"""Manifest records: the fields of every task, and their validation — the one validator that
``data check``, the training pipelines (``data_pipelines``) and ``tokenize --manifest`` share,
with one set of skip reasons (:data:`REASONS`).

A manifest is a JSONL file, one record (JSON object) per line. Audio references are paths
relative to the manifest's directory (or absolute) held in keys named ``"audio"``
(see :mod:`baichuan_audio_jax.records`). The ``task`` field selects the layout; a record with
``audio`` and ``text`` and no ``task`` is ASR, so a plain transcription manifest
(``{"audio": "a.wav", "text": "…"}``) needs no extra field. Fields not listed are ignored
(``uttid``, ``language``, ``sample_rate``, ``voice`` …).

=========  ===============================================================  ==============================
task       fields                                                           sequence (loss in bold)
=========  ===============================================================  ==============================
``asr``    ``audio``, ``text`` (transcript); ``prompt``?                     prompt, audio, **text**
``aqa``    ``audio``, ``response``; ``prompt``?                              prompt, audio, **response**
``s2tt``   ``audio``, ``translation``; ``target_language``?, ``prompt``?     prompt, audio, **translation**
``intlv``  ``segments``: ``{"audio"}`` / ``{"text"}`` objects, alternating   a₁, **t₂**, a₃, **t₄** …
``tts``    ``text``, ``audio``                                               text, **generated audio**
``itts``   ``segments``: ``{"text", "audio"}`` aligned pairs                 t₁, **a₁**, **t₂**, **a₂** …
``audio``  ``audio`` (pure audio)                                            **generated audio**
``chat``   ``turns``: ``{"role", …}`` objects (below)                        system, user, **assistant** …
=========  ===============================================================  ==============================

Layouts and loss rules: :mod:`data_pipelines.sequences` (paper §3.3, spec §6). ``prompt``
overrides the task's configured prompt (``data.prompts``); ``target_language`` fills
``{target_language}`` in the S2TT prompt.

Chat turns (multi-turn speech chat for SFT): ``{"role": "system", "text"}`` (first turn only),
``{"role": "user", "text"?, "audio"?}`` (at least one; text is placed before audio) and
``{"role": "assistant", …}`` with either ``"text"``/``"audio"`` (a spoken answer: its text, then
its audio) or ``"segments"``: a list of ``{"text"?, "audio"?}`` (text-guided speech: each text
piece followed by its audio). At least one assistant turn.
"""
from __future__ import annotations

from typing import Any, Callable

from baichuan_audio_jax.audio.io import REASONS as AUDIO_REASONS

# Why a record is skipped (data_pipelines/skips.py explains each).
REASONS = (*AUDIO_REASONS, "bad_json", "unknown_task", "invalid_record", "invalid_codes", "sequence_too_long")


class RecordError(ValueError):
    """A record that cannot become a training sequence; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str, origin: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.reason, self.detail, self.origin = reason, detail, origin
        super().__init__(f"{origin + ': ' if origin else ''}{reason.replace('_', ' ')}: {detail}")

TASKS = ("asr", "aqa", "s2tt", "intlv", "tts", "itts", "audio", "chat", "text")
ROLES = ("system", "user", "assistant")
# Fields whose strings become model text (at any depth: segments, turns); other string fields
# (``uttid``, ``voice`` …) are metadata.
TEXT_FIELDS = ("text", "prompt", "response", "translation", "target_language")


def record_texts(node: Any) -> list[str]:
    """Every :data:`TEXT_FIELDS` string of a record, in document order (e.g. a tokenizer's corpus)."""
    if isinstance(node, dict):
        return [s for k, v in node.items()
                for s in ([v] if k in TEXT_FIELDS and isinstance(v, str) else record_texts(v))]
    if isinstance(node, list):
        return [s for v in node for s in record_texts(v)]
    return []


def _text(rec: dict, key: str, where: str, *, optional: bool = False, allow_empty: bool = False) -> None:
    if key not in rec:
        if optional:
            return
        raise RecordError("invalid_record", f"{where} lacks field {key!r}")
    v = rec[key]
    if not isinstance(v, str):
        raise RecordError("invalid_record", f"{where} field {key!r} must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise RecordError("invalid_record", f"{where} field {key!r} is empty")


def _audio(rec: dict, where: str, *, optional: bool = False) -> None:
    _text(rec, "audio", where, optional=optional)


def _objects(rec: dict, key: str, where: str) -> list[dict]:
    v = rec.get(key)
    if not isinstance(v, list) or not v:
        raise RecordError("invalid_record", f"{where} field {key!r} must be a non-empty list")
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            raise RecordError("invalid_record", f"{where} {key}[{i}] is not an object")
    return v


def _check_asr(rec: dict) -> None:
    _audio(rec, "asr record")
    _text(rec, "text", "asr record")
    _text(rec, "prompt", "asr record", optional=True, allow_empty=True)


def _check_aqa(rec: dict) -> None:
    _audio(rec, "aqa record")
    _text(rec, "response", "aqa record")
    _text(rec, "prompt", "aqa record", optional=True, allow_empty=True)


def _check_s2tt(rec: dict) -> None:
    _audio(rec, "s2tt record")
    _text(rec, "translation", "s2tt record")
    _text(rec, "prompt", "s2tt record", optional=True, allow_empty=True)
    _text(rec, "target_language", "s2tt record", optional=True)


def _check_intlv(rec: dict) -> None:
    prev = None
    for i, seg in enumerate(_objects(rec, "segments", "intlv record")):
        kinds = [k for k in ("audio", "text") if k in seg]
        if len(kinds) != 1:
            raise RecordError("invalid_record", f"intlv segments[{i}] must have exactly one of 'audio', 'text'")
        if kinds[0] == prev:
            raise RecordError("invalid_record", f"intlv segments[{i}]: two {prev} segments in a row (must alternate)")
        (_audio if kinds[0] == "audio" else lambda s, w: _text(s, "text", w))(seg, f"intlv segments[{i}]")
        prev = kinds[0]


def _check_tts(rec: dict) -> None:
    _text(rec, "text", "tts record")
    _audio(rec, "tts record")


def _check_itts(rec: dict) -> None:
    for i, seg in enumerate(_objects(rec, "segments", "itts record")):
        _text(seg, "text", f"itts segments[{i}]")
        _audio(seg, f"itts segments[{i}]")


def _check_text(rec: dict) -> None:
    _text(rec, "text", "text record")
    if "audio" in rec:
        raise RecordError("invalid_record", "text record: pure text has no 'audio' (an ASR record has no 'task')")


def _check_audio(rec: dict) -> None:
    _audio(rec, "audio record")


def _check_chat(rec: dict) -> None:
    turns = _objects(rec, "turns", "chat record")
    if not any(t.get("role") == "assistant" for t in turns):
        raise RecordError("invalid_record", "chat record has no assistant turn")
    for i, turn in enumerate(turns):
        where = f"chat turns[{i}]"
        role = turn.get("role")
        if role not in ROLES:
            raise RecordError("invalid_record", f"{where} role {role!r} is not one of {list(ROLES)}")
        if role == "system":
            if i != 0:
                raise RecordError("invalid_record", f"{where}: a system turn may only come first")
            _text(turn, "text", where)
        elif "segments" in turn:
            if role != "assistant":
                raise RecordError("invalid_record", f"{where}: only assistant turns have 'segments'")
            for j, seg in enumerate(_objects(turn, "segments", where)):
                _speech_content(seg, f"{where} segments[{j}]")
        else:
            _speech_content(turn, where)


def _speech_content(obj: dict, where: str) -> None:
    if "text" not in obj and "audio" not in obj:
        raise RecordError("invalid_record", f"{where} has neither 'text' nor 'audio'")
    _text(obj, "text", where, optional=True)
    _audio(obj, where, optional=True)


_CHECKS: dict[str, Callable[[dict], None]] = dict(
    asr=_check_asr, aqa=_check_aqa, s2tt=_check_s2tt, intlv=_check_intlv, tts=_check_tts,
    itts=_check_itts, audio=_check_audio, chat=_check_chat, text=_check_text)


def task_of(record: dict) -> str:
    """The record's task (``asr`` when the field is absent); raises :class:`RecordError`."""
    task = record.get("task")
    if task is None:
        if "audio" in record and "text" in record:
            return "asr"
        raise RecordError("unknown_task", "no 'task' field, and not an ASR record ('audio' + 'text')")
    if not isinstance(task, str) or task.lower() not in _CHECKS:
        raise RecordError("unknown_task", f"task {task!r} is not one of {list(TASKS)}")
    return task.lower()


def validate(record: Any) -> str:
    """Checks a record's fields for its task and returns the task; raises :class:`RecordError`
    (reason ``unknown_task`` or ``invalid_record``) naming the offending field."""
    if not isinstance(record, dict):
        raise RecordError("bad_json", "line is not a JSON object")
    task = task_of(record)
    _CHECKS[task](record)
    return task
