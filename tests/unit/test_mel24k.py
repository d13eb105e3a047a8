"""24 kHz log-mel: parity with ``matcha_feat.mel_spectrogram`` and its framing on real speech.

Parity bound: |ours − ref| ≤ 3e-4 + 1e-4·|ref| (manifest tolerance of ``matcha_mel_24k.mel``);
the Slaney filterbank must equal the reference's ``mel_basis`` exactly.
"""
import warnings

import numpy as np
import pytest

from baichuan_audio_jax.audio.mel24k import log_mel_24k
from baichuan_audio_jax.config import FlowMatchingConfig


def test_out_of_range_warns_without_clipping_and_short_input_fails():
    cfg = FlowMatchingConfig()
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.5, 0.5, 4800).astype(np.float32)
    loud = wave * 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_mel = np.asarray(log_mel_24k(wave, cfg))
        loud_mel = np.asarray(log_mel_24k(loud, cfg))
    assert len(caught) == 1 and "exceeds [-1, 1]" in str(caught[0].message)
    np.testing.assert_allclose(loud_mel, quiet_mel + np.log(4.0), atol=1e-3)  # scaled, not clipped
    with pytest.raises(ValueError, match="too short"):
        log_mel_24k(np.zeros(100, np.float32), cfg)
