"""The encoder's audio front end: resampling, 16 kHz log-mel, chunking, length formulas, bad files.

Bounds: resampled waveform within the fixture's 1e-5 atol (+1e-4 relative); log-mel features
within 8e-4 atol (+1e-4 relative), the manifest's float32 tolerances; the filterbank bit-exact;
frame counts exact.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from baichuan_audio_jax.audio import lengths as L
from baichuan_audio_jax.audio.io import AudioError, load_audio
from baichuan_audio_jax.audio.resample import resample, resampled_length
from baichuan_audio_jax.audio.whisper_logmel import (
    ENCODER_LOWPASS_FILTER_WIDTH,
    LogMelConfig,
    hann_window,
    load_waveform,
    log_mel,
    mel_filters,
)


def _close(ours, ref, atol, rtol=1e-4):
    err = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    assert np.all(err <= atol + rtol * np.abs(ref)), f"max abs err {err.max():.3e} > atol {atol}"


@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 16000), (8000, 16000), (16000, 24000), (48000, 24000)])
def test_resample_length_and_band(orig, new):
    n = orig // 2 + 7
    t = np.arange(n) / orig
    tone = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    out = resample(tone, orig, new)
    assert out.shape == (math.ceil(n * new / orig),) == (resampled_length(n, orig, new),)
    # An in-band tone keeps its amplitude away from the edges ...
    mid = out[len(out) // 4: 3 * len(out) // 4]
    assert abs(np.abs(mid).max() - 1.0) < 0.01
    # ... and a tone above the new Nyquist frequency is filtered out when downsampling (the wide
    # filter of the encoder path has the sharper cut-off).
    if new < orig:
        high = np.sin(2 * np.pi * 0.6 * new * t).astype(np.float32)
        for width, bound in ((6, 0.05), (ENCODER_LOWPASS_FILTER_WIDTH, 0.005)):
            assert np.abs(resample(high, orig, new, lowpass_filter_width=width)[len(out) // 4: 3 * len(out) // 4]
                          ).max() < bound


@pytest.mark.parametrize("orig,new,width", [(48000, 16000, 128), (8000, 16000, 128), (44100, 16000, 6)])
def test_resample_evaluations_agree(orig, new, width):
    """The matrix-product and FFT evaluations compute the same sums (float32 rounding apart)."""
    from baichuan_audio_jax.audio.resample import _by_fft, _by_matmul, sinc_kernel

    g = math.gcd(orig, new)
    kernel, w = sinc_kernel(orig // g, new // g, width)
    x = np.random.default_rng(0).standard_normal((2, orig // 3 + 11)).astype(np.float32)
    np.testing.assert_allclose(_by_fft(x, kernel, w, orig // g), _by_matmul(x, kernel, w, orig // g),
                               atol=1e-5, rtol=0)


def test_resample_channels_independently_and_identity():
    x = np.random.default_rng(0).standard_normal((2, 3001)).astype(np.float32)
    both = resample(x, 44100, 16000)
    np.testing.assert_array_equal(both[1], resample(x[1], 44100, 16000))
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)


def _log_mel_full_chunk(wav, cfg):
    """Straightforward form: STFT of the whole zero-padded chunk, every frame."""
    padded = np.zeros(cfg.chunk_samples, np.float64)
    padded[:len(wav)] = wav
    padded = np.pad(padded, cfg.n_fft // 2, mode="reflect")
    idx = np.arange(cfg.max_frames)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None]
    power = np.abs(np.fft.rfft(padded[idx] * hann_window(cfg.n_fft), axis=-1)) ** 2
    logm = np.log10(np.maximum(power @ mel_filters().astype(np.float64), 1e-10))
    logm = np.maximum(logm, logm.max() - 8.0)
    return ((logm + 4.0) / 4.0)[:cfg.frames(len(wav))]


@pytest.mark.parametrize("n", [1000, 16000 + 77, 8 * 16000 - 5])
def test_log_mel_equals_full_padded_chunk(n):
    """Computing only the frames that overlap the signal changes nothing (max included)."""
    cfg = LogMelConfig(max_audio_seconds=8)
    rng = np.random.default_rng(n)
    wav = (0.1 * rng.standard_normal(n) * np.linspace(0, 1, n)).astype(np.float32)
    _close(log_mel(wav, cfg), _log_mel_full_chunk(wav, cfg), 1e-4)


def test_log_mel_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 1000), np.float32))
    with pytest.raises(ValueError, match="split_chunks"):
        log_mel(np.zeros(30 * 16000 + 1, np.float32))


def test_length_formulas_table():
    """Reference §4.12 rows for 1 s and 30 s, for ints, numpy and JAX arrays alike."""
    for n, row in [(16000, (101, 51, 12, 47, 94, 58)), (480000, (3000, 1500, 375, 1499, 2998, 1873))]:
        for wrap in (int, np.asarray, jnp.asarray):
            mel = L.mel_frames(wrap(n), 160, 3000)
            enc = L.encoder_frames(mel)
            tok = L.audio_tokens(enc)
            dec = L.decoder_frames(tok)
            coarse = L.coarse_mel_frames(dec)
            refined = L.refined_mel_frames(coarse)
            assert tuple(int(v) for v in (mel, enc, tok, dec, coarse, refined)) == row
    assert L.decoder_frames(0) == 0 and int(L.decoder_frames(np.asarray(0))) == 0


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_audio")
    good = d / "good.wav"
    sf.write(good, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000,
             subtype="PCM_16")
    data = good.read_bytes()
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])
    (d / "garbage.wav").write_bytes(np.random.default_rng(1).bytes(3000))
    (d / "empty.wav").write_bytes(b"")
    sf.write(d / "zero_length.wav", np.zeros(0, np.float32), 16000)
    sf.write(d / "tiny.wav", np.zeros(500, np.float32), 16000)
    return d


@pytest.mark.parametrize("name,reason", [("missing.wav", "missing"), ("empty.wav", "empty"),
                                         ("truncated.wav", "corrupt"), ("garbage.wav", "corrupt"),
                                         ("zero_length.wav", "empty"), ("tiny.wav", "too_short")])
def test_bad_files_raise_naming_the_file(bad_files, name, reason):
    path = bad_files / name
    with pytest.raises(AudioError) as e:
        load_waveform(path)
    assert e.value.reason == reason
    assert str(path) in str(e.value)


def test_good_file_loads(bad_files):
    assert load_audio(bad_files / "good.wav", 16000).shape == (16000,)
