"""Grain input pipelines for Baichuan-Audio pre-training and SFT.

Importing this package registers its training data sources with the trainer
(:mod:`baichuan_audio_jax.training.data_sources`): ``data.source=grain`` (token sequences of every
task, :func:`data_pipelines.pipeline.build_train_iterator`) and ``data.source=grain_audio`` (padded
audio batches of the tokenizer and flow-matching tasks,
:func:`data_pipelines.audio_pipeline.build_audio_iterator`). Modules: ``manifest`` (task fields),
``sources`` (JSONL, ArrayRecord, TFDS), ``sequences`` (layouts and loss masks), ``audio_codes``,
``packing``, ``mixture``, ``skips``, ``check``, ``preview``.
"""
from baichuan_audio_jax.training import data_sources
from data_pipelines.audio_pipeline import build_audio_iterator
from data_pipelines.pipeline import build_train_iterator

data_sources.register("grain")(build_train_iterator)
data_sources.register("grain_audio")(build_audio_iterator)

__all__ = ["build_audio_iterator", "build_train_iterator"]
