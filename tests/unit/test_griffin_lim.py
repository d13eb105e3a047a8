"""Griffin-Lim, the renderer of speech for bundles without vocoder weights: the mel of its output is
the mel it was given, and a tone comes back at its pitch."""
import numpy as np

from baichuan_audio_jax.audio.mel24k import MelGeometry, log_mel_numpy
from baichuan_audio_jax.inference.griffin_lim import griffin_lim_wave


def test_tone_round_trips_through_the_mel():
    g = MelGeometry()
    t = np.arange(g.sampling_rate) / g.sampling_rate  # 1 s
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    mel = log_mel_numpy(tone, g)
    wave = griffin_lim_wave(mel, g, n_iter=32)
    assert wave.shape == (g.hop_length * mel.shape[0],) and wave.dtype == np.float32
    assert np.abs(wave).max() <= 0.99
    spectrum = np.abs(np.fft.rfft(wave))
    # within half the spacing of the mel bands' centres there (37 Hz below 1 kHz)
    assert abs(np.argmax(spectrum) * g.sampling_rate / len(wave) - 440.0) < 18.5
    back = log_mel_numpy(wave, g)
    # loud bins (within 40 dB of the peak) come back within 1 natural-log unit on average
    loud = mel > mel.max() - np.log(100.0)
    assert np.mean(np.abs(back[loud] - mel[loud])) < 1.0


def test_bad_mel_is_refused():
    import pytest

    with pytest.raises(ValueError, match=r"\[T, 80\]"):
        griffin_lim_wave(np.zeros((10, 64), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        griffin_lim_wave(np.zeros((0, 80), np.float32))
