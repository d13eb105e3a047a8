"""What the demo's model learned: held-out transcription and speech synthesis, by word error rate,
scored by the evaluation suite runner (:mod:`baichuan_audio_jax.evaluation`) as ``baichuan-audio
eval`` scores any bundle.

* ``asr``: every held-out utterance (or the first ``asr_utterances``) transcribed with the
  reference's ASR prompt, greedily and in batches; WER against the transcripts (jiwer, after the
  evaluation normaliser: the demo corpus is lower case without punctuation, so it changes nothing),
  plus every hypothesis;
* ``tts``: the first ``tts_sentences`` held-out transcripts spoken (``eval/tts/<line>.wav`` at
  24 kHz), each transcribed back by the same model (resampled to 16 kHz by the tokenizer's front
  end): the round-trip WER says whether the speech carries the words. The generated codes are also
  transcribed directly (``codes_round_trip_wer``): the difference between the two is what the way
  from codes to sound (audio decoder, flow matching, Griffin-Lim, re-encoding) loses.

:func:`demo_suite` is the suite (also usable with ``baichuan-audio eval``); :func:`cloze_records`
makes spoken-cloze style records from a corpus manifest by swapping each sentence's last word for
one of a word class that never ends a sentence of the corpus grammar.
"""
from __future__ import annotations

import json
import os
import random
import time
from typing import Callable

import soundfile as sf

from baichuan_audio_jax.demo.corpus import transcripts
from baichuan_audio_jax.evaluation.models import EvalModel
from baichuan_audio_jax.evaluation.runner import Context, run_task
from baichuan_audio_jax.evaluation.suite import Suite, TaskSpec
from data_pipelines.demo_corpus.make_corpus import COLOURS, DIGITS, DIRECTIONS, OBJECTS

ASR_MAX_NEW_TOKENS = 64  # the demo's transcripts are at most 5 words
TTS_MAX_NEW_TOKENS = 500



def demo_suite(manifest: str, *, asr_utterances: int = 0, tts_sentences: int = 4) -> Suite:
    manifest = os.path.abspath(manifest)
    tasks = [TaskSpec("asr", "asr", manifest, {"language": "en", "max_new_tokens": ASR_MAX_NEW_TOKENS,
                                               "limit": int(asr_utterances)})]
    if tts_sentences > 0:
        tasks.append(TaskSpec("tts", "tts", manifest, {"language": "en", "max_new_tokens": TTS_MAX_NEW_TOKENS,
                                                       "limit": int(tts_sentences)}))
    return Suite(manifest, tuple(tasks))


def cloze_records(manifest: str, seed: int = 0, relative_to: str | None = None) -> list[dict]:
    """One record per transcript: context = all but the last word (``context_audio``: the whole
    utterance's audio, relative to ``relative_to``, default the manifest's directory); endings = the
    true last word and a word of a class that never ends a sentence (objects -> digits,
    directions -> colours, digits -> objects); the true ending's position alternates."""
    wrong_for = {**{w: DIGITS for w in OBJECTS}, **{w: COLOURS for w in DIRECTIONS}, **{w: OBJECTS for w in DIGITS}}
    rng = random.Random(seed)
    out = []
    for i, (audio, text) in enumerate(transcripts(manifest)):
        words = text.split()
        if len(words) < 2 or words[-1] not in wrong_for:
            continue
        endings = [words[-1], rng.choice(wrong_for[words[-1]])]
        label = i % 2
        if label:
            endings.reverse()
        out.append({"context": " ".join(words[:-1]), "endings": endings, "label": label,
                    "context_audio": os.path.relpath(audio, relative_to or os.path.dirname(os.path.abspath(manifest)))})
    return out


def evaluate_bundle(bundle: str, manifest: str, out_dir: str, *, asr_utterances: int = 0, tts_sentences: int = 4,
                    log: Callable[[str], None] = print, progress: bool = True, batch_size: int = 8) -> dict:
    if not transcripts(manifest):
        raise ValueError(f"{manifest}: no record with audio and text to evaluate on")
    suite = demo_suite(manifest, asr_utterances=asr_utterances, tts_sentences=tts_sentences)
    eval_dir = os.path.join(out_dir, "eval")
    for spec in suite.tasks:  # the demo evaluates afresh every time it runs
        path = os.path.join(eval_dir, f"{spec.name}.jsonl")
        if os.path.exists(path):
            os.remove(path)
    ctx = Context(EvalModel.from_bundle(bundle, batch_size=batch_size), eval_dir, batch_size=batch_size,
                  progress=progress, log=log)

    def lines(name: str) -> list[dict]:
        with open(os.path.join(eval_dir, f"{name}.jsonl"), encoding="utf-8") as f:
            return sorted((json.loads(x) for x in f), key=lambda e: e["line"])

    t0 = time.perf_counter()
    rep = run_task(ctx, suite.tasks[0])
    scored = [e for e in lines("asr") if "hypothesis" in e]
    asr = {"utterances": rep["count"], "wer": round(rep["wer"], 4),
           "stopped_at_length_limit": rep["stopped_at_length_limit"], "seconds": round(time.perf_counter() - t0, 1),
           "skipped": rep["skipped"],
           "examples": [{"audio": os.path.basename(e["audio"]), "reference": e["reference"],
                         "hypothesis": e["hypothesis"]} for e in scored]}
    log(f"held-out ASR: WER {asr['wer']:.1%} over {asr['utterances']} utterances")
    tts = {"sentences": 0, "seconds": 0.0, "round_trip_wer": None, "codes_round_trip_wer": None, "examples": []}
    if len(suite.tasks) > 1:
        t0 = time.perf_counter()
        rep = run_task(ctx, suite.tasks[1])
        spoken = []
        for e in lines("tts"):
            if "skipped" in e:
                continue
            entry = {"text": e["reference"], "finish_reason": e["finish_reason"], "frames": e["frames"],
                     "transcribed_codes": e["hypothesis_codes"], "transcribed": e["hypothesis"]}
            if "wav" in e:
                path = os.path.join(eval_dir, e["wav"])
                entry.update(wav=os.path.relpath(path, out_dir), seconds=round(sf.info(path).frames / 24000, 2))
            spoken.append(entry)
            log(f"spoke {entry['text']!r} -> {entry.get('wav', 'no audio')} ({entry['frames']} frames); "
                f"heard back: {entry['transcribed']!r}")
        tts = {"sentences": len(spoken), "seconds": round(time.perf_counter() - t0, 1),
               "round_trip_wer": round(rep["wer"], 4) if spoken else None,
               "codes_round_trip_wer": round(rep["codes_wer"], 4) if spoken else None, "examples": spoken}
        if spoken:
            log(f"TTS round trip: WER {tts['round_trip_wer']:.1%} through the waveform, "
                f"{tts['codes_round_trip_wer']:.1%} from the generated codes, over {len(spoken)} sentences")
    return {"asr": asr, "tts": tts}
