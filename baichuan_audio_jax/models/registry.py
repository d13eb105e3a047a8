"""The model registry: every part of Baichuan-Audio that has weights of its own.

A *part* is one ``nnx.Module`` class, the reference file its weights come from (``"model"``: the
Hugging Face directory of ``OmniForCausalLM``; ``"vocoder"``: the separate ``hift.pt``), where it
sits inside the composed model of that file (:class:`~baichuan_audio_jax.models.baichuan_audio.
BaichuanAudio`) and which section of :class:`~baichuan_audio_jax.config.ModelConfig` it takes.

The composed model, bundles and conversion are all derived from :data:`PARTS`. Adding a model part
is one entry here plus its mapping tables in ``conversion/components.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.models.audio_llm import AudioLLM
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder
from baichuan_audio_jax.models.hift import HiFTGenerator

CHECKPOINTS = ("model", "vocoder")


@dataclasses.dataclass(frozen=True)
class ModelPart:
    """One model part.

    * ``name``: the part's name (``--components``, ``bundle.json``).
    * ``checkpoint``: the reference file it lives in, ``"model"`` or ``"vocoder"``.
    * ``model_path``: the attribute path of the module inside the composed model of its
      checkpoint (``("llm",)`` inside ``BaichuanAudio``; ``()`` for the vocoder, a model of its own).
    * ``model_class``: the ``nnx.Module``, built as ``model_class(section, rngs=rngs)``.
    * ``config_section``: the model takes that section of the ``ModelConfig`` (the vocoder takes
      ``cfg.vocoder``) instead of the whole config.
    """

    name: str
    checkpoint: str
    model_path: tuple
    model_class: type
    config_section: str | None = None

    def __post_init__(self):
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"model part {self.name}: checkpoint must be one of {CHECKPOINTS}")

    def section(self, cfg: ModelConfig) -> Any:
        """What the model takes: ``cfg`` or its ``config_section``."""
        return cfg if self.config_section is None else getattr(cfg, self.config_section)

    def build(self, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
        return self.model_class(self.section(cfg), rngs=rngs)


PARTS: dict[str, ModelPart] = {p.name: p for p in (
    ModelPart("llm", "model", ("llm",), AudioLLM),
    ModelPart("audio_tokenizer", "model", ("audio_tokenizer",), AudioTokenizer),
    ModelPart("flow_matching", "model", ("flow_matching",), FlowMatchingDecoder),
    ModelPart("vocoder", "vocoder", (), HiFTGenerator, config_section="vocoder"),
)}


def parts_of(checkpoint: str, names: Iterable[str] | None = None) -> list[ModelPart]:
    """Parts of one reference checkpoint (``names`` selects some of them), in registry order."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint kind {checkpoint!r}; expected one of {CHECKPOINTS}")
    available = [p for p in PARTS.values() if p.checkpoint == checkpoint]
    if names is None:
        return available
    names = list(names)
    bad = [n for n in names if n not in {p.name for p in available}]
    if bad:
        raise KeyError(f"unknown component(s) {bad} for the {checkpoint} checkpoint; "
                       f"known: {[p.name for p in available]}")
    return [p for p in available if p.name in names]
