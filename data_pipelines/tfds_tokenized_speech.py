"""An example TFDS builder: tokenized speech records, stored so that TensorFlow is not needed.

Each example holds the manifest record as text and the codes of its audio references as tensors
(``tfds.features.Audio`` would need TensorFlow to read)::

    record        Text               the manifest line (JSON)
    source        Text               "<manifest>:<line>"
    codes         int16 [ΣN_i, 8]    codes of every audio reference, concatenated in document order
    code_lengths  int32 [n_audio]    N_i of each reference

Build it once from manifests and an audio tokenizer, as ``array_record`` files::

    builder = TokenizedSpeech(data_dir=DIR, manifests={"train": "train.jsonl"}, codes_for=codes_for)
    builder.download_and_prepare()

and list ``{"kind": "tfds", "name": "tokenized_speech", "data_dir": DIR}`` in ``data.sources``;
:class:`data_pipelines.sources.TfdsSource` reads it with ``tfds.data_source``. Records that cannot
be used are skipped, counted by reason and logged.
"""
from __future__ import annotations

import inspect
import json
import logging
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from baichuan_audio_jax.audio.io import AudioError
from baichuan_audio_jax.batch import NUM_CODEBOOKS
from baichuan_audio_jax.records import audio_refs, read_manifest, resolve_audio_path
from data_pipelines.audio_codes import CodesFor
from data_pipelines.manifest import validate
from data_pipelines.skips import RecordError, Skip, SkipCounter

log = logging.getLogger("data_pipelines")


class TokenizedSpeech(tfds.core.GeneratorBasedBuilder):
    """Tokenized speech records of any task (see ``data_pipelines.manifest``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Manifest record + audio codes per reference."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS's default resolves the file of a builder inside a package through
        # `importlib_resources`, which it only installs for Python < 3.9; the module file is the answer.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, manifests: Mapping[str, str] | None = None, codes_for: CodesFor | None = None, **kwargs):
        self._manifests = dict(manifests or {})
        self._codes_for = codes_for
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self.skipped = SkipCounter()

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Manifest records with the RVQ codes of their audio (12.5 Hz, 8 codebooks).",
            features=tfds.features.FeaturesDict({
                "record": tfds.features.Text(),
                "source": tfds.features.Text(),
                "codes": tfds.features.Tensor(shape=(None, NUM_CODEBOOKS), dtype=np.int16),
                "code_lengths": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            }),
        )

    def _split_generators(self, dl_manager):
        if not self._manifests or self._codes_for is None:
            raise ValueError("TokenizedSpeech needs manifests={split: path} and codes_for to be built")
        return {split: self._generate_examples(path) for split, path in self._manifests.items()}

    def _generate_examples(self, manifest: str):
        for n, record in read_manifest(manifest):
            origin = f"{manifest}:{n}"
            try:
                if not isinstance(record, dict):
                    raise RecordError("bad_json", str(record))
                validate(record)
                codes = []
                for ref in audio_refs(record):
                    try:
                        codes.append(np.asarray(self._codes_for(resolve_audio_path(manifest, ref))))
                    except AudioError as e:
                        raise RecordError(e.reason, str(e)) from None
            except RecordError as e:
                self.skipped.add(Skip.of(e, origin))
                continue
            flat = np.concatenate(codes) if codes else np.zeros((0, NUM_CODEBOOKS), np.int16)
            yield origin, {
                "record": json.dumps(record, ensure_ascii=False),
                "source": origin,
                "codes": flat.astype(np.int16),
                "code_lengths": np.asarray([len(c) for c in codes], np.int32),
            }
        log.info("%s: skipped %s", manifest, self.skipped.summary())
