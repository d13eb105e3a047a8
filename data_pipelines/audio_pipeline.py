"""The audio input pipeline: manifests → waveforms → padded audio batches, per host, resumable.

``build_audio_iterator(config, process_index=i, process_count=n)`` is the ``grain_audio`` data
source of the training engine, for the ``audio_tokenizer``, ``flow_matching``, ``encoder_asr``
and ``vocoder`` tasks. Its batches follow :mod:`baichuan_audio_jax.audio_batch` (padded log-mel
features, mel targets and transcript ids with their lengths). It shares the token pipeline's machinery
(:mod:`data_pipelines.pipeline`): the same ``data.sources`` specs (JSONL manifests here: audio
must be decoded), per-host sharding (host i reads items i, i + n, …), per-epoch shuffling,
weighted mixing, skip counting by reason and the resumable iterator state.

Per record:

1. the manifest line is parsed and validated (:mod:`data_pipelines.manifest`); the record must
   have an ``audio`` reference, and for the tokenizer's LLM-alignment loss a ``text`` transcript;
2. the audio is decoded and resampled to 16 kHz (and to the flow-matching rate for
   ``flow_matching``); files that are missing, empty, corrupt, too short for one audio token or
   longer than a row (``data.seq_len`` log-mel frames, ``data.max_audio_seconds``) are skipped
   and counted by reason;
3. the transcript is tokenized (``data.tokenizer``) and ends with EOS; longer than
   ``data.text_len`` is skipped as ``sequence_too_long``.

**Speed perturbation** (``data.speed_perturb``, a list of factors such as ``[0.9, 1.0, 1.1]``;
empty: off): each record, every time it is read, is played at one of the factors drawn at random
(deterministic in the seed and the record's position in the stream, so resuming replays it): its
16 kHz waveform is resampled to ``16 kHz / factor`` (rounded to 400 Hz) and read as 16 kHz again,
which changes tempo and pitch together, as speed perturbation for ASR does. The length limits
apply to the perturbed audio. Not for ``flow_matching``, whose target is read from the file again.

For ``vocoder`` a row is one segment of ``data.seq_len`` 24 kHz mel frames (× 480 samples) of a
recording resampled to the vocoder's rate, cut at an offset drawn per element and epoch
(:class:`VocoderSegment`); recordings shorter than a segment are skipped as ``too_short``.
"""
from __future__ import annotations

import grain
import ml_collections
import numpy as np

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.audio.io import AudioError, load_audio
from baichuan_audio_jax.audio.resample import resample
from baichuan_audio_jax.audio.whisper_logmel import ENCODER_LOWPASS_FILTER_WIDTH
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.records import resolve_audio_path
from baichuan_audio_jax.text.tokenizer import check_special_tokens, load_text_tokenizer
from data_pipelines import mixture
from data_pipelines.audio_codes import min_samples_for_one_token
from data_pipelines.manifest import validate
from data_pipelines.pipeline import TrainIterator, _seed, source_specs, train_iterator
from data_pipelines.skips import CountSkipsIterDataset, RecordError, Skip
from data_pipelines.sources import JsonlSource, parse_line

TASKS = ("audio_tokenizer", "flow_matching", "encoder_asr", "vocoder")
SPEED_RATE_STEP = 400  # Hz: perturbed rates are multiples of it, so the resampler's period stays short


class AudioExample:
    """Manifest line → one row's fields (unpadded) or :class:`Skip`; picklable for Grain workers."""

    def __init__(self, source: JsonlSource, model: ModelConfig, task: str, *, max_samples: int,
                 max_seconds: float, text_len: int, tokenizer_path: str = ""):
        self.source, self.model, self.task = source, model, task
        self.max_samples, self.max_seconds, self.text_len = max_samples, max_seconds, text_len
        self.tokenizer_path = tokenizer_path
        self._tokenizer = None
        self.min_samples = min_samples_for_one_token(model.audio_encoder, model.vq_bridge)

    @property
    def tokenizer(self):
        if self._tokenizer is None and self.tokenizer_path:
            self._tokenizer = load_text_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def __getstate__(self):
        return {**self.__dict__, "_tokenizer": None}

    def __call__(self, item, speed: float = 1.0):
        origin = self.source.origin(item)
        try:
            return self._build(item, speed)
        except RecordError as e:
            return Skip.of(e, origin)

    def _load(self, path: str, rate: int, lowpass: int | None = None) -> np.ndarray:
        try:
            kw = {} if lowpass is None else {"lowpass_filter_width": lowpass}
            return load_audio(path, rate, max_seconds=self.max_seconds, **kw)
        except AudioError as e:
            raise RecordError(e.reason, str(e)) from None

    def _record(self, item) -> tuple[dict, str]:
        """(record, resolved audio path) of a manifest line."""
        _, line = item
        record = parse_line(line)
        validate(record)
        ref = record.get("audio")
        if not isinstance(ref, str) or not ref:
            raise RecordError("invalid_record", "the record has no 'audio' reference (a single audio file)")
        return record, resolve_audio_path(self.source.path, ref)

    def _build(self, item, speed: float = 1.0) -> dict:
        record, path = self._record(item)
        enc = self.model.audio_encoder
        wav = self._load(path, enc.sampling_rate, ENCODER_LOWPASS_FILTER_WIDTH)
        if speed != 1.0:
            wav = speed_perturbed(wav, enc.sampling_rate, speed)
        if wav.shape[0] < self.min_samples:
            raise RecordError("too_short", f"{path}: {wav.shape[0]} samples at {enc.sampling_rate} Hz give no "
                                           f"audio token (< {self.min_samples})")
        if wav.shape[0] > self.max_samples:
            raise RecordError("too_long", f"{path}: {wav.shape[0] / enc.sampling_rate:.2f} s is longer than a row "
                                          f"holds ({self.max_samples / enc.sampling_rate:.2f} s, data.seq_len)")
        try:
            if self.task == "flow_matching":
                rate = self.model.flow_matching.sampling_rate
                target = wav if rate == enc.sampling_rate else self._load(path, rate)
                return audio_batch.flow_example(wav, target, self.model)
            ids: list[int] = []
            if self.tokenizer is not None:
                text = record.get("text")
                if not isinstance(text, str) or not text.strip():
                    raise RecordError("invalid_record", "the record has no 'text' transcript (the LLM alignment "
                                                        "loss and ASR need one)")
                ids = list(self.tokenizer.encode(text)) + [self.model.tokens.eos_token_id]
                if len(ids) > self.text_len:
                    raise RecordError("sequence_too_long", f"transcript of {len(ids)} tokens (with EOS) exceeds "
                                                           f"data.text_len={self.text_len}")
            if self.task == "encoder_asr":
                return audio_batch.asr_example(wav, self.model, ids)
            return audio_batch.tokenizer_example(wav, self.model, ids)
        except audio_batch.TargetTooShort as e:
            raise RecordError("too_short", f"{path}: {e}") from None


def speed_perturbed(wav: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """``wav`` (at ``rate``) played ``factor`` times faster: resampled to ``rate / factor``
    (rounded to SPEED_RATE_STEP) and read at ``rate``."""
    new = max(SPEED_RATE_STEP, int(round(rate / factor / SPEED_RATE_STEP)) * SPEED_RATE_STEP)
    return wav if new == rate else resample(wav, rate, new).astype(np.float32)


class RandomSpeed:
    """Grain random map: a record built at a speed factor drawn from ``factors``."""

    def __init__(self, example: AudioExample, factors):
        self.example, self.factors = example, [float(f) for f in factors]

    def __call__(self, item, rng: np.random.Generator):
        return self.example(item, self.factors[int(rng.integers(len(self.factors)))])


class VocoderSegment(AudioExample):
    """Manifest line → a segment of ``segment`` samples at the vocoder's rate, starting at a
    random offset drawn from the per-element generator of ``random_map`` (so each epoch cuts
    other segments, reproducibly); recordings shorter than a segment are skipped (``too_short``)."""

    def __init__(self, source: JsonlSource, model: ModelConfig, *, segment: int, max_seconds: float):
        super().__init__(source, model, "vocoder", max_samples=0, max_seconds=max_seconds, text_len=0)
        self.segment = segment

    def __call__(self, item, rng: np.random.Generator):
        origin = self.source.origin(item)
        try:
            _, path = self._record(item)
            rate = self.model.vocoder.sampling_rate
            wav = self._load(path, rate)
            if wav.shape[0] < self.segment:
                raise RecordError("too_short", f"{path}: {wav.shape[0]} samples at {rate} Hz, shorter than one "
                                               f"training segment ({self.segment}, data.seq_len)")
            start = int(rng.integers(0, wav.shape[0] - self.segment + 1))
            return {"wave": np.asarray(wav[start:start + self.segment], np.float32)}
        except RecordError as e:
            return Skip.of(e, origin)


class PadBatch:
    """Examples → one padded host batch (:func:`baichuan_audio_jax.audio_batch.pad_rows`)."""

    def __init__(self, shapes):
        self.shapes = shapes

    def __call__(self, examples):
        return audio_batch.pad_rows(examples, self.shapes)


def row_shapes(config: ml_collections.ConfigDict) -> dict:
    """Per-row field shapes of ``config.task``'s audio batches."""
    model = ModelConfig.from_config(config.model)
    task = str(config.task)
    if task == "flow_matching":
        return audio_batch.flow_row_shapes(model, int(config.data.seq_len))
    if task == "audio_tokenizer":
        return audio_batch.tokenizer_row_shapes(model, int(config.data.seq_len), int(config.data.text_len))
    if task == "encoder_asr":
        return audio_batch.asr_row_shapes(model, int(config.data.seq_len), int(config.data.text_len))
    if task == "vocoder":
        return audio_batch.vocoder_row_shapes(model, int(config.data.seq_len))
    raise ValueError(f"data.source='grain_audio' serves the tasks {list(TASKS)}, not {task!r}")


def build_audio_iterator(config: ml_collections.ConfigDict, *, process_index: int = 0,
                         process_count: int = 1) -> TrainIterator:
    """This host's padded audio batches (``config.data.batch_size // process_count`` rows)."""
    data = config.data
    shapes = row_shapes(config)
    model = ModelConfig.from_config(config.model)
    task = str(config.task)
    rows = int(data.batch_size) // process_count
    seq_len = int(data.seq_len)
    enc = model.audio_encoder
    max_frames = audio_batch.log_mel_config(model).max_frames
    if seq_len > max_frames and task != "vocoder":
        raise ValueError(f"data.seq_len={seq_len} log-mel frames exceed one encoder chunk ({max_frames} frames, "
                         f"model.audio_encoder.max_audio_seconds={enc.max_audio_seconds})")
    tokenizer_path = str(data.get("tokenizer", "") or "") if task in ("audio_tokenizer", "encoder_asr") else ""
    llm_weight = float(config.train.get("tokenizer", {}).get("llm_weight", 0.0)) if task == "audio_tokenizer" else 0
    if task == "encoder_asr" and not tokenizer_path:
        raise ValueError("task 'encoder_asr' needs transcripts: set data.tokenizer to a text tokenizer")
    speeds = [float(f) for f in (data.get("speed_perturb", None) or [])]
    if any(f <= 0 for f in speeds):
        raise ValueError(f"data.speed_perturb: factors must be positive, got {speeds}")
    if task == "flow_matching" and speeds and speeds != [1.0]:
        raise ValueError("data.speed_perturb is not supported for task 'flow_matching' (its 24 kHz target would "
                         "not be perturbed with the features): set data.speed_perturb=[]")
    if llm_weight > 0 and not tokenizer_path:
        raise ValueError("train.tokenizer.llm_weight > 0 needs transcripts: set data.tokenizer to a text tokenizer "
                         "(e.g. `baichuan-audio data train-tokenizer ...`), or set train.tokenizer.llm_weight=0")
    if tokenizer_path:
        tok = load_text_tokenizer(tokenizer_path)
        check_special_tokens(tok, model.tokens, model.llm.vocab_size)
    # L = n // hop + 1 <= seq_len  <=>  n < seq_len · hop
    max_samples = seq_len * enc.hop_length - 1
    max_seconds = float(data.get("max_audio_seconds", 0) or 0) or max_samples / enc.sampling_rate
    specs = source_specs(data)
    seed = int(data.seed)
    epochs = int(data.get("num_epochs", 0) or 0)
    datasets = []
    for i, spec in enumerate(specs):
        if spec.kind != "jsonl":
            raise ValueError(f"data.sources entry {spec.label}: the audio pipeline reads JSONL manifests "
                             f"(audio files), not {spec.kind} sources")
        source = JsonlSource(spec, None)
        ds = source.dataset()
        if len(ds) < process_count:
            raise ValueError(f"source {spec.label} has {len(ds)} records, fewer than the {process_count} hosts")
        ds = ds[process_index::process_count]
        if data.shuffle:
            ds = ds.shuffle(seed=_seed(seed, i))
        ds = ds.repeat(epochs if epochs > 0 else None)
        if task == "vocoder":
            segment = shapes["wave"][1][0]
            max_audio = float(data.get("max_audio_seconds", 0) or 0)
            datasets.append(ds.random_map(VocoderSegment(source, model, segment=segment,
                                                          max_seconds=max_audio or None),
                                          seed=_seed(seed, i) + 1))
            continue
        example = AudioExample(source, model, task, max_samples=max_samples, max_seconds=max_seconds,
                               text_len=int(data.get("text_len", 0) or 0), tokenizer_path=tokenizer_path)
        if speeds and speeds != [1.0]:
            datasets.append(ds.random_map(RandomSpeed(example, speeds), seed=_seed(seed + 1, i)))
        else:
            datasets.append(ds.map(example))
    ds = mixture.mix(datasets, [s.weight for s in specs], [s.label for s in specs])
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(data.read_threads),
                                              prefetch_buffer_size=int(data.prefetch)))
    it = CountSkipsIterDataset(it, max_consecutive=int(data.max_consecutive_skips))
    it = it.batch(rows, drop_remainder=True, batch_fn=PadBatch(shapes))
    return train_iterator(it, config, process_index=process_index, process_count=process_count)
