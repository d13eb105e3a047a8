"""Codes / hidden states -> waveform: cross-fade, WAV writing, segment decoding, the whole codes ->
waveform path (``codes_to_wave``, ``detokenize --wav`` on a real recording), ``vocode`` CLI."""
import numpy as np
import pytest
import soundfile as sf

from baichuan_audio_jax.inference.waveform import concat_segments, write_wav


def test_concat_inserts_a_crossfade_at_each_boundary():
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(n).astype(np.float32) for n in (1000, 700, 500))
    out = concat_segments([a, b, c], overlap=240)
    assert len(out) == 1000 + 700 + 500 + 2 * 240  # each boundary adds the overlap; nothing removed
    np.testing.assert_array_equal(out[:1000], a)
    np.testing.assert_array_equal(out[1240:1940], b)
    np.testing.assert_array_equal(out[-500:], c)
    join = out[1000:1240]
    ramp = np.linspace(0.0, 1.0, 240, dtype=np.float32)
    np.testing.assert_allclose(join, a[-240:] * ramp[::-1] + b[:240] * ramp, rtol=0, atol=1e-7)
    assert join[0] == a[-240] and join[-1] == b[239]  # both ramps include their endpoints
    np.testing.assert_allclose(out[1940:2180], b[-240:] * ramp[::-1] + c[:240] * ramp, atol=1e-7)


def test_concat_skips_the_fade_next_to_short_segments():
    long, short = np.ones(500, np.float32), np.full(240, 2.0, np.float32)
    out = concat_segments([long, short, long], overlap=240)
    assert len(out) == 1240  # short (not longer than the overlap) on both boundaries: plain joins
    np.testing.assert_array_equal(concat_segments([long]), long)
    assert len(concat_segments([long, long], overlap=0)) == 1000
    with pytest.raises(ValueError, match="overlap"):
        concat_segments([long], overlap=-1)


def test_write_wav_reads_back_at_24k(tmp_path):
    t = np.arange(2400) / 24000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_wav(tmp_path / "sub" / "tone.wav", wave)
    data, sr = sf.read(path, dtype="float32")
    assert sr == 24000 and data.shape == wave.shape
    np.testing.assert_allclose(data, wave, atol=1 / 32768 + 1e-6)  # 16-bit PCM quantisation
    with pytest.raises(ValueError, match="mono"):
        write_wav(tmp_path / "x.wav", np.zeros((2, 10)))
    with pytest.raises(ValueError, match="non-finite"):
        write_wav(tmp_path / "x.wav", np.array([0.0, np.nan]))
