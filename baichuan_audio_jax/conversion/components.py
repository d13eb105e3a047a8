"""The component registry: which parts of the reference checkpoints this version converts.

A *component* is one model module with its mapping tables: the reference key prefixes it owns,
where its parameters live inside the composed model
(:class:`~baichuan_audio_jax.models.baichuan_audio.BaichuanAudio`) and which reference file it
comes from (``"model"``: the Hugging Face directory of ``OmniForCausalLM``; ``"vocoder"``: the
separate ``hift.pt``). Conversion, coverage checks and the model composition are all derived
from :data:`COMPONENTS`, so supporting a new component is one entry here.

Reference keys of parts this version cannot build yet are listed in :data:`NOT_YET_SUPPORTED`:
they are recognised (reported as "component not yet supported", never as unknown and never
counted as mapped) until their component is registered.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.mapping import Concrete, MappingTable, combine_tables
from baichuan_audio_jax.conversion.tables import audio_embed_table, audio_head_table, llm_table
from baichuan_audio_jax.models.audio_llm import AudioLLM

CHECKPOINTS = ("model", "vocoder")


@dataclasses.dataclass(frozen=True)
class TableRef:
    """A mapping-table function and the NNX path of its root below the component's ``model_path``."""

    fn: Callable[[ModelConfig, tuple], MappingTable]
    sub_path: tuple = ()


@dataclasses.dataclass(frozen=True)
class Component:
    """One convertible model part.

    * ``name``: the component's name (``--components``, ``bundle.json``).
    * ``checkpoint``: the reference file it lives in, ``"model"`` or ``"vocoder"``.
    * ``reference_prefixes``: the reference key prefixes it owns (every key of its tables starts
      with one of them; a key with such a prefix that no table names is *unknown*).
    * ``model_path``: the attribute path of the module inside the composed model of its
      checkpoint (``("llm",)`` inside ``BaichuanAudio``; ``()`` for the vocoder, which is a model
      of its own).
    * ``tables``: its mapping tables.
    * ``model_class``: the ``nnx.Module`` built as ``model_class(cfg, rngs=rngs)``.
    """

    name: str
    checkpoint: str
    reference_prefixes: tuple
    model_path: tuple
    tables: tuple
    model_class: type

    def __post_init__(self):
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"component {self.name}: checkpoint must be one of {CHECKPOINTS}")

    def mapping_tables(self, cfg: ModelConfig) -> list[MappingTable]:
        return [t.fn(cfg, tuple(self.model_path) + tuple(t.sub_path)) for t in self.tables]

    def concrete(self, cfg: ModelConfig) -> list[Concrete]:
        """Every reference tensor of the component, in table order."""
        return combine_tables(*self.mapping_tables(cfg))

    def owns(self, key: str) -> bool:
        return key.startswith(tuple(self.reference_prefixes))

    def build(self, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
        return self.model_class(cfg, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class PendingComponent:
    """Reference keys of a part that a later version converts (recognised, never mapped)."""

    name: str
    checkpoint: str
    reference_prefixes: tuple

    def owns(self, key: str) -> bool:
        return key.startswith(tuple(self.reference_prefixes))


COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component(
        name="llm", checkpoint="model",
        reference_prefixes=("model.", "lm_head.", "audio_head."),
        model_path=("llm",),
        tables=(TableRef(llm_table), TableRef(audio_embed_table), TableRef(audio_head_table)),
        model_class=AudioLLM),
)}

NOT_YET_SUPPORTED: dict[str, PendingComponent] = {c.name: c for c in (
    PendingComponent("audio_tokenizer", "model", (
        "audio_tokenizer.audio_model.", "audio_tokenizer.audio_bridge_model.", "audio_tokenizer.audio_decoder.")),
    PendingComponent("flow_matching", "model", ("audio_tokenizer.audio_flow_matching_decoder.",)),
    PendingComponent("vocoder", "vocoder", ("",)),
) if c.name not in COMPONENTS}


class UnsupportedComponentError(ValueError):
    pass


def components_of(checkpoint: str, names: Iterable[str] | None = None) -> list[Component]:
    """Registered components of one reference checkpoint (``names`` selects some of them)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint kind {checkpoint!r}; expected one of {CHECKPOINTS}")
    available = [c for c in COMPONENTS.values() if c.checkpoint == checkpoint]
    if names is None:
        return available
    out = []
    for n in names:
        if n in COMPONENTS and COMPONENTS[n].checkpoint == checkpoint:
            out.append(COMPONENTS[n])
        elif n in NOT_YET_SUPPORTED:
            raise UnsupportedComponentError(f"component {n!r} is not yet supported by this version")
        else:
            raise KeyError(f"unknown component {n!r} for the {checkpoint} checkpoint; "
                           f"known: {sorted(c.name for c in available)}")
    return out


def require_checkpoint_support(checkpoint: str) -> list[Component]:
    """The components of ``checkpoint``; a clear error when this version converts none of them."""
    comps = components_of(checkpoint)
    if not comps:
        pending = [p.name for p in NOT_YET_SUPPORTED.values() if p.checkpoint == checkpoint]
        raise UnsupportedComponentError(
            f"the {checkpoint} checkpoint ({', '.join(pending) or checkpoint}) is not yet supported by this version")
    return comps


def owner(key: str, checkpoint: str) -> Component | PendingComponent | None:
    """The component (registered or pending) that owns a reference key, or None (unknown key)."""
    for c in list(COMPONENTS.values()) + list(NOT_YET_SUPPORTED.values()):
        if c.checkpoint == checkpoint and c.owns(key):
            return c
    return None


def partition_keys(keys: Iterable[str], checkpoint: str
                   ) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """Splits reference keys into (registered component -> keys, pending component -> keys, unknown)."""
    supported: dict[str, list[str]] = {}
    pending: dict[str, list[str]] = {}
    unknown: list[str] = []
    for k in keys:
        c = owner(k, checkpoint)
        if c is None:
            unknown.append(k)
        elif isinstance(c, Component):
            supported.setdefault(c.name, []).append(k)
        else:
            pending.setdefault(c.name, []).append(k)
    return supported, pending, unknown

