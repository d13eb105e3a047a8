"""Training manifests of the demo, derived from a corpus manifest of transcribed utterances.

* ASR: every usable record as is (speech in, transcript out);
* TTS: the same records with ``"task": "tts"`` (transcript in, speech out);
* ITTS: utterances of one speaker (``voice`` and ``speed`` fields, when present) grouped
  ``group`` at a time into interleaved text-to-speech records, so the model also learns to speak
  a sentence after a sentence it has already spoken.

Audio paths are written relative to the new manifest. Records the corpus manifest cannot give
(malformed lines, no audio or no text) are counted, never silently dropped.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import random

import numpy as np

from baichuan_audio_jax.inference.tokenize_corpus import ShardWriter, read_shards
from baichuan_audio_jax.records import (
    ManifestLineError,
    decode_tokenized,
    encode_tokenized,
    read_manifest,
    resolve_audio_path,
)


def _relocated(manifest: str, audio: str, out_dir: str) -> str:
    return os.path.relpath(resolve_audio_path(manifest, audio), out_dir)


def write_task_manifests(manifest: str, out_dir: str, *, group: int = 3, seed: int = 0) -> dict:
    """Writes ``asr.jsonl``, ``tts.jsonl`` and ``itts.jsonl`` into ``out_dir``; returns
    ``{"manifests": {task: path}, "records": {task: n}, "skipped": {reason: n}}``."""
    os.makedirs(out_dir, exist_ok=True)
    usable, skipped = [], collections.Counter()
    for _, rec in read_manifest(manifest):
        if isinstance(rec, ManifestLineError):
            skipped["invalid_record"] += 1
        elif not isinstance(rec.get("audio"), str) or not str(rec.get("text", "")).strip():
            skipped["no_audio_or_text"] += 1
        else:
            usable.append(dict(rec, audio=_relocated(manifest, rec["audio"], out_dir)))
    if not usable:
        raise ValueError(f"{manifest}: no record with audio and text ({dict(skipped)} skipped)")
    by_speaker: dict[tuple, list[dict]] = collections.defaultdict(list)
    for rec in usable:
        by_speaker[(rec.get("voice"), rec.get("speed"))].append(rec)
    rng = random.Random(seed)
    itts = []
    for key in sorted(by_speaker, key=str):
        recs = list(by_speaker[key])
        rng.shuffle(recs)
        for i in range(0, len(recs) - group + 1, group):
            itts.append({"task": "itts", "segments": [{"text": r["text"], "audio": r["audio"]}
                                                      for r in recs[i:i + group]]})
    records = {
        "asr": [{"audio": r["audio"], "text": r["text"]} for r in usable],
        "tts": [{"task": "tts", "text": r["text"], "audio": r["audio"]} for r in usable],
        "itts": itts,
    }
    paths = {}
    for task, recs in records.items():
        paths[task] = os.path.join(out_dir, f"{task}.jsonl")
        with open(paths[task], "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"manifests": paths, "records": {k: len(v) for k, v in records.items()}, "skipped": dict(skipped)}


def transcripts(manifest: str) -> list[tuple[str, str]]:
    """(audio path, transcript) of every record with both."""
    out = []
    for _, rec in read_manifest(manifest):
        if isinstance(rec, dict) and isinstance(rec.get("audio"), str) and str(rec.get("text", "")).strip():
            out.append((resolve_audio_path(manifest, rec["audio"]), rec["text"]))
    return out


def write_concatenated_asr(shard_dir: str, out_dir: str, *, count: int, parts: int = 2, seed: int = 0) -> dict:
    """ASR records made of ``parts`` tokenized utterances back to back (their codes concatenated,
    their transcripts joined by a space), ``count`` of them drawn at random from the ASR shards in
    ``shard_dir``, written as tokenized ArrayRecord shards to ``out_dir``.

    An augmentation for a small corpus: a few hundred whole utterances are easy to memorise, while
    new combinations of them can only be transcribed by mapping stretches of audio to words. (The
    codes of a concatenation are not exactly the codes of the concatenated audio, since the encoder
    sees each utterance alone; the words' codes are the same either way.)"""



    items = []
    for data in read_shards(sorted(glob.glob(os.path.join(shard_dir, "*.array_record")))):
        record, codes, _ = decode_tokenized(data)
        if len(codes) == 1 and codes[0].shape[0] and str(record.get("text", "")).strip():
            items.append((record["text"].strip(), codes[0]))
    if len(items) < parts:
        raise ValueError(f"{shard_dir}: {len(items)} tokenized ASR records, need at least {parts}")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = ShardWriter(out_dir, "asr_concatenated", records_per_shard=max(1, count))
    for i in range(count):
        picked = [items[j] for j in rng.choice(len(items), size=parts, replace=False)]
        record = {"audio": f"concatenation_{i}", "text": " ".join(t for t, _ in picked)}
        writer.write(encode_tokenized(record, [np.concatenate([c for _, c in picked])], f"concatenation {i}"))
    writer.close()
    return {"records": count, "from": len(items)}
