"""24 kHz log-mel: parity with ``matcha_feat.mel_spectrogram`` and its framing on real speech.

Parity bound: |ours − ref| ≤ 3e-4 + 1e-4·|ref| (manifest tolerance of ``matcha_mel_24k.mel``);
the Slaney filterbank must equal the reference's ``mel_basis`` exactly.
"""

import jax
import numpy as np

from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.audio.mel24k import log_mel_24k, mel_filterbank, num_frames
from baichuan_audio_jax.config import FlowMatchingConfig
from baichuan_audio_jax.parity.runner import run_component


def test_parity_matcha_mel_24k(fixture_set):
    results = run_component(fixture_set, "matcha_mel_24k")
    failures = [r.line() for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    assert "mel" in {r.array for r in results}


def test_filterbank_is_the_reference_basis(fixture_set):
    comp = fixture_set.component("matcha_mel_24k")
    p = comp.spec["params"]
    basis = mel_filterbank(p["sampling_rate"], p["n_fft"], p["num_mels"], float(p["fmin"]), float(p["fmax"]))
    np.testing.assert_array_equal(basis, comp.arrays["mel_basis"])


def test_real_speech_gives_50_frames_per_second(speech_dir):
    cfg = FlowMatchingConfig()
    wave = load_audio(speech_dir / "zh_med_1889.wav", cfg.sampling_rate)
    n = len(wave) - len(wave) % cfg.hop_length
    mel = np.asarray(jax.jit(lambda w: log_mel_24k(w, cfg))(wave[:n]))
    assert mel.shape == (n // cfg.hop_length, 80) == (num_frames(n), 80)
    assert np.isfinite(mel).all() and mel.min() >= np.log(1e-5) - 1e-6
    # Speech frames are far louder than the log floor; the frames differ from each other.
    assert np.median(mel.max(axis=1)) > np.log(1e-5) + 5 and mel.std(axis=0).mean() > 0.5
