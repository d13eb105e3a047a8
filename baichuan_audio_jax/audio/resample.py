"""Sample-rate conversion."""
from __future__ import annotations

import numpy as np


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resamples along the last axis (float32 in, float32 out)."""
    if orig_sr == target_sr:
        return np.asarray(x, np.float32)
    import librosa

    return librosa.resample(np.asarray(x, np.float32), orig_sr=orig_sr, target_sr=target_sr,
                            res_type="soxr_hq").astype(np.float32)
