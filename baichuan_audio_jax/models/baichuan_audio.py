"""The full Baichuan-Audio model: the components of the reference ``OmniForCausalLM``, each under
its own attribute.

The composition is derived from the component registry
(:data:`baichuan_audio_jax.models.registry.PARTS`): every registered part of the
``"model"`` checkpoint becomes an attribute named after its ``model_path``: ``llm``
(:class:`~baichuan_audio_jax.models.audio_llm.AudioLLM`), ``audio_tokenizer``
(:class:`~baichuan_audio_jax.models.audio_tokenizer.AudioTokenizer`) and ``flow_matching``
(:class:`~baichuan_audio_jax.models.flow_matching.FlowMatchingDecoder`). The vocoder is a separate
model (its reference weights are a separate file, ``hift.pt``) and is not part of this module.

A model may hold a subset of the components (``components=("llm",)``), e.g. to restore only what
a job needs from a bundle.
"""
from __future__ import annotations

from typing import Sequence

from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.models.registry import parts_of


class BaichuanAudio(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, components: Sequence[str] | None = None):
        self.cfg = cfg
        selected = parts_of("model", components)
        self.component_names = tuple(c.name for c in selected)
        for comp in selected:
            if len(comp.model_path) != 1:
                raise ValueError(f"component {comp.name}: model_path {comp.model_path} must be one attribute name")
            setattr(self, comp.model_path[0], comp.build(cfg, rngs))
