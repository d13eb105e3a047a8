"""Loading and exporting the HiFT vocoder (``hift.pt`` layout) in memory.

Files are read by :mod:`baichuan_audio_jax.conversion.torch_io` (``open_reference(path,
"vocoder")`` strips the ``hifigan_generator.`` wrapper prefix; ``.pt`` needs the optional torch
extra); bundles convert through :mod:`baichuan_audio_jax.conversion.convert`. Either weight-norm
naming is accepted on load; export uses ``weight_g``/``weight_v`` (the released layout) unless
asked for the ``parametrizations`` names.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, VocoderConfig
from baichuan_audio_jax.conversion.loading import load_component
from baichuan_audio_jax.conversion.mapping import MappingError, combine_tables, export_tensors
from baichuan_audio_jax.conversion.tables.vocoder import WEIGHT_NORM_NAMES, vocoder_table, vocoder_widths


def vocoder_config_from_tensors(source: Any, base: VocoderConfig = VocoderConfig()) -> VocoderConfig:
    """``base`` with the widths read off a checkpoint's shapes (mel bins, base channels, F0
    channels); ``source`` is a name -> array mapping or a ``ReferenceCheckpoint``."""
    infos = getattr(source, "infos", None)  # a ReferenceCheckpoint: shapes from the header, nothing read
    shapes = ({k: i.shape for k, i in infos.items()} if infos is not None
              else {k: np.shape(source[k]) for k in source.keys() if k.startswith(("conv_pre.", "f0_predictor."))})
    widths = vocoder_widths(shapes)
    if not widths:
        raise MappingError("vocoder checkpoint lacks conv_pre.weight_v or f0_predictor.condnet.0.weight_v "
                           "(or their parametrizations names)")
    return dataclasses.replace(base, **widths)


def load_vocoder(source: Any, cfg: VocoderConfig | None = None):
    """A :class:`~baichuan_audio_jax.models.hift.HiFTGenerator` holding ``source``'s tensors exactly
    (a name -> array mapping or a ``ReferenceCheckpoint``); ``cfg`` defaults to the released
    vocoder's settings with the checkpoint's widths. Every reference key must be present and
    known (errors name the keys)."""
    cfg = cfg or vocoder_config_from_tensors(source)
    model, _ = load_component("vocoder", ModelConfig(vocoder=cfg), source)
    return model


def export_vocoder(model: nnx.Module, weight_norm: str = "weight_g") -> Iterator[tuple[str, np.ndarray]]:
    """(reference name, tensor) pairs of ``model`` in the ``hift.pt`` layout."""
    if weight_norm not in WEIGHT_NORM_NAMES:
        raise ValueError(f"weight_norm naming {weight_norm!r}: choose from {sorted(WEIGHT_NORM_NAMES)}")
    table = combine_tables(vocoder_table(model.cfg, weight_norm=weight_norm))
    return export_tensors(nnx.state(model), table)
