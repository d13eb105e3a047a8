"""Checking a manifest before training: every record validated, every audio file decoded.

Returns ``{"total": n, "ok": n, "skipped": {reason: n}}`` with the reasons of
:mod:`data_pipelines.skips` (a record with several bad files counts once, under its first
problem). Files at another sample rate are fine (the pipelines resample them); they are counted
separately in :attr:`ManifestReport.resampled`.
"""
from __future__ import annotations

import collections
import dataclasses
import os

import soundfile as sf
from tqdm import tqdm

from baichuan_audio_jax.audio.io import AudioError, load_audio
from baichuan_audio_jax.config import AudioEncoderConfig, VQBridgeConfig
from baichuan_audio_jax.records import ManifestLineError, audio_refs, read_manifest, resolve_audio_path
from data_pipelines.audio_codes import min_samples_for_one_token
from data_pipelines.manifest import validate
from data_pipelines.skips import RecordError


@dataclasses.dataclass
class ManifestReport:
    total: int = 0
    ok: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    resampled: int = 0  # files at another rate than the encoder's (not skipped)
    examples: dict = dataclasses.field(default_factory=dict)  # reason -> first "origin: detail"

    def summary(self) -> dict:
        return {"total": self.total, "ok": self.ok, "skipped": dict(sorted(self.skipped.items()))}


def check_manifest(path: str, *, encoder: AudioEncoderConfig = AudioEncoderConfig(),
                   bridge: VQBridgeConfig = VQBridgeConfig(), max_audio_seconds: float | None = 300.0,
                   progress: bool = False) -> ManifestReport:
    """Validates every line of ``path``. Raises OSError only if the manifest cannot be read."""

    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a manifest")
    open(path, "rb").close()  # unreadable manifest: OSError before any counting
    min_samples = min_samples_for_one_token(encoder, bridge)
    report = ManifestReport()
    lines = read_manifest(path)
    if progress:

        lines = tqdm(lines, desc=f"checking {os.path.basename(path)}", unit=" records")
    for n, record in lines:
        report.total += 1
        try:
            if isinstance(record, ManifestLineError):
                raise RecordError("bad_json", str(record).removeprefix(f"{record.path}:{record.line}: "))
            validate(record)
            rates = []
            for ref in audio_refs(record):
                audio = resolve_audio_path(path, ref)
                try:
                    load_audio(audio, encoder.sampling_rate, min_samples=min_samples, max_seconds=max_audio_seconds)
                except AudioError as e:
                    raise RecordError(e.reason, str(e)) from None
                rates.append(sf.info(audio).samplerate)
        except RecordError as e:
            report.skipped[e.reason] += 1
            report.examples.setdefault(e.reason, f"{path}:{n}: {e.detail}")
            continue
        report.ok += 1
        report.resampled += sum(r != encoder.sampling_rate for r in rates)
    return report
