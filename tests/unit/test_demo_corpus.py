"""The bundled demo corpus (data_pipelines/demo_corpus): manifests, audio, split and budget.

The files are committed; these tests check them as they are (no synthesis) and that the
regeneration script's plan still describes them.
"""
import collections
import json
import os

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO as _REPO  # noqa: E402

from baichuan_audio_jax.audio.io import load_audio
from data_pipelines.demo_corpus import CORPUS_DIR, HELDOUT_MANIFEST, TRAIN_MANIFEST, make_corpus

REPO = str(_REPO)
SIZE_BUDGET = 10 * 1024 * 1024  # bytes: audio + manifests
SIDES = {"train": TRAIN_MANIFEST, "heldout": HELDOUT_MANIFEST}


def _records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def corpus():
    return {side: _records(path) for side, path in SIDES.items()}


@pytest.fixture(scope="module")
def waveforms(corpus):
    """Every utterance decoded once, at 16 kHz, with the project's loader."""
    return {r["uttid"]: load_audio(os.path.join(CORPUS_DIR, r["audio"]), 16000)
            for recs in corpus.values() for r in recs}


@pytest.mark.parametrize("side", list(SIDES))
def test_manifest_checks_clean(side):
    """`data check` logic with the tiny model's front end: every record valid and decodable, none resampled."""
    from baichuan_audio_jax.config import ModelConfig, load_config
    from data_pipelines.check import check_manifest

    model = ModelConfig.from_config(load_config(os.path.join(REPO, "configs", "tiny.py")).model)
    report = check_manifest(SIDES[side], encoder=model.audio_encoder, bridge=model.vq_bridge,
                            max_audio_seconds=model.audio_encoder.max_audio_seconds)
    assert report.total == len(_records(SIDES[side])) and report.ok == report.total, report.summary()
    assert report.resampled == 0


def test_records_and_files(corpus, waveforms):
    """Manifest fields are complete; each file is 16 kHz mono Ogg Vorbis of the stated duration, within bounds."""
    lo, hi = make_corpus.DURATION_BOUNDS
    referenced = set()
    for side, recs in corpus.items():
        for r in recs:
            assert r["uttid"].startswith(side + "_")
            assert r["language"] == "en" and r["sample_rate"] == 16000
            assert r["voice"] in make_corpus.VOICES and r["speed"] in make_corpus.SPEEDS
            path = os.path.join(CORPUS_DIR, r["audio"])
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "OGG", "VORBIS"), path
            seconds = len(waveforms[r["uttid"]]) / 16000
            assert abs(seconds - r["duration"]) < 1e-3, path
            assert lo <= seconds <= hi, path
            referenced.add(os.path.normpath(path))
    uttids = [r["uttid"] for recs in corpus.values() for r in recs]
    assert len(set(uttids)) == len(uttids)
    audio_dir = os.path.join(CORPUS_DIR, "audio")
    on_disk = {os.path.normpath(os.path.join(audio_dir, n)) for n in os.listdir(audio_dir)}
    assert on_disk == referenced, "audio files without a manifest line, or the reverse"


def test_split_is_generalisation(corpus):
    """Held-out sentences never occur in training; every held-out word and voice does."""
    train_texts = {r["text"] for r in corpus["train"]}
    held_texts = [r["text"] for r in corpus["heldout"]]
    assert 40 <= len(held_texts) <= 60 and len(corpus["train"]) >= 300
    assert len(set(held_texts)) == len(held_texts)
    assert not train_texts & set(held_texts)
    train_words = {w for t in train_texts for w in t.split()}
    assert {w for t in held_texts for w in t.split()} <= train_words
    assert train_words <= set(make_corpus.VOCABULARY) and 30 <= len(make_corpus.VOCABULARY) <= 50
    assert {r["voice"] for r in corpus["heldout"]} <= {r["voice"] for r in corpus["train"]}


def test_texts_follow_the_grammar(corpus):
    """Every transcript is lower-case words of one grammar template, the one its record names."""
    for recs in corpus.values():
        for r in recs:
            assert r["text"] == r["text"].strip().lower() and "  " not in r["text"]
            assert make_corpus.template_of(r["text"]) == r["template"], r["uttid"]
    assert {r["template"] for r in corpus["train"]} == set(make_corpus.GRAMMAR)
    assert {r["template"] for r in corpus["heldout"]} == set(make_corpus.GRAMMAR)


def test_voices_and_speeds_vary(corpus):
    """Several voices and speeds, every voice at every speed in training, no combination dominating."""
    combos = collections.Counter((r["voice"], r["speed"]) for r in corpus["train"])
    assert len({v for v, _ in combos}) >= 6 and len({s for _, s in combos}) >= 3
    assert len(combos) == len(make_corpus.VOICES) * len(make_corpus.SPEEDS)
    assert max(combos.values()) - min(combos.values()) <= 1
    held = {(r["voice"], r["speed"]) for r in corpus["heldout"]}
    assert len({v for v, _ in held}) == len(make_corpus.VOICES)


def test_plan_reproduces_the_manifests(corpus):
    """The regeneration script's seeded plan gives exactly the committed sentences, voices and speeds."""
    train, heldout = make_corpus.plan_corpus()
    for side, planned in (("train", train), ("heldout", heldout)):
        committed = [(r["uttid"], r["text"], r["template"], r["voice"], r["speed"]) for r in corpus[side]]
        assert committed == [(u.uttid, u.text, u.template, u.voice, u.speed) for u in planned]
        assert [r["audio"] for r in corpus[side]] == [f"audio/{u.uttid}.ogg" for u in planned]


def test_loudness_is_comparable_and_unclipped(corpus, waveforms):
    """No clipping (decoded peak < 0.99) and every voice's median speech level within 1.5 dB of the target."""
    levels = collections.defaultdict(list)
    for r in corpus["train"] + corpus["heldout"]:
        wav = waveforms[r["uttid"]]
        assert np.abs(wav).max() < 0.99, r["uttid"]
        frames = wav[: len(wav) // 160 * 160].reshape(-1, 160)
        rms = np.sqrt((frames ** 2).mean(axis=1))
        speech = rms[rms >= rms.max() * 10 ** (-make_corpus.TRIM_TOP_DB / 20)]
        levels[r["voice"]].append(20 * np.log10(np.sqrt((speech ** 2).mean())))
        edge = int(0.5 * make_corpus.EDGE_SECONDS * 16000)  # the kept silence is quiet
        assert np.abs(wav[:edge]).max() < 0.05 and np.abs(wav[-edge:]).max() < 0.05, r["uttid"]
    for voice, dbs in levels.items():
        assert abs(np.median(dbs) - make_corpus.TARGET_RMS_DBFS) < 1.5, voice


def test_size_budget():
    total = sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(CORPUS_DIR) for n in names
                if n.endswith((".ogg", ".jsonl")))
    assert total < SIZE_BUDGET, f"{total / 1e6:.1f} MB"
