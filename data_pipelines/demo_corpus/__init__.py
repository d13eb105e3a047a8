"""The bundled demo corpus: 448 short English commands over a 41-word vocabulary, spoken by eight
espeak-ng voices at four speeds (16 kHz mono Ogg Vorbis), split into training and held-out
manifests whose sentences never overlap. Grammar, voices and split: ``README.md`` beside this file;
regeneration: :mod:`data_pipelines.demo_corpus.make_corpus`.
"""
import os

CORPUS_DIR = os.path.dirname(os.path.abspath(__file__))
TRAIN_MANIFEST = os.path.join(CORPUS_DIR, "train.jsonl")
HELDOUT_MANIFEST = os.path.join(CORPUS_DIR, "heldout.jsonl")
