"""Reading, loading and exporting HiFT vocoder checkpoints (``hift.pt`` or safetensors).

The released ``hift.pt`` is a PyTorch ``state_dict`` of ``HiFTGenerator`` (reading it needs the
optional ``torch`` extra); a safetensors file with the same names needs nothing beyond the base
install. Keys may carry the ``hifigan_generator.`` prefix of the ``Cosy24kVocoder`` wrapper.
Either weight-norm naming is accepted; export uses ``weight_g``/``weight_v`` (the released
layout) unless asked for the ``parametrizations`` names.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Mapping

import numpy as np
from flax import nnx

from baichuan_audio_jax.config import VocoderConfig
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import MappingError, combine_tables, export_tensors
from baichuan_audio_jax.conversion.tables.vocoder import WEIGHT_NORM_NAMES, vocoder_table, weight_norm_naming

WRAPPER_PREFIX = "hifigan_generator."


def read_vocoder_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reference name -> float32 numpy array, from ``.safetensors`` or a PyTorch ``.pt``/``.pth``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"vocoder checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from baichuan_audio_jax.parity.fixtures import read_safetensors

        tensors = read_safetensors(path)
    else:
        try:
            import torch
        except ImportError as e:
            raise ValueError(f"{path}: reading a PyTorch checkpoint needs the optional torch extra "
                             "(pip install -e '.[torch]'), or convert it to .safetensors") from e
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: expected a state_dict (name -> tensor), got {type(obj).__name__}")
        tensors = {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    if tensors and all(k.startswith(WRAPPER_PREFIX) for k in tensors):
        tensors = {k[len(WRAPPER_PREFIX):]: v for k, v in tensors.items()}
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def _v_shape(tensors: Mapping[str, np.ndarray], module: str) -> tuple:
    for suffix in ("weight_v", "parametrizations.weight.original1"):
        if f"{module}.{suffix}" in tensors:
            return tuple(tensors[f"{module}.{suffix}"].shape)
    raise MappingError(f"vocoder checkpoint lacks {module}.weight_v (or its parametrizations name)")


def vocoder_config_from_tensors(tensors: Mapping[str, np.ndarray], base: VocoderConfig = VocoderConfig()
                                ) -> VocoderConfig:
    """``base`` with the widths read off a checkpoint (mel bins, base channels, F0 channels)."""
    out, mels, _ = _v_shape(tensors, "conv_pre")
    cond = _v_shape(tensors, "f0_predictor.condnet.0")[0]
    return dataclasses.replace(base, in_channels=mels, base_channels=out, f0_cond_channels=cond)


def load_vocoder(tensors: Mapping[str, np.ndarray], cfg: VocoderConfig | None = None):
    """A :class:`~baichuan_audio_jax.models.hift.HiFTGenerator` holding ``tensors`` exactly.

    Every reference key must be present and known (errors name the keys)."""
    from baichuan_audio_jax.models.hift import HiFTGenerator

    cfg = cfg or vocoder_config_from_tensors(tensors)
    table = combine_tables(vocoder_table(cfg, weight_norm=weight_norm_naming(tensors)))
    model, _ = load_model(lambda: HiFTGenerator(cfg, rngs=nnx.Rngs(0)), table, tensors)
    return model


def export_vocoder(model, weight_norm: str = "weight_g") -> Iterator[tuple[str, np.ndarray]]:
    """(reference name, tensor) pairs of ``model`` in the ``hift.pt`` layout."""
    if weight_norm not in WEIGHT_NORM_NAMES:
        raise ValueError(f"weight_norm naming {weight_norm!r}: choose from {sorted(WEIGHT_NORM_NAMES)}")
    table = combine_tables(vocoder_table(model.cfg, weight_norm=weight_norm))
    return export_tensors(nnx.state(model), table)
