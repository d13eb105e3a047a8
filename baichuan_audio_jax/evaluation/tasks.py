"""The task types of a suite. Each turns manifest records into items (:class:`SkipRecord` for a bad
one), runs items in batches, and summarises the per-record results into the report's metrics.

========== ============================================= =============================================
type       record fields                                 report metrics
========== ============================================= =============================================
asr        ``audio``, ``text``; ``language``?            ``wer``, ``cer`` (``metric`` says which is
                                                         the task's: CER for zh/ja/..., else WER)
s2tt       ``audio``, ``translation``;                   ``bleu``, ``chrf`` (sacrebleu; its ``zh``
           ``target_language``?, ``prompt``?             tokeniser for Chinese targets)
tts        ``text``; ``language``?                       ``wer``, ``cer`` of the synthesised speech
                                                         transcribed; ``codes_wer``, ``codes_cer``
                                                         from the generated codes directly
cloze      ``context`` (t2t) or ``context_audio``        ``accuracy`` (total log-likelihood),
           (s2t, s2s); ``endings`` (t2t, s2t) or         ``accuracy_length_normalized`` (per token
           ``ending_audio`` (s2s); ``label``             or frame)
spoken_qa  ``audio``; ``answers`` (or ``answer``);       ``exact_match``, ``accuracy`` (a reference
           ``question``? (text, for the judge)           answer contained in the reply);
                                                         ``judge_score`` with ``judge_command``
tokenizer  ``audio``                                     ``mel_mae``, ``coarse_mae``,
                                                         ``codes_used_fraction``, per codebook use
========== ============================================= =============================================

Every report entry also has ``count`` (records scored) and ``skipped`` (reason -> records).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
from collections import Counter
from typing import Any, Callable

import numpy as np

from baichuan_audio_jax.evaluation import metrics
from baichuan_audio_jax.evaluation import tokenizer as tok_eval
from baichuan_audio_jax.evaluation.inputs import (
    SkipRecord,
    audio_field,
    optional_text,
    record_id,
    string_list,
    text_field,
)
from baichuan_audio_jax.evaluation.models import Sequence_
from baichuan_audio_jax.evaluation.normalize import Normalizer, is_character_language
from baichuan_audio_jax.inference.prompts import ASR_INSTRUCTION, Prompt
from baichuan_audio_jax.inference.waveform import write_wav

DEFAULT_S2TT_PROMPT = "将语音翻译为{target_language}:"  # data.prompts.s2tt of the training configs
COMMON_OPTIONS = {"batch_size": "records per batch (default: the run's --batch-size)",
                  "limit": "score only the first N usable records (0: all)"}


@dataclasses.dataclass(frozen=True)
class TaskType:
    name: str
    options: dict[str, str]
    prepare: Callable  # (spec, record, line) -> item dict (raises SkipRecord)
    run: Callable  # (ctx, spec, items) -> list[result dict | SkipRecord]
    summarise: Callable  # (spec, results) -> metrics dict


# ----------------------------------------------------------------------------- shared

def _base(rec: dict, line: int) -> dict:
    return {"line": line, "id": record_id(rec, line)}


def _language(spec, rec: dict) -> str | None:
    return optional_text(rec, "language") or spec.option("language")


def _normalizer(spec) -> Normalizer:
    return Normalizer.from_options(spec.option("normalize", True))


def _audio_length(path: str) -> int:
    return os.path.getsize(path)


def _encode_items(ctx, items: list[dict], key: str = "audio") -> list[np.ndarray | SkipRecord]:
    """Codes of each item's audio file (batched); a SkipRecord for a file that cannot be used."""
    model = ctx.model
    waves: list[Any] = []
    for it in items:
        try:
            waves.append(model.load_audio(it[key]))
        except SkipRecord as e:
            waves.append(e)
    good = [w for w in waves if not isinstance(w, SkipRecord)]
    codes = iter(model.encode(good)) if good else iter(())
    return [w if isinstance(w, SkipRecord) else next(codes) for w in waves]


def _decode_prompts(ctx, spec, items, prompts: list, mode: str) -> list[dict | SkipRecord]:
    """Runs the prompts that were built (others are SkipRecords), returns per-item partial results."""
    model = ctx.model
    todo = []
    for i, p in enumerate(prompts):
        if isinstance(p, Prompt):
            try:
                model.check_prompt(p)
                todo.append(i)
            except SkipRecord as e:
                prompts[i] = e
    texts = model.generate_text([prompts[i] for i in todo], mode,
                                max_new_tokens=int(spec.option("max_new_tokens", 128)))
    out: list[Any] = list(prompts)
    for i, (text, finish) in zip(todo, texts):
        out[i] = {"hypothesis": text, "finish_reason": finish}
    return out


def _error_rate_summary(refs, hyps, langs, norm: Normalizer, prefix: str = "") -> dict:
    r = [norm(t, lang) for t, lang in zip(refs, langs)]
    h = [norm(t, lang) for t, lang in zip(hyps, langs)]
    rates = metrics.error_rates(r, h)
    return {f"{prefix}wer": rates["wer"], f"{prefix}cer": rates["cer"]}


def _primary(spec, langs) -> str:
    lang = spec.option("language") or (Counter(langs).most_common(1)[0][0] if langs else None)
    return "cer" if is_character_language(lang) else "wer"


# ----------------------------------------------------------------------------- asr

def _asr_prepare(spec, rec, line):
    return {**_base(rec, line), "audio": audio_field(rec, "audio", spec.manifest),
            "reference": text_field(rec, "text"), "language": _language(spec, rec),
            "length": _audio_length(audio_field(rec, "audio", spec.manifest))}


def _asr_run(ctx, spec, items):
    instruction = spec.option("instruction", ASR_INSTRUCTION)
    prompts = [c if isinstance(c, SkipRecord) else ctx.model.gen.prompts.asr(c, instruction)
               for c in _encode_items(ctx, items)]
    return _decode_prompts(ctx, spec, items, prompts, "asr")


def _asr_summarise(spec, results):
    langs = [r.get("language") for r in results]
    out = _error_rate_summary([r["reference"] for r in results], [r["hypothesis"] for r in results], langs,
                              _normalizer(spec))
    out["metric"] = _primary(spec, langs)
    out["stopped_at_length_limit"] = sum(r["finish_reason"] in ("length", "context") for r in results)
    return out


ASR_OPTIONS = {"language": "language of every record without a 'language' field (zh/ja/...: CER)",
               "instruction": f"the ASR instruction (default {ASR_INSTRUCTION!r})",
               "max_new_tokens": "new-token limit per record (default 128)",
               "normalize": "true/false or {step: bool} (evaluation/normalize.py)"}


# ----------------------------------------------------------------------------- s2tt

def _s2tt_prepare(spec, rec, line):
    target = optional_text(rec, "target_language") or spec.option("target_language")
    prompt = optional_text(rec, "prompt") or spec.option("prompt", DEFAULT_S2TT_PROMPT)
    if "{target_language}" in prompt and not target:
        raise SkipRecord("missing_field", "no 'target_language' (record or task option) for the prompt")
    path = audio_field(rec, "audio", spec.manifest)
    return {**_base(rec, line), "audio": path, "reference": text_field(rec, "translation"),
            "target_language": target, "prompt": prompt.replace("{target_language}", target or ""),
            "length": _audio_length(path)}


def _s2tt_run(ctx, spec, items):
    prompts = [c if isinstance(c, SkipRecord) else ctx.model.gen.prompts.asr(c, it["prompt"])
               for c, it in zip(_encode_items(ctx, items), items)]
    return _decode_prompts(ctx, spec, items, prompts, "asr")


def _s2tt_summarise(spec, results):
    refs, hyps = [r["reference"] for r in results], [r["hypothesis"] for r in results]
    langs = [r.get("target_language") for r in results]
    lang = spec.option("target_language") or Counter(langs).most_common(1)[0][0]
    return {"bleu": metrics.bleu(refs, hyps, lang), "chrf": metrics.chrf(refs, hyps),
            "bleu_tokenizer": metrics.bleu_tokenizer(lang)}


S2TT_OPTIONS = {"target_language": "target language of records without 'target_language' (fills the prompt)",
                "prompt": f"instruction (default {DEFAULT_S2TT_PROMPT!r})",
                "max_new_tokens": "new-token limit per record (default 128)"}


# ----------------------------------------------------------------------------- tts

def _tts_prepare(spec, rec, line):
    text = text_field(rec, "text")
    return {**_base(rec, line), "reference": text, "language": _language(spec, rec), "length": len(text)}


def _tts_run(ctx, spec, items):
    model, asr = ctx.model, ctx.asr_model(spec)
    audio_dir = os.path.join(ctx.out_dir, spec.name)
    os.makedirs(audio_dir, exist_ok=True)
    out: list[Any] = []
    for it in items:
        r = model.gen.tts(it["reference"], seed=int(spec.option("seed", 0)),
                          max_new_tokens=int(spec.option("max_new_tokens", 500)))
        codes = np.concatenate(r.segments) if r.segments else np.zeros((0, 8), np.int32)
        entry = {"frames": int(len(codes)), "finish_reason": r.finish_reason, "codes": codes}
        if r.waveform is not None and len(r.waveform):

            entry["wav"] = write_wav(os.path.join(audio_dir, f"{it['line']}.wav"), r.waveform)
        out.append(entry)
    # transcribe the speech and the codes with the ASR model, batched
    instruction = spec.option("instruction", ASR_INSTRUCTION)
    wave_items = [{"audio": e["wav"]} for e in out if "wav" in e]
    wave_codes = iter(_encode_items(ctx.with_model(asr), wave_items)) if wave_items else iter(())
    wave_prompts, code_prompts = [], []
    for e in out:
        c = next(wave_codes) if "wav" in e else SkipRecord("audio_empty", "no speech was generated")
        wave_prompts.append(c if isinstance(c, SkipRecord) else asr.gen.prompts.asr(c, instruction))
        code_prompts.append(asr.gen.prompts.asr(e["codes"], instruction) if len(e["codes"])
                            else SkipRecord("audio_empty", "no frames were generated"))
    heard = _decode_prompts(ctx.with_model(asr), spec, items, wave_prompts, "asr")
    heard_codes = _decode_prompts(ctx.with_model(asr), spec, items, code_prompts, "asr")
    results = []
    for e, h, hc in zip(out, heard, heard_codes):
        e.pop("codes")
        if "wav" in e:
            e["wav"] = os.path.relpath(e["wav"], ctx.out_dir)
        e["hypothesis"] = h["hypothesis"] if isinstance(h, dict) else ""
        e["hypothesis_codes"] = hc["hypothesis"] if isinstance(hc, dict) else ""
        results.append(e)
    return results


def _tts_summarise(spec, results):
    langs = [r.get("language") for r in results]
    refs = [r["reference"] for r in results]
    norm = _normalizer(spec)
    out = _error_rate_summary(refs, [r["hypothesis"] for r in results], langs, norm)
    out.update(_error_rate_summary(refs, [r["hypothesis_codes"] for r in results], langs, norm, "codes_"))
    out["metric"] = _primary(spec, langs)
    out["frames"] = int(sum(r["frames"] for r in results))
    return out


TTS_OPTIONS = {**ASR_OPTIONS, "asr_checkpoint": "bundle that transcribes the speech (default: the evaluated one)",
               "seed": "sampling seed (greedy decoding ignores it)",
               "max_new_tokens": "new-token limit of synthesis and of each transcription (default 500 / 128)"}


# ----------------------------------------------------------------------------- cloze

CLOZE_MODES = ("t2t", "s2t", "s2s")


def _cloze_prepare(spec, rec, line):
    mode = spec.option("mode", "t2t")
    if mode not in CLOZE_MODES:
        raise ValueError(f"task {spec.name!r}: mode {mode!r} is not one of {CLOZE_MODES}")
    item = _base(rec, line)
    if mode == "t2t":
        item["context"] = text_field(rec, "context", reference=False)
    else:
        item["context_audio"] = audio_field(rec, "context_audio", spec.manifest)
    if mode == "s2s":
        refs = string_list(rec, "ending_audio", min_items=2)
        item["ending_audio"] = [audio_field({"a": r}, "a", spec.manifest) for r in refs]
        n = len(refs)
    else:
        item["endings"] = string_list(rec, "endings", min_items=2)
        n = len(item["endings"])
    label = rec.get("label")
    if not isinstance(label, int) or isinstance(label, bool):
        raise SkipRecord("missing_field", "no integer field 'label'")
    if not 0 <= label < n:
        raise SkipRecord("bad_field", f"label {label} is not the index of one of the {n} endings")
    item["label"] = label
    item["length"] = len(json.dumps(item))
    return item


def _text_sequence(model, context: list[int], context_codes: np.ndarray | None, ending: list[int]) -> Sequence_:
    ids = np.asarray(context + ending, np.int32)
    codes = np.zeros((len(ids), 8), np.int32)
    if context_codes is not None:
        codes[:len(context)] = context_codes
    text = np.zeros(len(ids), bool)
    text[len(context):] = True
    return Sequence_(ids, codes, text, np.zeros(len(ids), bool))


def _cloze_sequences(ctx, spec, item) -> list[Sequence_]:
    model = ctx.model
    t = model.cfg.tokens
    mode = spec.option("mode", "t2t")
    eos = [t.eos_token_id] if spec.option("score_eos", True) else []
    sep = spec.option("separator", " ")
    if mode == "t2t":
        ctx_ids = model.text_ids(item["context"])
        seqs = []
        for ending in item["endings"]:
            full = model.text_ids(item["context"] + sep + ending)
            tail = full[len(ctx_ids):] if full[:len(ctx_ids)] == ctx_ids else model.text_ids(ending)
            seqs.append(_text_sequence(model, ctx_ids, None, tail + eos))
        return seqs
    (codes,) = _encode_items(ctx, [{"audio": item["context_audio"]}])
    if isinstance(codes, SkipRecord):
        raise codes
    head = [t.audio_start_token_id] + [t.audio_pad_token_id] * len(codes) + [t.audio_end_token_id]
    head_codes = np.zeros((len(head), 8), np.int32)
    head_codes[1:1 + len(codes)] = codes
    instruction = spec.option("instruction", "")
    if instruction:
        head = model.text_ids(instruction) + head
        head_codes = np.concatenate([np.zeros((len(head) - len(head_codes), 8), np.int32), head_codes])
    if mode == "s2t":
        return [_text_sequence(model, head, head_codes, model.text_ids(e) + eos) for e in item["endings"]]
    seqs = []
    for ending in _encode_items(ctx, [{"audio": a} for a in item["ending_audio"]]):
        if isinstance(ending, SkipRecord):
            raise ending
        tail = [t.audiogen_start_token_id] + [t.audio_pad_token_id] * len(ending) + [t.audiogen_end_token_id]
        ids = np.asarray(head + tail, np.int32)
        c = np.zeros((len(ids), 8), np.int32)
        c[:len(head)] = head_codes
        c[len(head) + 1:len(head) + 1 + len(ending)] = ending
        audio = np.zeros(len(ids), bool)
        audio[len(head) + 1:len(head) + 1 + len(ending)] = True
        seqs.append(Sequence_(ids, c, np.zeros(len(ids), bool), audio))
    return seqs


def _cloze_run(ctx, spec, items):
    per_item: list[Any] = []
    flat: list[Sequence_] = []
    for it in items:
        try:
            seqs = _cloze_sequences(ctx, spec, it)
            if max(len(s.ids) for s in seqs) > ctx.model.max_context:
                raise SkipRecord("too_long", f"a context + ending exceeds the model's context of "
                                 f"{ctx.model.max_context}")
            per_item.append((len(flat), len(seqs)))
            flat += seqs
        except SkipRecord as e:
            per_item.append(e)
    scores = ctx.model.log_likelihood(flat)
    out: list[Any] = []
    for it, slot in zip(items, per_item):
        if isinstance(slot, SkipRecord):
            out.append(slot)
            continue
        s = scores[slot[0]:slot[0] + slot[1]]
        total = [lp for lp, _ in s]
        mean = [lp / max(n, 1) for lp, n in s]
        choice, choice_n = int(np.argmax(total)), int(np.argmax(mean))
        out.append({"label": it["label"], "log_likelihood": total, "tokens": [n for _, n in s],
                    "choice": choice, "choice_length_normalized": choice_n,
                    "correct": choice == it["label"], "correct_length_normalized": choice_n == it["label"]})
    return out


def _cloze_summarise(spec, results):
    n = len(results)
    chance = float(np.mean([1.0 / len(r["log_likelihood"]) for r in results])) if n else None
    return {"accuracy": sum(r["correct"] for r in results) / n,
            "accuracy_length_normalized": sum(r["correct_length_normalized"] for r in results) / n,
            "chance": chance, "mode": spec.option("mode", "t2t")}


CLOZE_OPTIONS = {"mode": "t2t (text context and endings), s2t (audio context, text endings) or s2s "
                         "(audio context and endings)",
                 "score_eos": "text endings also score the end-of-text token (default true)",
                 "separator": "joins a text context and ending before tokenising (default ' ')",
                 "instruction": "text before an audio context (default none)"}


# ----------------------------------------------------------------------------- spoken_qa

def _qa_prepare(spec, rec, line):
    path = audio_field(rec, "audio", spec.manifest)
    key = "answers" if "answers" in rec else "answer"
    return {**_base(rec, line), "audio": path, "answers": string_list(rec, key),
            "question": optional_text(rec, "question", ""), "length": _audio_length(path)}


def _qa_run(ctx, spec, items):
    system = spec.option("system", "")
    prompts: list[Any] = []
    for c, it in zip(_encode_items(ctx, items), items):
        if isinstance(c, SkipRecord):
            prompts.append(c)
            continue
        prompts.append(ctx.model.gen.prompts.chat([{"role": "user", "audio": it["audio"]}], lambda _, c=c: c,
                                                  speech_output=False, system=system))
    results = _decode_prompts(ctx, spec, items, prompts, "s2t")
    norm = _normalizer(spec)
    for it, r in zip(items, results):
        if isinstance(r, dict):
            hyp = norm(r["hypothesis"], spec.option("language"))
            refs = [norm(a, spec.option("language")) for a in it["answers"]]
            r["answers"] = it["answers"]
            r["exact_match"] = any(hyp == a for a in refs)
            r["contains_answer"] = any(a and a in hyp for a in refs)
    command = spec.option("judge_command")
    if command:
        _judge(command, ctx.suite_dir, items, results)
    return results


def _judge(command, cwd: str, items, results) -> None:
    """Pipes {"id", "question", "answer", "reference"} lines to the judge; reads one
    {"score": float} line back per input line (``judge_score``; None when the judge gives none)."""
    rows = [(it, r) for it, r in zip(items, results) if isinstance(r, dict)]
    if not rows:
        return
    payload = "".join(json.dumps({"id": it["id"], "question": it["question"], "answer": r["hypothesis"],
                                  "reference": it["answers"]}, ensure_ascii=False) + "\n" for it, r in rows)
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    try:
        proc = subprocess.run(argv, input=payload, capture_output=True, text=True, cwd=cwd, check=False)
    except OSError as e:
        raise ValueError(f"judge_command {command!r} cannot start: {e}") from None
    if proc.returncode != 0:
        raise ValueError(f"judge_command {command!r} exited with status {proc.returncode}: "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no message'}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    for i, (_, r) in enumerate(rows):
        score = None
        if i < len(lines):
            try:
                value = json.loads(lines[i])
                score = float(value["score"] if isinstance(value, dict) else value)
            except (ValueError, KeyError, TypeError):
                score = None
        r["judge_score"] = score


def _qa_summarise(spec, results):
    n = len(results)
    out = {"exact_match": sum(r["exact_match"] for r in results) / n,
           "accuracy": sum(r["contains_answer"] for r in results) / n}
    if spec.option("judge_command"):
        scores = [r.get("judge_score") for r in results]
        valid = [s for s in scores if s is not None]
        out["judge_score"] = float(np.mean(valid)) if valid else None
        out["judge_failed"] = len(scores) - len(valid)
    return out


QA_OPTIONS = {"system": "system prompt (default none)", "language": "language for the normaliser",
              "normalize": ASR_OPTIONS["normalize"], "max_new_tokens": "new-token limit (default 128)",
              "judge_command": "program (run in the suite's directory) reading JSONL {id, question, answer, "
                               "reference} on stdin and writing one JSON {\"score\": x} line per input line"}


# ----------------------------------------------------------------------------- tokenizer

def _tok_prepare(spec, rec, line):
    path = audio_field(rec, "audio", spec.manifest)
    return {**_base(rec, line), "audio": path, "record": rec, "length": _audio_length(path)}


def _tok_run(ctx, spec, items):

    return tok_eval.run_items(ctx, spec, items)


def _tok_summarise(spec, results):

    return tok_eval.summarise(results)


TOKENIZER_OPTIONS = {"max_seconds": "longest audio evaluated, in seconds (default and cap: what one decoder "
                                    "segment holds; longer records are skipped as audio_too_long)"}


TASK_TYPES: dict[str, TaskType] = {t.name: dataclasses.replace(t, options={**COMMON_OPTIONS, **t.options}) for t in (
    TaskType("asr", ASR_OPTIONS, _asr_prepare, _asr_run, _asr_summarise),
    TaskType("s2tt", S2TT_OPTIONS, _s2tt_prepare, _s2tt_run, _s2tt_summarise),
    TaskType("tts", TTS_OPTIONS, _tts_prepare, _tts_run, _tts_summarise),
    TaskType("cloze", CLOZE_OPTIONS, _cloze_prepare, _cloze_run, _cloze_summarise),
    TaskType("spoken_qa", QA_OPTIONS, _qa_prepare, _qa_run, _qa_summarise),
    TaskType("tokenizer", TOKENIZER_OPTIONS, _tok_prepare, _tok_run, _tok_summarise),
)}
