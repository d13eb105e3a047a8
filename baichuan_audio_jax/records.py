"""Manifest records and their pre-tokenized form.

A **manifest** is a JSONL file, one JSON object per line. Every reference to an audio file is the
value of a key named ``"audio"`` somewhere in the object (top level, or inside lists such as
interleaved segments or chat turns), holding a path relative to the manifest's directory (or
absolute). What the other fields mean is defined per task by the data pipelines; this module only
needs to find the audio.

A **tokenized record** (what ``baichuan-audio tokenize --manifest`` writes to ArrayRecord shards
and the data pipelines read) is a msgpack map::

    {"record": <the manifest line as a JSON string>,
     "codes": [<int16 [N_i, 8] array per audio reference, in document order>],
     "source": "<manifest file name>:<line number>"}

so the pipelines rebuild any task from the original fields plus the codes, without decoding audio.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np
from flax import serialization

AUDIO_KEY = "audio"

def audio_ref_owners(record: Any) -> list[dict]:
    """The objects holding each ``"audio"`` reference, depth-first in document order.

    ``codes[i]`` of a tokenized record belongs to ``audio_ref_owners(record)[i]``, which lets a
    reader attach codes to the segment or turn that refers to the audio.
    """
    out: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == AUDIO_KEY and isinstance(v, str):
                    out.append(node)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(record)
    return out


def audio_refs(record: Any) -> list[str]:
    """Every ``"audio"`` value of a JSON object, depth-first in document order."""
    return [owner[AUDIO_KEY] for owner in audio_ref_owners(record)]


def resolve_audio_path(manifest_path: str, ref: str) -> str:
    """An audio reference made absolute relative to its manifest's directory."""
    if os.path.isabs(ref):
        return ref
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(manifest_path)), ref))


class ManifestLineError(ValueError):
    def __init__(self, path: str, line: int, detail: str):
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {detail}")


def read_manifest(path: str) -> Iterator[tuple[int, dict | ManifestLineError]]:
    """Yields (line number, record) for every non-blank line; a line that is not a JSON object
    yields a :class:`ManifestLineError` instead of raising, so callers can count and go on.
    Raises OSError only when the manifest itself cannot be read."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, ManifestLineError(path, n, f"invalid JSON ({e.msg})")
                continue
            if not isinstance(rec, dict):
                yield n, ManifestLineError(path, n, "line is not a JSON object")
                continue
            yield n, rec


def encode_tokenized(record: dict, codes: list[np.ndarray], source: str) -> bytes:
    refs = audio_refs(record)
    if len(refs) != len(codes):
        raise ValueError(f"{source}: {len(codes)} code arrays for {len(refs)} audio references")
    arrays = []
    for c in codes:
        c = np.asarray(c)
        if c.ndim != 2 or c.shape[1] != 8:
            raise ValueError(f"{source}: codes must be [N, 8], got {c.shape}")
        arrays.append(c.astype(np.int16))
    payload = {"record": json.dumps(record, ensure_ascii=False), "codes": {str(i): a for i, a in enumerate(arrays)},
               "source": source}
    return serialization.msgpack_serialize(payload)


def decode_tokenized(data: bytes) -> tuple[dict, list[np.ndarray], str]:
    """(manifest record, codes per audio reference as int32 [N, 8], source)."""

    payload = serialization.msgpack_restore(data)
    codes = payload.get("codes", {})
    arrays = [np.asarray(codes[str(i)], np.int32) for i in range(len(codes))]
    return json.loads(payload["record"]), arrays, payload.get("source", "")
