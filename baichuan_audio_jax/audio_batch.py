"""The audio training batch layouts: what the tokenizer and flow-matching tasks train on.

Audio batches hold padded per-row arrays with their lengths; every padded size is static and
follows from ``data.seq_len`` (the longest 16 kHz log-mel a row holds, L frames) and
``data.text_len`` (transcript tokens) through the frame formulas of :mod:`audio.lengths`:

=================  ===========================================  ====================================
field              per-row shape (padded size)                  content
=================  ===========================================  ====================================
``features``       [L, 128]                                     encoder log-mel (§5.1)
``feature_lengths``  []                                         valid log-mel frames
``coarse_mel``     [C', 80], C' = 2·(4·N' − 1)                  tokenizer target at 100 Hz
``coarse_lengths``   []                                         C = 2·(4N − 1)
``refined_mel``    [M', 80], M' = int(C'·0.625)                 tokenizer target at 62.5 Hz
``refined_lengths``  []                                         M = int(C·0.625)
``text_ids``       [K]                                          transcript ids + EOS, 0-padded
``text_lengths``     []                                         valid transcript ids
``mel``            [T', 80], T' = 4·N' − 1                      flow-matching target (24 kHz mel)
``mel_lengths``      []                                         T = 4N − 1
=================  ===========================================  ====================================

The ``vocoder`` task's rows hold only ``wave`` [S]: S = ``data.seq_len`` × 480 samples of audio at
the vocoder's rate (24 kHz), a random segment of one recording (its mel is taken on the device).

with E = encoder frames of L, N = ⌊E/4⌋ audio tokens and N' = ⌈E'/4⌉ the bridge's padded
groups for the padded length (the model's output shapes for a padded input).

**Tokenizer targets** (the reference releases no code for them; spec §8). The paper's decoder
reconstructs the *input* mel, so the targets are the encoder's own front-end
(:func:`~baichuan_audio_jax.audio.whisper_logmel.log_mel`: Slaney mel 0–8 kHz, log10, floor at
max − 8, (x + 4)/4) with the decoder's 80 bins, at the geometry of each output: the coarse mel
has the encoder's frame rate (16 kHz, n_fft 400, hop 160: 100 Hz); the refined mel is at 62.5 Hz,
the legacy vocoder's geometry (16 kHz, hop 256, n_fft 1024, ``vocoder_config``). Each is taken
for the first C (resp. M) frames — the frames the decoder produces for the N tokens (the
waveform always yields at least that many). The normalised scale also puts the targets where
the decoder's GroupNorm-ed outputs start (mean ≈ 0, spread ≈ 1).

**Flow-matching target**: the 24 kHz mel (n_fft 1920, hop 480: 50 Hz) of the same audio,
truncated to the decoder's T = 4N − 1 frames. The tokenizer drops a trailing partial token (the
last E mod 4 encoder frames) and the 4N-th decoder frame does not exist, so the target keeps
frames 0 … 4N − 2, those the decoder hidden states describe.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from baichuan_audio_jax.audio.lengths import (
    audio_tokens,
    coarse_mel_frames,
    decoder_frames,
    encoder_frames,
    refined_mel_frames,
)
from baichuan_audio_jax.audio.mel24k import MelGeometry, log_mel_numpy
from baichuan_audio_jax.audio.whisper_logmel import LogMelConfig, log_mel
from baichuan_audio_jax.config import ModelConfig

TOKENIZER_FIELDS = ("features", "feature_lengths", "coarse_mel", "coarse_lengths", "refined_mel",
                    "refined_lengths", "text_ids", "text_lengths")
FLOW_FIELDS = ("features", "feature_lengths", "mel", "mel_lengths")


@dataclasses.dataclass(frozen=True)
class AudioGeometry:
    """Frame counts of one row (valid lengths for ``mel_frames`` = L, padded sizes for the
    padded L)."""

    mel_frames: int  # L
    encoder_frames: int  # E
    tokens: int  # N = E // 4 (valid) ; padded rows use ceil(E / 4) groups
    groups: int  # ceil(E / 4): the bridge's output length
    decoder_frames: int  # 4N − 1 (valid) / 4·groups − 1 (padded)
    coarse_frames: int  # 2 · decoder frames
    refined_frames: int  # int(coarse · 0.625)

    @classmethod
    def of(cls, model: ModelConfig, mel_frames: int, padded: bool) -> "AudioGeometry":
        enc, dec = model.audio_encoder, model.audio_decoder
        pooler = model.vq_bridge.avg_pooler
        e = int(encoder_frames(int(mel_frames), enc.kernel_size, enc.stride_size))
        n = int(audio_tokens(e, pooler))
        groups = -(-e // pooler)
        t = int(decoder_frames(groups if padded else n, pooler, dec.kernel_size))
        c = int(coarse_mel_frames(t, dec.kernel_size, dec.stride_size))
        m = int(refined_mel_frames(c, dec.encoder_hop_length, dec.encoder_sampling_rate, dec.mel_sampling_rate,
                                   dec.mel_hop_length))
        return cls(int(mel_frames), e, n, groups, t, c, m)


def coarse_target_config(model: ModelConfig) -> LogMelConfig:
    """The 100 Hz coarse-mel target: the encoder's front-end with the decoder's mel bins."""
    enc, dec = model.audio_encoder, model.audio_decoder
    return LogMelConfig(sampling_rate=dec.encoder_sampling_rate, n_fft=enc.n_fft, hop_length=dec.encoder_hop_length,
                        num_mel_bins=dec.num_mel_bins, max_audio_seconds=enc.max_audio_seconds)


def refined_target_config(model: ModelConfig) -> LogMelConfig:
    """The 62.5 Hz refined-mel target (the legacy vocoder_config: 16 kHz, hop 256, n_fft 1024)."""
    enc, dec = model.audio_encoder, model.audio_decoder
    return LogMelConfig(sampling_rate=dec.mel_sampling_rate, n_fft=dec.mel_n_fft, hop_length=dec.mel_hop_length,
                        num_mel_bins=dec.num_mel_bins, max_audio_seconds=enc.max_audio_seconds)


def flow_geometry(model: ModelConfig) -> MelGeometry:
    return MelGeometry.of(model.flow_matching)


def log_mel_config(model: ModelConfig) -> LogMelConfig:
    return LogMelConfig.from_encoder(model.audio_encoder, model.vq_bridge.avg_pooler)


def tokenizer_row_shapes(model: ModelConfig, seq_len: int, text_len: int) -> dict[str, tuple[type, tuple]]:
    g = AudioGeometry.of(model, seq_len, padded=True)
    bins = model.audio_decoder.num_mel_bins
    return dict(
        features=(np.float32, (seq_len, model.audio_encoder.num_mel_bins)), feature_lengths=(np.int32, ()),
        coarse_mel=(np.float32, (g.coarse_frames, bins)), coarse_lengths=(np.int32, ()),
        refined_mel=(np.float32, (g.refined_frames, bins)), refined_lengths=(np.int32, ()),
        text_ids=(np.int32, (text_len,)), text_lengths=(np.int32, ()))


def asr_row_shapes(model: ModelConfig, seq_len: int, text_len: int) -> dict[str, tuple[type, tuple]]:
    """Rows of the encoder's ASR pretraining: encoder features and transcript ids."""
    return dict(
        features=(np.float32, (seq_len, model.audio_encoder.num_mel_bins)), feature_lengths=(np.int32, ()),
        text_ids=(np.int32, (text_len,)), text_lengths=(np.int32, ()))


def flow_row_shapes(model: ModelConfig, seq_len: int) -> dict[str, tuple[type, tuple]]:
    g = AudioGeometry.of(model, seq_len, padded=True)
    return dict(
        features=(np.float32, (seq_len, model.audio_encoder.num_mel_bins)), feature_lengths=(np.int32, ()),
        mel=(np.float32, (g.decoder_frames, model.flow_matching.in_channels)), mel_lengths=(np.int32, ()))


def vocoder_row_shapes(model: ModelConfig, seq_len: int) -> dict[str, tuple[type, tuple]]:
    """The ``vocoder`` task's rows: ``wave``, a segment of ``seq_len`` 24 kHz mel frames (50 Hz)
    of audio at the vocoder's rate (``seq_len`` × hop samples)."""
    return dict(wave=(np.float32, (int(seq_len) * model.vocoder.hop_length,)))


class TargetTooShort(ValueError):
    """The waveform gives fewer target frames than the decoder produces (cannot happen for
    consistent configs; reported as a skipped record)."""


def _first(mel: np.ndarray, frames: int, what: str) -> np.ndarray:
    if mel.shape[0] < frames:
        raise TargetTooShort(f"{what}: {mel.shape[0]} frames, the decoder produces {frames}")
    return mel[:frames]


def tokenizer_example(wav16: np.ndarray, model: ModelConfig, text_ids: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """One row's unpadded fields from a 16 kHz waveform (one encoder chunk at most)."""
    feats = log_mel(wav16, log_mel_config(model))
    g = AudioGeometry.of(model, feats.shape[0], padded=False)
    coarse = _first(log_mel(wav16, coarse_target_config(model)), g.coarse_frames, "coarse mel target")
    refined = _first(log_mel(wav16, refined_target_config(model)), g.refined_frames, "refined mel target")
    ids = np.asarray(list(text_ids), np.int32)
    return dict(features=feats, feature_lengths=np.int32(feats.shape[0]), coarse_mel=coarse,
                coarse_lengths=np.int32(g.coarse_frames), refined_mel=refined,
                refined_lengths=np.int32(g.refined_frames), text_ids=ids, text_lengths=np.int32(ids.shape[0]))


def asr_example(wav16: np.ndarray, model: ModelConfig, text_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """One row's unpadded fields for the encoder's ASR pretraining."""
    feats = log_mel(wav16, log_mel_config(model))
    ids = np.asarray(list(text_ids), np.int32)
    return dict(features=feats, feature_lengths=np.int32(feats.shape[0]), text_ids=ids,
                text_lengths=np.int32(ids.shape[0]))


def flow_example(wav16: np.ndarray, wav_target: np.ndarray, model: ModelConfig) -> dict[str, np.ndarray]:
    """One row's unpadded fields: encoder features of the 16 kHz waveform and the flow-matching
    mel of the same audio at the flow-matching rate (``wav_target``)."""
    feats = log_mel(wav16, log_mel_config(model))
    g = AudioGeometry.of(model, feats.shape[0], padded=False)
    mel = _first(log_mel_numpy(wav_target, flow_geometry(model)), g.decoder_frames, "24 kHz mel target")
    return dict(features=feats, feature_lengths=np.int32(feats.shape[0]), mel=mel,
                mel_lengths=np.int32(g.decoder_frames))


def pad_rows(examples: Sequence[Mapping[str, np.ndarray]], shapes: Mapping[str, tuple[type, tuple]]
             ) -> dict[str, np.ndarray]:
    """Stacks examples into a batch, zero-padding every field to its row shape; raises
    ValueError naming the field of an example that does not fit."""
    out = {}
    for k, (dtype, shape) in shapes.items():
        rows = np.zeros((len(examples), *shape), dtype)
        for i, ex in enumerate(examples):
            v = np.asarray(ex[k])
            if v.ndim != len(shape) or any(a > b for a, b in zip(v.shape, shape)):
                raise ValueError(f"field {k!r} of row {i}: shape {v.shape} does not fit {shape}")
            rows[(i, *tuple(slice(0, n) for n in v.shape))] = v
        out[k] = rows
    return out
