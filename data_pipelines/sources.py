"""Where records come from: JSONL manifests, pre-tokenized ArrayRecord shards, TFDS datasets.

Every source is random-access (a Grain ``MapDataset`` of raw items, so shuffling, per-host
sharding and resuming are index arithmetic) and turns a raw item into
``(record, codes per audio reference, origin)`` with :meth:`Source.load`, raising
:class:`~data_pipelines.skips.RecordError` for anything unusable.

* ``jsonl``: a manifest (:mod:`data_pipelines.manifest`); audio is decoded and tokenized on the fly
  by a ``codes_for(path)`` callable (:mod:`data_pipelines.audio_codes`). For small data.
* ``array_record``: shards of tokenized records (:mod:`baichuan_audio_jax.records`) written by
  ``baichuan-audio tokenize``: a shard file, a directory of shards or a glob. The scalable path.
* ``tfds``: a prepared TFDS dataset with the features of
  :class:`data_pipelines.tfds_tokenized_speech.TokenizedSpeech` (``record`` text, ``codes``
  int16 [ΣN, 8], ``code_lengths`` [n_audio]), read with ``tfds.data_source``: no TensorFlow.

Source specs (``data.sources`` entries) are a path string (kind from the name) or a dict
``{"path"|"name", "kind"?, "weight"?, "split"?, "data_dir"?}``.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from baichuan_audio_jax.audio.io import AudioError
from baichuan_audio_jax.records import audio_refs, decode_tokenized, resolve_audio_path
from data_pipelines.audio_codes import CodesFor
from data_pipelines.manifest import validate
from data_pipelines.skips import RecordError

KINDS = ("jsonl", "array_record", "tfds")
ARRAY_RECORD_PATTERNS = ("*.array_record", "*.array_record-*", "*.arrayrecord")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    path: str  # manifest / shards (jsonl, array_record) or dataset name (tfds)
    kind: str
    weight: float = 1.0
    split: str = "train"
    data_dir: str = ""

    @property
    def label(self) -> str:
        return f"tfds:{self.path}[{self.split}]" if self.kind == "tfds" else self.path


def parse_source_spec(item: str | Mapping[str, Any]) -> SourceSpec:
    """A ``data.sources`` entry as a :class:`SourceSpec`; raises ValueError naming the problem."""
    if isinstance(item, str):
        item = {"path": item}
    item = dict(item)
    unknown = set(item) - {"path", "name", "kind", "weight", "split", "data_dir"}
    if unknown:
        raise ValueError(f"data.sources entry {item}: unknown field(s) {sorted(unknown)}")
    path = item.get("path") or item.get("name")
    if not path:
        raise ValueError(f"data.sources entry {item}: needs 'path' (or 'name' for tfds)")
    kind = item.get("kind") or _infer_kind(str(path))
    if kind not in KINDS:
        raise ValueError(f"data.sources entry {item}: kind {kind!r} is not one of {list(KINDS)}")
    weight = float(item.get("weight", 1.0))
    if not weight >= 0:
        raise ValueError(f"data.sources entry {item}: weight must be >= 0")
    return SourceSpec(path=str(path), kind=kind, weight=weight, split=str(item.get("split", "train")),
                      data_dir=str(item.get("data_dir", "")))


def _infer_kind(path: str) -> str:
    if path.endswith((".jsonl", ".json")):
        return "jsonl"
    return "array_record"


def array_record_files(path: str) -> list[str]:
    """Shard files of a file, directory or glob, sorted (a stable record order)."""
    if os.path.isdir(path):
        files = sorted({f for p in ARRAY_RECORD_PATTERNS for f in glob.glob(os.path.join(path, p))})
    elif any(c in path for c in "*?["):
        files = sorted(glob.glob(path))
    else:
        files = [path] if os.path.exists(path) else []
    if not files:
        raise FileNotFoundError(f"no ArrayRecord shards at {path}")
    return files


class Source:
    spec: SourceSpec

    def items(self) -> Sequence[Any]:
        """The raw items (random access)."""
        raise NotImplementedError

    def load(self, item: Any) -> tuple[dict, list[np.ndarray], str]:
        raise NotImplementedError

    def origin(self, item: Any) -> str:
        return self.spec.label

    def dataset(self) -> grain.MapDataset:
        return grain.MapDataset.source(self.items())


class JsonlSource(Source):
    """A manifest read into memory, line by line; audio tokenized on the fly."""

    def __init__(self, spec: SourceSpec, codes_for: CodesFor | None):
        self.spec, self.codes_for = spec, codes_for
        self.path = os.path.abspath(spec.path)
        with open(self.path, encoding="utf-8") as f:  # OSError: the manifest itself cannot be read
            self.lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]

    def items(self):
        return self.lines

    def origin(self, item) -> str:
        return f"{self.spec.path}:{item[0]}"

    def load(self, item):
        n, line = item
        record = parse_line(line)
        validate(record)
        refs = audio_refs(record)
        if refs and self.codes_for is None:
            raise ValueError(f"source {self.spec.path} is a JSONL manifest: it needs an audio tokenizer "
                             "(data.audio_tokenizer) or pre-tokenized shards (`baichuan-audio tokenize`)")
        codes = []
        for ref in refs:
            path = resolve_audio_path(self.path, ref)
            try:
                codes.append(self.codes_for(path))
            except AudioError as e:
                raise RecordError(e.reason, str(e)) from None
        return record, codes, self.origin(item)


def parse_line(line: str | bytes) -> dict:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError("bad_json", f"invalid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(record, dict):
        raise RecordError("bad_json", "line is not a JSON object")
    return record


class ArrayRecordSource(Source):
    """Pre-tokenized records (:func:`baichuan_audio_jax.records.encode_tokenized`)."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.files = array_record_files(spec.path)
        self._source = grain.sources.ArrayRecordDataSource(self.files)

    def items(self):
        return self._source

    def load(self, item):
        try:
            record, codes, origin = decode_tokenized(item)
        except Exception as e:  # a damaged shard entry
            raise RecordError("invalid_record", f"undecodable tokenized record ({e})") from None
        if not isinstance(record, dict):
            raise RecordError("bad_json", "record is not a JSON object")
        return record, codes, origin or self.spec.label


class TfdsSource(Source):
    """A prepared TFDS dataset of tokenized records (read without TensorFlow)."""

    def __init__(self, spec: SourceSpec):
        import tensorflow_datasets as tfds  # lazy: heavy optional dependency, only for TFDS sources
        self.spec = spec
        kw = {"data_dir": spec.data_dir} if spec.data_dir else {}
        try:
            self._source = tfds.data_source(spec.path, split=spec.split, **kw)
        except Exception as e:
            raise FileNotFoundError(f"TFDS dataset {spec.label} (data_dir {spec.data_dir or 'default'}) "
                                    f"cannot be opened: {e}") from e

    def items(self):
        return self._source

    def load(self, item):
        text = item["record"]
        record = parse_line(text.decode("utf-8") if isinstance(text, bytes) else text)
        lengths = np.asarray(item["code_lengths"], np.int64)
        flat = np.asarray(item["codes"])
        if lengths.sum() != flat.shape[0]:
            raise RecordError("invalid_codes", f"code_lengths sum to {lengths.sum()}, codes have {flat.shape[0]} rows")
        codes = np.split(flat.astype(np.int32), np.cumsum(lengths)[:-1]) if len(lengths) else []
        origin = item.get("source", b"")
        origin = origin.decode("utf-8") if isinstance(origin, bytes) else str(origin)
        return record, codes, origin or self.spec.label


def open_source(spec: SourceSpec, codes_for: CodesFor | None = None) -> Source:
    if spec.kind == "jsonl":
        return JsonlSource(spec, codes_for)
    if spec.kind == "array_record":
        return ArrayRecordSource(spec)
    return TfdsSource(spec)
