"""Parity runner for ``matcha_mel_24k``: the 24 kHz log-mel with the manifest's parameters."""
from __future__ import annotations

import dataclasses

import numpy as np

from baichuan_audio_jax.audio.mel24k import log_mel_24k
from baichuan_audio_jax.config import FlowMatchingConfig
from baichuan_audio_jax.parity.fixtures import FixtureComponent
from baichuan_audio_jax.parity.registry import register


def mel_config_from_params(params: dict) -> tuple[FlowMatchingConfig, int]:
    """``matcha_feat.mel_spectrogram`` keyword arguments -> (config, n_mels)."""
    if params.get("center", False):
        raise ValueError("matcha_mel_24k: center=True is not used by the reference and not implemented")
    cfg = dataclasses.replace(
        FlowMatchingConfig(), n_fft=int(params["n_fft"]), hop_length=int(params["hop_size"]),
        win_size=int(params["win_size"]), sampling_rate=int(params["sampling_rate"]),
        fmin=float(params["fmin"]), fmax=float(params["fmax"]))
    return cfg, int(params["num_mels"])


@register("matcha_mel_24k")
def matcha_mel_24k(comp: FixtureComponent) -> dict:
    cfg, n_mels = mel_config_from_params(comp.spec["params"])
    mel = log_mel_24k(comp.arrays["waveform_24k"], cfg, n_mels)
    return {"mel": np.swapaxes(np.asarray(mel), -1, -2)}
