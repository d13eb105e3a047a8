"""Corpus-level scores: WER/CER (jiwer), BLEU/chrF (sacrebleu), exact match, accuracy.

Every function takes parallel lists of references and hypotheses already normalised as the task
wants (:mod:`.normalize`); the scores are corpus-level (total edits over total reference words or
characters, as jiwer and sacrebleu compute them), not averages of per-utterance scores.
"""
from __future__ import annotations

from typing import Sequence

import jiwer
import sacrebleu

from baichuan_audio_jax.evaluation.normalize import is_character_language


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words."""
    return float(jiwer.wer(list(references), list(hypotheses)))


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate over the strings as given (spaces count as characters)."""
    return float(jiwer.cer(list(references), list(hypotheses)))


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """``wer`` and ``cer``; an empty hypothesis is scored as it is (every reference word deleted)."""
    return {"wer": wer(references, hypotheses), "cer": cer(references, hypotheses)}


def bleu_tokenizer(language: str | None) -> str:
    """sacrebleu's tokeniser for a target language: ``zh`` for Chinese, ``ja-mecab`` is not
    assumed installed so Japanese uses ``char``, ``13a`` otherwise."""
    if not language:
        return "13a"
    lang = language.lower().split("-")[0].split("_")[0]
    if lang in ("zh", "cmn", "yue"):
        return "zh"
    return "char" if is_character_language(lang) else "13a"


def bleu(references: Sequence[str], hypotheses: Sequence[str], language: str | None = None) -> float:
    """Corpus BLEU (sacrebleu defaults, one reference per segment)."""
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)],
                                       tokenize=bleu_tokenizer(language)).score)


def chrf(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2)."""
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)
