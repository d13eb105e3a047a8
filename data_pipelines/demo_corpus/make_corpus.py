"""Regenerates the bundled demo corpus: short English commands spoken by espeak-ng voices.

The corpus is committed (``train.jsonl``, ``heldout.jsonl``, ``audio/``); this script is only
needed to change or rebuild it, not to use it. It needs the ``espeak-ng`` program
(Debian/Ubuntu: ``apt-get install espeak-ng``) besides the project's own dependencies::

    python -m data_pipelines.demo_corpus.make_corpus            # rewrites the corpus in place
    python -m data_pipelines.demo_corpus.make_corpus --out DIR  # or somewhere else
    python -m data_pipelines.demo_corpus.make_corpus --extra 48 --seed 7 --out DIR
        # only DIR/extra.jsonl: 48 new sentences of the grammar, in neither split, same voices/speeds

Steps: :func:`plan_corpus` draws the sentences from :data:`GRAMMAR` and gives each utterance a
voice and speed (deterministic for a seed, no synthesis); :func:`render` synthesises each one
with espeak-ng, resamples it to 16 kHz mono, trims the silence around the speech to
:data:`EDGE_SECONDS`, normalises its loudness and encodes it as Ogg Vorbis. Every planned
utterance must land within :data:`DURATION_BOUNDS` and every held-out word must occur in
training, or the script stops with an error naming the utterance.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf
from tqdm import tqdm

from baichuan_audio_jax.audio.resample import resample

HERE = os.path.dirname(os.path.abspath(__file__))

# -- grammar ---------------------------------------------------------------------------------------
# Each template is a sequence of slots; a slot is a word class (a list) or a fixed word (a str).
ACTIONS = ["open", "close", "lift", "drop", "find", "push", "pull", "move"]
MOTIONS = ["move", "push", "pull", "turn"]
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
OBJECTS = ["box", "door", "cup", "ball", "book", "chair", "lamp", "key"]
DIRECTIONS = ["left", "right", "up", "down"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

GRAMMAR: dict[str, tuple[float, list[list[str] | str]]] = {
    # name: (share of the utterances, slots)
    "command": (0.45, [ACTIONS, "the", COLOURS, OBJECTS]),        # open the red door
    "motion": (0.20, [MOTIONS, "the", OBJECTS, DIRECTIONS]),      # turn the lamp left
    "short": (0.10, [ACTIONS, "the", OBJECTS]),                   # lift the cup
    "dial": (0.25, ["dial", DIGITS, DIGITS, DIGITS]),             # dial three seven one
}
VOCABULARY = sorted({w for _, slots in GRAMMAR.values() for s in slots for w in ([s] if isinstance(s, str) else s)})

# -- voices and speeds -----------------------------------------------------------------------------
# espeak-ng voice names (language + "+variant"): six accents, male and female variants.
VOICES = ["en-us", "en-us+f3", "en-gb+m3", "en-gb+f2", "en-gb-scotland+m4", "en-gb-x-rp+f4",
          "en-029+m2", "en-us-nyc+f1"]
SPEEDS = [125, 150, 175, 200]  # words per minute (espeak-ng -s)

# -- split and signal ------------------------------------------------------------------------------
SEED = 20240613
NUM_TRAIN = 400
NUM_HELDOUT = 48
SAMPLE_RATE = 16000
DURATION_BOUNDS = (0.8, 2.5)  # seconds, after trimming
EDGE_SECONDS = 0.15           # silence kept before and after the speech
TRIM_TOP_DB = 40              # frames this far below the loudest one count as silence
TARGET_RMS_DBFS = -20.0       # loudness of the speech (non-silent frames)
PEAK_LIMIT = 0.89             # -1 dBFS: lower the gain if a peak would pass it (no clipping)
VORBIS_QUALITY = 0.5          # libsndfile's 0..1 scale (0.5 ≈ Vorbis -q 5)


@dataclasses.dataclass(frozen=True)
class Utterance:
    uttid: str
    text: str
    template: str
    voice: str
    speed: int


def _sentences(rng: random.Random, n: int, exclude: set[str]) -> list[tuple[str, str]]:
    """``n`` distinct (template, sentence) pairs not in ``exclude``, templates in GRAMMAR's shares."""
    names = list(GRAMMAR)
    counts = [round(GRAMMAR[k][0] * n) for k in names]
    counts[0] += n - sum(counts)
    out, seen = [], set(exclude)
    for name, count in zip(names, counts):
        slots = GRAMMAR[name][1]
        available = math.prod(1 if isinstance(s, str) else len(s) for s in slots)
        available -= sum(1 for t in exclude if _matches(t, slots))
        if count > available:
            raise ValueError(f"template {name!r} has {available} unused sentences, {count} wanted: "
                             "lower its share or enlarge its word classes")
        made = 0
        while made < count:
            text = " ".join(s if isinstance(s, str) else rng.choice(s) for s in slots)
            if text not in seen:
                seen.add(text)
                out.append((name, text))
                made += 1
    rng.shuffle(out)
    return out


def _matches(text: str, slots: list[list[str] | str]) -> bool:
    words = text.split()
    return len(words) == len(slots) and all(w == s if isinstance(s, str) else w in s for w, s in zip(words, slots))


def template_of(text: str) -> str | None:
    """The GRAMMAR template that generates ``text`` (None if none does)."""
    return next((name for name, (_, slots) in GRAMMAR.items() if _matches(text, slots)), None)


def _voice_speeds(rng: random.Random, n: int) -> list[tuple[str, int]]:
    """Every (voice, speed) pair equally often (to within one), in a shuffled order."""
    grid = list(itertools.product(VOICES, SPEEDS))
    out: list[tuple[str, int]] = []
    while len(out) < n:
        block = grid[:]
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def plan_corpus(seed: int = SEED, num_train: int = NUM_TRAIN,
                num_heldout: int = NUM_HELDOUT) -> tuple[list[Utterance], list[Utterance]]:
    """(train, held-out) utterances: held-out sentences never occur in training, every held-out
    word does, and both sides use the same voices and speeds. Deterministic for ``seed``."""
    rng = random.Random(seed)
    heldout_s = _sentences(rng, num_heldout, set())
    train_s = _sentences(rng, num_train, {t for _, t in heldout_s})
    split = {}
    for side, sentences in (("train", train_s), ("heldout", heldout_s)):
        width = len(str(len(sentences)))
        split[side] = [Utterance(f"{side}_{i + 1:0{width}d}", text, template, voice, speed)
                       for i, ((template, text), (voice, speed))
                       in enumerate(zip(sentences, _voice_speeds(rng, len(sentences))))]
    train_words = {w for u in split["train"] for w in u.text.split()}
    for u in split["heldout"]:
        missing = set(u.text.split()) - train_words
        if missing:
            raise ValueError(f"held-out {u.uttid} ({u.text!r}) has words absent from training: {sorted(missing)}")
    return split["train"], split["heldout"]


def plan_extra(num: int, seed: int, corpus_seed: int = SEED) -> list[Utterance]:
    """``num`` more held-out utterances: sentences of the grammar in neither split of the corpus
    planned with ``corpus_seed``, with the same voices and speeds (deterministic for ``seed``). A
    second held-out set, for checking that a model generalises beyond the bundled one."""
    train, heldout = plan_corpus(corpus_seed)
    used = {u.text for u in train + heldout}
    rng = random.Random(seed)
    sentences = _sentences(rng, num, used)
    width = len(str(num))
    return [Utterance(f"extra_{i + 1:0{width}d}", text, template, voice, speed)
            for i, ((template, text), (voice, speed)) in enumerate(zip(sentences, _voice_speeds(rng, num)))]


# -- synthesis -------------------------------------------------------------------------------------
def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def synthesise(text: str, voice: str, speed: int, workdir: str):
    """espeak-ng's waveform of ``text``: (float32 samples, sample rate)."""

    wav = os.path.join(workdir, "utterance.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", wav, text], check=True,
                   capture_output=True)
    data, sr = sf.read(wav, dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def condition(wav, sr: int):
    """16 kHz, trimmed to the speech plus EDGE_SECONDS each side, loudness-normalised."""
    import librosa  # lazy: librosa's import costs ~1 s (numba); only corpus regeneration needs it
    wav = resample(wav, sr, SAMPLE_RATE)
    frame, hop = 400, 160
    _, (start, end) = librosa.effects.trim(wav, top_db=TRIM_TOP_DB, frame_length=frame, hop_length=hop)
    edge = int(EDGE_SECONDS * SAMPLE_RATE)
    speech = wav[start:end]
    wav = np.concatenate([np.zeros(edge, np.float32), speech, np.zeros(edge, np.float32)])
    rms_frames = librosa.feature.rms(y=speech, frame_length=frame, hop_length=hop)[0]
    voiced = rms_frames[rms_frames >= rms_frames.max() * 10 ** (-TRIM_TOP_DB / 20)]
    rms = float(np.sqrt(np.mean(voiced ** 2)))
    gain = 10 ** (TARGET_RMS_DBFS / 20) / rms
    gain = min(gain, PEAK_LIMIT / float(np.abs(wav).max()))
    return (wav * gain).astype(np.float32)


def render(utterances: list[Utterance], out_dir: str, side: str) -> list[dict]:
    """Synthesises ``utterances`` into ``out_dir/audio`` and returns their manifest records."""

    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for u in tqdm(utterances, desc=f"synthesising {side}", unit=" utts"):
            wav = condition(*synthesise(u.text, u.voice, u.speed, tmp))
            seconds = len(wav) / SAMPLE_RATE
            lo, hi = DURATION_BOUNDS
            if not lo <= seconds <= hi:
                raise ValueError(f"{u.uttid} ({u.text!r}, {u.voice}, {u.speed} wpm) lasts {seconds:.2f} s, "
                                 f"outside {lo}-{hi} s: adjust GRAMMAR or SPEEDS")
            rel = f"audio/{u.uttid}.ogg"
            sf.write(os.path.join(out_dir, rel), wav, SAMPLE_RATE, format="OGG", subtype="VORBIS",
                     compression_level=1.0 - VORBIS_QUALITY)
            records.append(dict(uttid=u.uttid, audio=rel, text=u.text, language="en", sample_rate=SAMPLE_RATE,
                                voice=u.voice, speed=u.speed, template=u.template, duration=round(seconds, 3)))
    return records


def write_manifest(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=HERE, help="corpus directory (default: this script's directory)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--extra", type=int, default=0, metavar="N",
                   help="write only N extra held-out utterances (new sentences) to OUT/extra.jsonl")
    args = p.parse_args(argv)

    print(espeak_version())
    if args.extra > 0:
        records = render(plan_extra(args.extra, args.seed), args.out, "extra")
        write_manifest(os.path.join(args.out, "extra.jsonl"), records)
        print(f"extra: {len(records)} utterances -> {os.path.join(args.out, 'extra.jsonl')}")
        return 0
    train, heldout = plan_corpus(args.seed)
    audio_dir = os.path.join(args.out, "audio")
    if os.path.isdir(audio_dir):
        for name in os.listdir(audio_dir):  # no stale files from an earlier, larger corpus
            if name.endswith(".ogg"):
                os.remove(os.path.join(audio_dir, name))
    total = 0
    for side, utts in (("train", train), ("heldout", heldout)):
        records = render(utts, args.out, side)
        write_manifest(os.path.join(args.out, f"{side}.jsonl"), records)
        seconds = sum(r["duration"] for r in records)
        total += sum(os.path.getsize(os.path.join(args.out, r["audio"])) for r in records)
        print(f"{side}: {len(records)} utterances, {seconds / 60:.1f} min, "
              f"{min(r['duration'] for r in records):.2f}-{max(r['duration'] for r in records):.2f} s")
    print(f"audio: {total / 1e6:.2f} MB; vocabulary: {len(VOCABULARY)} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
