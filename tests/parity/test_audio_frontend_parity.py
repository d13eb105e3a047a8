"""The encoder's audio front end: resampling, 16 kHz log-mel, chunking, length formulas, bad files.

Bounds: resampled waveform within the fixture's 1e-5 atol (+1e-4 relative); log-mel features
within 8e-4 atol (+1e-4 relative), the manifest's float32 tolerances; the filterbank bit-exact;
frame counts exact.
"""


import numpy as np
import pytest

from baichuan_audio_jax.audio import lengths as L
from baichuan_audio_jax.audio.resample import resample
from baichuan_audio_jax.audio.whisper_logmel import (
    ENCODER_LOWPASS_FILTER_WIDTH,
    LogMelConfig,
    load_waveform,
    log_mel,
    mel_filters,
    split_chunks,
)


@pytest.fixture(scope="module")
def logmel_fixture(fixture_set):
    return fixture_set.component("whisper_logmel").arrays


@pytest.fixture(scope="module")
def recordings(speech_dir):
    """16 kHz waveforms of the two real recordings, loaded as the encoder path does."""
    return {name: load_waveform(speech_dir / f"{name}.wav") for name in ("zh_med_1889", "zh_med_1497")}


def _close(ours, ref, atol, rtol=1e-4):
    err = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    assert np.all(err <= atol + rtol * np.abs(ref)), f"max abs err {err.max():.3e} > atol {atol}"


def test_resample_reproduces_reference_waveform(logmel_fixture):
    pcm = logmel_fixture["pcm_48k"].astype(np.float32) / 32768.0
    ours = resample(pcm, 48000, 16000, lowpass_filter_width=ENCODER_LOWPASS_FILTER_WIDTH)
    _close(ours, logmel_fixture["waveform_16k"], 1e-5)
    # The default (narrow) filter is a different resampler: the width must reach the kernel.
    assert np.abs(resample(pcm, 48000, 16000) - logmel_fixture["waveform_16k"]).max() > 1e-4


def test_mel_filterbank_is_the_reference_one(logmel_fixture):
    np.testing.assert_array_equal(mel_filters(16000, 400, 128), logmel_fixture["mel_filters"])


def test_log_mel_matches_reference(logmel_fixture, fixture_set):
    c = fixture_set.component("whisper_logmel").config
    cfg = LogMelConfig(max_audio_seconds=c["max_audio_seconds"])
    feats = log_mel(logmel_fixture["waveform_16k"], cfg)
    assert feats.shape == logmel_fixture["features"].T.shape
    _close(feats.T, logmel_fixture["features"], 8e-4)


def test_real_recordings_frame_counts(recordings):
    """zh_med_1889 → L 451, E 226, N 56; zh_med_1497 → L 1879, E 940, N 235 (reference §4.12)."""
    cfg = LogMelConfig()
    expected = {"zh_med_1889": (72000, 451, 226, 56), "zh_med_1497": (300480, 1879, 940, 235)}
    for name, (samples, mel, enc, tok) in expected.items():
        wav = recordings[name]
        assert wav.shape == (samples,)
        feats = log_mel(wav, cfg)
        assert feats.shape == (mel, 128)
        assert np.isfinite(feats).all() and feats.max() - feats.min() <= 2.0 + 1e-6  # 8 decades / 4
        assert L.encoder_frames(mel) == enc and cfg.tokens(samples) == tok


def test_long_audio_is_split_back_to_back(recordings):
    """With 8 s chunks, 18.8 s splits into 8 s + 8 s + 2.78 s (100 + 100 + 35 tokens); remainders
    shorter than n_fft or than one token are dropped."""
    cfg = LogMelConfig(max_audio_seconds=8)
    wav = recordings["zh_med_1497"]
    chunks = split_chunks(wav, cfg)
    assert [len(c) for c in chunks] == [128000, 128000, 44480]
    np.testing.assert_array_equal(np.concatenate(chunks), wav)
    assert [cfg.tokens(len(c)) for c in chunks] == [100, 100, 35]
    assert len(split_chunks(wav[:128000 + 399], cfg)) == 1  # tail < n_fft
    assert len(split_chunks(wav[:128000 + 900], cfg)) == 1  # tail of 900 samples: L 6, E 3, N 0
    assert len(split_chunks(wav[:128000 + 960], cfg)) == 2  # 960 samples: the shortest with a token
