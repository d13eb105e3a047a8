"""What the demo's model learned: held-out transcription and speech synthesis, by word error rate.

* ``asr``: every held-out utterance (or the first ``asr_utterances``) transcribed with the
  reference's ASR settings (greedy); WER against the transcripts (jiwer, words as written: the
  demo corpus is lower case without punctuation), plus every hypothesis;
* ``tts``: the first ``tts_sentences`` held-out transcripts spoken (``tts_<i>.wav`` at 24 kHz),
  each transcribed back by the same model (resampled to 16 kHz by the tokenizer's front end):
  the round-trip WER says whether the speech carries the words. The generated codes are also
  transcribed directly (``codes_round_trip_wer``): the difference between the two is what the
  way from codes to sound (audio decoder, flow matching, Griffin-Lim, re-encoding) loses.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import jiwer
import numpy as np
from tqdm import tqdm

from baichuan_audio_jax.demo.corpus import transcripts
from baichuan_audio_jax.inference.generator import Generator
from baichuan_audio_jax.inference.waveform import write_wav


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return float(jiwer.wer(references, hypotheses))


def _wer_of(entries: list[dict], key: str) -> float | None:
    if not entries:
        return None
    return round(word_error_rate([e["text"] for e in entries], [e[key] for e in entries]), 4)


def evaluate_bundle(bundle: str, manifest: str, out_dir: str, *, asr_utterances: int = 0, tts_sentences: int = 4,
                    log: Callable[[str], None] = print, progress: bool = True) -> dict:
    gen = Generator.from_bundle(bundle)
    pairs = transcripts(manifest)
    if not pairs:
        raise ValueError(f"{manifest}: no record with audio and text to evaluate on")
    asr_pairs = pairs[:asr_utterances] if asr_utterances > 0 else pairs
    t0 = time.perf_counter()
    hyps, limited = [], 0
    for audio, _ in tqdm(asr_pairs, desc="transcribe held-out", unit="utt", disable=not progress):
        r = gen.asr(audio)
        hyps.append(r.text.strip())
        limited += r.stopped_at_limit
    refs = [t for _, t in asr_pairs]
    asr = {"utterances": len(refs), "wer": round(word_error_rate(refs, hyps), 4),
           "stopped_at_length_limit": limited, "seconds": round(time.perf_counter() - t0, 1),
           "examples": [{"audio": os.path.basename(a), "reference": ref, "hypothesis": h}
                        for (a, ref), h in zip(asr_pairs, hyps)]}
    log(f"held-out ASR: WER {asr['wer']:.1%} over {len(refs)} utterances")

    t0 = time.perf_counter()
    spoken = []
    for i, (_, text) in enumerate(pairs[:tts_sentences]):
        r = gen.tts(text, seed=i)
        entry = {"text": text, "finish_reason": r.finish_reason, "frames": sum(len(s) for s in r.segments),
                 "transcribed_codes": gen.asr(np.concatenate(r.segments)).text.strip() if r.segments else ""}
        if r.waveform is not None and len(r.waveform):
            path = write_wav(os.path.join(out_dir, f"tts_{i}.wav"), r.waveform)
            entry.update(wav=os.path.basename(path), seconds=round(len(r.waveform) / r.sample_rate, 2),
                         transcribed=gen.asr(path).text.strip())
        else:
            entry["transcribed"] = ""
        spoken.append(entry)
        log(f"spoke {text!r} -> {entry.get('wav', 'no audio')} ({entry['frames']} frames); "
            f"heard back: {entry['transcribed']!r}")
    tts = {"sentences": len(spoken), "seconds": round(time.perf_counter() - t0, 1),
           "round_trip_wer": _wer_of(spoken, "transcribed"),
           "codes_round_trip_wer": _wer_of(spoken, "transcribed_codes"),
           "examples": spoken}
    if spoken:
        log(f"TTS round trip: WER {tts['round_trip_wer']:.1%} through the waveform, "
            f"{tts['codes_round_trip_wer']:.1%} from the generated codes, over {len(spoken)} sentences")
    return {"asr": asr, "tts": tts}
