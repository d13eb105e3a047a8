"""The component registry: the parts of the reference checkpoints and how each converts.

A *component* is one model module with its mapping tables: the reference key prefixes it owns,
where its parameters live inside the composed model
(:class:`~baichuan_audio_jax.models.baichuan_audio.BaichuanAudio`) and which reference file it
comes from (``"model"``: the Hugging Face directory of ``OmniForCausalLM``; ``"vocoder"``: the
separate ``hift.pt``). Conversion, coverage checks, bundles and the model composition are all
derived from :data:`COMPONENTS`, so supporting a new component is one entry here.

A component may declare

* ``config_section``: its model and tables take that section of the
  :class:`~baichuan_audio_jax.config.ModelConfig` (the vocoder takes ``cfg.vocoder``) instead of
  the whole config;
* ``layout``: a naming variant of its reference keys, detected from them and passed to its table
  functions as keyword arguments (the vocoder's weight-norm naming, ``weight_g``/``weight_v`` or
  ``parametrizations.weight.original0/1``); conversions record it so export writes the names the
  checkpoint came with. ``default_layout`` applies when there are no keys to detect it from.

Reference files may wrap a checkpoint's keys in a wrapper module's prefix
(:data:`WRAPPER_PREFIXES`); readers strip it (:func:`open_reference`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.mapping import Concrete, MappingTable, combine_tables
from baichuan_audio_jax.conversion.tables import (
    audio_decoder_table,
    audio_embed_table,
    audio_encoder_table,
    audio_head_table,
    flow_matching_table,
    llm_table,
    vocoder_table,
    vq_bridge_table,
)
from baichuan_audio_jax.conversion.tables.audio_tokenizer import REFERENCE_PREFIX as TOKENIZER_PREFIX
from baichuan_audio_jax.conversion.tables.flow_matching import PREFIX as FLOW_MATCHING_PREFIX
from baichuan_audio_jax.conversion.tables.vocoder import vocoder_widths, weight_norm_naming
from baichuan_audio_jax.conversion.torch_io import ReferenceCheckpoint
from baichuan_audio_jax.models.registry import PARTS, ModelPart, parts_of

# Prefixes of wrapper modules a reference file may carry on every key (the reference's
# ``Cosy24kVocoder`` holds the HiFT generator as ``hifigan_generator``).
WRAPPER_PREFIXES = {"model": (), "vocoder": ("hifigan_generator.",)}


@dataclasses.dataclass(frozen=True)
class TableRef:
    """A mapping-table function and the NNX path of its root below the component's ``model_path``.

    ``fn(config, prefix, **layout)``; ``config`` is the whole ModelConfig or the component's
    ``config_section`` of it."""

    fn: Callable[..., MappingTable]
    sub_path: tuple = ()


class LayoutError(ValueError):
    """The keys of a component do not follow one consistent naming variant."""


@dataclasses.dataclass(frozen=True)
class Component:
    """One convertible model part: a :class:`~baichuan_audio_jax.models.registry.ModelPart` and
    its mapping tables.

    * ``part``: the model part (name, reference file, place in the composed model, class).
    * ``reference_prefixes``: the reference key prefixes it owns (every key of its tables starts
      with one of them; a key with such a prefix that no table names is *unknown*).
    * ``tables``: its mapping tables.
    * ``layout``, ``default_layout``, ``config_hint``: see the module docstring.
    """

    part: ModelPart
    reference_prefixes: tuple
    tables: tuple
    layout: Callable[[Sequence[str]], dict] | None = None
    default_layout: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    config_hint: Callable[[Mapping[str, tuple], Any], list[str]] | None = None

    name = property(lambda self: self.part.name)
    checkpoint = property(lambda self: self.part.checkpoint)
    model_path = property(lambda self: self.part.model_path)
    model_class = property(lambda self: self.part.model_class)
    config_section = property(lambda self: self.part.config_section)

    def section(self, cfg: ModelConfig) -> Any:
        """What the model and the tables take: ``cfg`` or its ``config_section``."""
        return self.part.section(cfg)

    def detect_layout(self, keys: Iterable[str]) -> dict:
        """The naming variant of the component's keys among ``keys`` (``default_layout`` if none)."""
        mine = [k for k in keys if self.owns(k)]
        if self.layout is None or not mine:
            return dict(self.default_layout)
        try:
            return dict(self.layout(mine))
        except ValueError as e:
            raise LayoutError(f"{self.name}: {e}") from e

    def mapping_tables(self, cfg: ModelConfig, layout: Mapping[str, Any] | None = None,
                       root: tuple | None = None) -> list[MappingTable]:
        """The tables with NNX paths under ``root`` (default: ``model_path``, i.e. inside the
        composed model; ``()`` when the component's module is the model being loaded)."""
        root = tuple(self.model_path if root is None else root)
        kw = dict(self.default_layout if layout is None else layout)
        return [t.fn(self.section(cfg), root + tuple(t.sub_path), **kw) for t in self.tables]

    def concrete(self, cfg: ModelConfig, layout: Mapping[str, Any] | None = None,
                 root: tuple | None = None) -> list[Concrete]:
        """Every reference tensor of the component, in table order."""
        return combine_tables(*self.mapping_tables(cfg, layout, root))

    def owns(self, key: str) -> bool:
        return key.startswith(tuple(self.reference_prefixes))

    def build(self, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
        return self.part.build(cfg, rngs)


def _vocoder_layout(keys: Sequence[str]) -> dict:
    return {"weight_norm": weight_norm_naming(keys)}


def _vocoder_hint(shapes: Mapping[str, tuple], section: Any) -> list[str]:
    return [f"--config.model.vocoder.{k}={v}" for k, v in vocoder_widths(shapes).items() if getattr(section, k) != v]


COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component(
        PARTS["llm"],
        reference_prefixes=("model.", "lm_head.", "audio_head."),
        tables=(TableRef(llm_table), TableRef(audio_embed_table), TableRef(audio_head_table))),
    Component(
        PARTS["audio_tokenizer"],
        reference_prefixes=tuple(TOKENIZER_PREFIX + p for p in ("audio_model.", "audio_bridge_model.",
                                                                "audio_decoder.")),
        tables=(TableRef(audio_encoder_table), TableRef(vq_bridge_table), TableRef(audio_decoder_table))),
    Component(
        PARTS["flow_matching"],
        reference_prefixes=(FLOW_MATCHING_PREFIX,),
        tables=(TableRef(flow_matching_table),)),
    Component(
        PARTS["vocoder"],
        reference_prefixes=("",),
        tables=(TableRef(vocoder_table),),
        layout=_vocoder_layout,
        default_layout={"weight_norm": "weight_g"},  # the released hift.pt
        config_hint=_vocoder_hint),
)}


def components_of(checkpoint: str, names: Iterable[str] | None = None) -> list[Component]:
    """Components of one reference checkpoint (``names`` selects some of them), in registry order."""
    return [COMPONENTS[p.name] for p in parts_of(checkpoint, names)]


def checkpoint_of(name: str) -> str:
    if name not in COMPONENTS:
        raise KeyError(f"unknown component {name!r}; known: {list(COMPONENTS)}")
    return COMPONENTS[name].checkpoint


def owner(key: str, checkpoint: str) -> Component | None:
    """The component that owns a reference key, or None (unknown key)."""
    for c in components_of(checkpoint):
        if c.owns(key):
            return c
    return None


def partition_keys(keys: Iterable[str], checkpoint: str, selected: Iterable[str] | None = None
                   ) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """Splits reference keys into (selected component -> keys, other component -> keys, unknown)."""
    selected = None if selected is None else set(selected)
    chosen: dict[str, list[str]] = {}
    others: dict[str, list[str]] = {}
    unknown: list[str] = []
    for k in keys:
        c = owner(k, checkpoint)
        if c is None:
            unknown.append(k)
        elif selected is None or c.name in selected:
            chosen.setdefault(c.name, []).append(k)
        else:
            others.setdefault(c.name, []).append(k)
    return chosen, others, unknown


def open_reference(paths: str | os.PathLike | Sequence[str | os.PathLike], checkpoint: str = "model", *,
                   components: Sequence[str] | None = None):
    """A :class:`~baichuan_audio_jax.conversion.torch_io.ReferenceCheckpoint` of one kind: the
    kind's wrapper prefixes stripped; with ``components``, only their keys visible (and read)."""
    prefixes = None
    if components is not None:
        comps = components_of(checkpoint, components)
        prefixes = tuple(p for c in comps for p in c.reference_prefixes)
    return ReferenceCheckpoint(paths, prefixes=prefixes, wrapper_prefixes=WRAPPER_PREFIXES[checkpoint])
