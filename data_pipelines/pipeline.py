"""The training input pipeline: sources → examples → mixture → packed batches, per host, resumable.

``build_train_iterator(config, process_index=i, process_count=n)`` returns an iterator whose
``next()`` is this host's share of the global batch (``config.data.batch_size // n`` rows of
``config.data.seq_len`` tokens, layout of :mod:`baichuan_audio_jax.batch`). Per source:

1. the raw items, sharded by host: host i takes items ``i, i + n, i + 2n, …`` (disjoint shards that
   together cover the source);
2. shuffled with a seed derived from ``data.seed`` (a new permutation every epoch) and repeated
   (``data.num_epochs``, 0 = forever);
3. loaded and built into examples (:mod:`data_pipelines.sequences`); rejects become skip markers.

Then the sources are mixed by weight (:mod:`data_pipelines.mixture`), skips are counted and dropped
(:mod:`data_pipelines.skips`), examples are packed and batched (:mod:`data_pipelines.packing`).
Everything is a deterministic function of the config and the host, and
``get_state()``/``set_state()`` capture the position exactly (a JSON object), so a resumed run
gets the batches an uninterrupted one would have.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
from typing import Any, Mapping

import grain
import ml_collections
import numpy as np
from absl import flags

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.text.tokenizer import check_special_tokens, load_text_tokenizer
from data_pipelines import mixture, packing
from data_pipelines.audio_codes import CodesFor, codes_from_waveform, min_samples_for_one_token
from data_pipelines.manifest import task_of
from data_pipelines.sequences import Prompts, SequenceBuilder
from data_pipelines.skips import CountSkipsIterDataset, RecordError, Skip, SkipCounter
from data_pipelines.sources import Source, SourceSpec, open_source, parse_source_spec

log = logging.getLogger("data_pipelines")

STATE_FORMAT = "baichuan_audio_jax.data_pipelines/1"


class MakeExample:
    """Raw item → example dict (+ ``task``/``origin``) or :class:`Skip`; picklable for Grain workers."""

    def __init__(self, source: Source, builder: SequenceBuilder):
        self.source, self.builder = source, builder

    def __call__(self, item: Any):
        origin = self.source.origin(item)
        try:
            record, codes, origin = self.source.load(item)
            example = self.builder.build(record, codes)
        except RecordError as e:
            return Skip.of(e, origin)
        example["task"] = task_of(record)
        example["origin"] = origin
        return example


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _as_dict(cfg: Any) -> dict:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def source_specs(data: Mapping[str, Any]) -> list[SourceSpec]:
    items = list(data.get("sources") or [])
    if not items:
        raise ValueError("data.sources is empty: list manifests (.jsonl), ArrayRecord shards or TFDS datasets, "
                         "e.g. --config.data.sources='[\"train.jsonl\"]'")
    return [parse_source_spec(_as_dict(x) if not isinstance(x, str) else x) for x in items]


def codes_for_from_config(config: ml_collections.ConfigDict) -> CodesFor | None:
    """The on-the-fly audio tokenizer named by ``data.audio_tokenizer`` (``"module:factory"``;
    ``factory(config)`` returns ``codes_for(path)`` or an object with ``encode_waveform``), or None."""
    name = str(config.data.get("audio_tokenizer", "") or "")
    if not name:
        return None
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"data.audio_tokenizer {name!r} must be 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"data.audio_tokenizer {name!r} cannot be imported: {e}") from e
    made = factory(config)
    if hasattr(made, "encode_waveform"):
        model = ModelConfig.from_config(config.model)
        made = codes_from_waveform(made.encode_waveform, sample_rate=model.audio_encoder.sampling_rate,
                                   min_samples=min_samples_for_one_token(model.audio_encoder, model.vq_bridge),
                                   max_seconds=float(config.data.max_audio_seconds))
    return made


def make_builder(config: ml_collections.ConfigDict) -> SequenceBuilder:
    model = ModelConfig.from_config(config.model)
    tokenizer = load_text_tokenizer(str(config.data.tokenizer))
    check_special_tokens(tokenizer, model.tokens, model.llm.vocab_size)
    return SequenceBuilder(tokenizer, model.tokens, model.codebook_sizes, seq_len=int(config.data.seq_len),
                           prompts=Prompts.from_dict(_as_dict(config.data.get("prompts", {}))))


def example_dataset(config: ml_collections.ConfigDict, *, process_index: int = 0, process_count: int = 1,
                    codes_for: CodesFor | None = None, builder: SequenceBuilder | None = None) -> grain.MapDataset:
    """This host's mixture of examples (or :class:`Skip` markers), before packing."""
    data = config.data
    specs = source_specs(data)
    if codes_for is None:
        codes_for = codes_for_from_config(config)
    # JSONL records with audio need ``codes_for``; without it their first one is an error naming
    # the source (pure-text manifests need none).
    builder = builder or make_builder(config)
    seed = int(data.seed)
    epochs = int(data.get("num_epochs", 0) or 0)
    datasets = []
    for i, spec in enumerate(specs):
        source = open_source(spec, codes_for)
        ds = source.dataset()
        if len(ds) < process_count:
            raise ValueError(f"source {spec.label} has {len(ds)} records, fewer than the {process_count} hosts "
                             "reading it")
        ds = ds[process_index::process_count]
        if data.shuffle:
            ds = ds.shuffle(seed=_seed(seed, i))
        ds = ds.repeat(epochs if epochs > 0 else None)
        datasets.append(ds.map(MakeExample(source, builder)))
    return mixture.mix(datasets, [s.weight for s in specs], [s.label for s in specs])


class TrainIterator:
    """This host's batches; ``get_state``/``set_state`` for checkpoints (JSON objects)."""

    def __init__(self, iterator: grain.DatasetIterator, *, process_index: int, process_count: int, fingerprint: str):
        self._it = iterator
        self.process_index, self.process_count, self.fingerprint = process_index, process_count, fingerprint

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict:
        return {"format": STATE_FORMAT, "process_index": self.process_index, "process_count": self.process_count,
                "fingerprint": self.fingerprint, "pipeline": _jsonable(self._it.get_state())}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a data pipeline state (expected format {STATE_FORMAT!r})")
        for key in ("process_index", "process_count"):
            if state[key] != getattr(self, key):
                raise ValueError(f"data iterator state was saved with {key}={state[key]}, this run has "
                                 f"{key}={getattr(self, key)}: the host shards differ, so the saved position "
                                 "does not apply")
        if state.get("fingerprint") != self.fingerprint:
            log.warning("data iterator state was saved with a different data config; restoring its position, "
                        "but the batches will differ from the original run's")
        self._it.set_state(state["pipeline"])

    def skipped(self) -> dict[str, int]:
        """Records skipped so far by reason (read by this host's pipeline, possibly a little ahead of
        the batches returned; from the iterator state when workers hold the pipeline)."""
        counter = _find_skip_counter(self._it)
        return counter.as_dict() if counter is not None else _find_skips(self._it.get_state())

    def close(self) -> None:
        if hasattr(self._it, "close"):
            self._it.close()


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode("latin-1")
    return x


def _find_skip_counter(it) -> SkipCounter | None:
    todo = [it]
    while todo:
        node = todo.pop()
        if isinstance(getattr(node, "counter", None), SkipCounter):
            return node.counter
        todo.extend(getattr(node, "_parents", ()))
    return None


def _find_skips(state) -> dict[str, int]:
    """Skip counts in an iterator state, summed over worker processes (one pipeline each)."""
    total: dict[str, int] = {}
    todo = [state]
    while todo:
        node = todo.pop()
        if isinstance(node, Mapping):
            if isinstance(node.get("skipped"), Mapping):
                for k, v in node["skipped"].items():
                    total[k] = total.get(k, 0) + int(v)
            todo.extend(v for k, v in node.items() if k != "skipped")
        elif isinstance(node, (list, tuple)):
            todo.extend(node)
    return dict(sorted(total.items()))


def train_iterator(batches: grain.IterDataset, config: ml_collections.ConfigDict, *, process_index: int,
                   process_count: int) -> TrainIterator:
    """The checkpointable iterator over a pipeline's batches, prefetched by ``data.worker_count``
    grain worker processes when > 0."""
    workers = int(config.data.worker_count)
    if workers > 0:

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return TrainIterator(iter(batches), process_index=process_index, process_count=process_count,
                         fingerprint=data_fingerprint(config))


def data_fingerprint(config: ml_collections.ConfigDict) -> str:
    data = _as_dict(config.data)
    keys = ("sources", "seed", "seq_len", "batch_size", "packing", "packing_bins", "shuffle", "num_epochs",
            "tokenizer", "prompts")
    blob = json.dumps({k: data.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_train_iterator(config: ml_collections.ConfigDict, *, process_index: int = 0, process_count: int = 1,
                         codes_for: CodesFor | None = None) -> TrainIterator:
    """The iterator of the data contract (source ``grain``); see the module docstring.

    ``codes_for`` tokenizes audio of JSONL sources on the fly (default: ``data.audio_tokenizer``).
    """
    data = config.data
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    batch_size, seq_len = int(data.batch_size), int(data.seq_len)
    if batch_size % process_count:
        raise ValueError(f"data.batch_size {batch_size} is not divisible by the {process_count} hosts")
    rows = batch_size // process_count
    if rows < 1 or seq_len < 2:
        raise ValueError(f"data.batch_size {batch_size} / data.seq_len {seq_len} too small")
    model = ModelConfig.from_config(config.model)
    pad_id = model.tokens.pad_token_id
    seed = int(data.seed)

    ds = example_dataset(config, process_index=process_index, process_count=process_count, codes_for=codes_for)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(data.read_threads),
                                              prefetch_buffer_size=int(data.prefetch)))
    it = CountSkipsIterDataset(it, max_consecutive=int(data.max_consecutive_skips))
    it = packing.pack(it, seq_len=seq_len, method=str(data.packing),
                      num_bins=int(data.packing_bins) or rows, pad_id=pad_id, seed=_seed(seed, 1 << 20))
    it = it.batch(rows, drop_remainder=False).map(packing.ToBatch(rows, seq_len, pad_id))
    return train_iterator(it, config, process_index=process_index, process_count=process_count)
