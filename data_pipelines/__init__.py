"""Grain input pipelines for Baichuan-Audio pre-training and SFT.

``build_train_iterator(config, *, process_index, process_count)`` is the ``grain`` data source of
the training engine (:mod:`data_pipelines.pipeline`). Modules: ``manifest`` (task fields),
``sources`` (JSONL, ArrayRecord, TFDS), ``sequences`` (layouts and loss masks), ``text_tokenizer``,
``audio_codes``, ``packing``, ``mixture``, ``skips``, ``check``, ``preview``.
"""


def build_train_iterator(config, *, process_index: int = 0, process_count: int = 1, **kwargs):
    from data_pipelines.pipeline import build_train_iterator as build

    return build(config, process_index=process_index, process_count=process_count, **kwargs)
