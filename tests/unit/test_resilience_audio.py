"""Non-finite samples in a float WAV are refused by name (reason ``nonfinite``)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from baichuan_audio_jax.audio.io import AudioError, read_audio


def test_nan_samples_refused(tmp_path):
    wav = np.zeros((16000, 1), np.float32)
    wav[8000, 0] = np.nan
    wav[8001, 0] = np.inf
    path = str(tmp_path / "nan.wav")
    sf.write(path, wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as e:
        read_audio(path)
    assert e.value.reason == "nonfinite"
    assert str(e.value) == f"{path}: nonfinite (2 NaN/inf samples, the first at 0.500 s)"
    sf.write(path, np.nan_to_num(wav, posinf=0.0), 16000, subtype="FLOAT")
    assert read_audio(path)[0].shape == (1, 16000)
