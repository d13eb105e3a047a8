"""Building a model and filling it from reference tensors through the mapping tables."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.components import COMPONENTS
from baichuan_audio_jax.conversion.mapping import Concrete, MappingError, flat_state, load_tensors


def uncovered_paths(state: Any, concrete: Sequence[Concrete]) -> list[str]:
    covered = {s.path for c in concrete for s in c.slots}
    return ["/".join(map(str, p)) for p in flat_state(state) if p not in covered]


class KeyView:
    """The keys ``keys`` of a tensor source (a mapping or a ``ReferenceCheckpoint``), read on demand."""

    def __init__(self, source: Any, keys: Iterable[str]):
        self._source = source
        self._keys = list(keys)

    def keys(self) -> list[str]:
        return list(self._keys)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._source[name]


def load_model(make: Callable[[], nnx.Module], concrete: Sequence[Concrete], tensors: Any,
               *, allow_uncovered: bool = False, unknown_ok: Callable[[str], bool] | None = None,
               seed: int = 0) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    """Builds ``make()`` and loads ``tensors`` (reference name -> array: a mapping, a
    ``ReferenceCheckpoint`` or a :class:`KeyView`; read one at a time) into it.

    Every tensor named by ``concrete`` must be present (missing keys are listed by name) and every
    tensor given must be named by ``concrete`` unless ``unknown_ok(name)``. The model is built
    abstractly (no initialisers run). With ``allow_uncovered``, parameters the tables do not cover
    are set to zeros (for a source that holds only part of a model, e.g. one fixture file);
    otherwise every parameter must be covered.
    Returns the model and the recognised-but-unused tensors.
    """
    expected = {c.torch for c in concrete}
    unknown = sorted(k for k in tensors.keys() if k not in expected and not (unknown_ok and unknown_ok(k)))
    if unknown:
        raise MappingError(f"{len(unknown)} tensor(s) not in any mapping table, e.g. {unknown[:8]}")
    graphdef, state = nnx.split(nnx.eval_shape(make))
    left = uncovered_paths(state, concrete)
    if left and not allow_uncovered:
        raise MappingError(f"{len(left)} model parameter(s) not covered by the mapping tables, e.g. {left[:8]}")
    state, unused = load_tensors(state, concrete, tensors.__getitem__, available=tensors.keys())
    state = jax.tree.map(
        lambda a: jax.numpy.zeros(a.shape, a.dtype) if isinstance(a, jax.ShapeDtypeStruct) else jax.numpy.asarray(a),
        state)
    return nnx.merge(graphdef, state), unused


def load_component(name: str, cfg: ModelConfig, source: Any, *, allow_uncovered: bool = False
                   ) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    """A registered component's own module (e.g. an ``AudioTokenizer``, a ``HiFTGenerator``) from
    reference-named tensors: a mapping or a ``ReferenceCheckpoint`` holding any number of other
    components' keys too (they are ignored; the component's keys are read one at a time). Its
    naming variant (the vocoder's weight norm) is detected from its keys; every one of its keys
    must be present with the shape ``cfg`` implies (errors name the keys)."""

    comp = COMPONENTS[name]
    keys = [k for k in source.keys() if comp.owns(k)]
    concrete = comp.concrete(cfg, comp.detect_layout(keys), root=())
    return load_model(lambda: comp.build(cfg, nnx.Rngs(0)), concrete, KeyView(source, keys),
                      allow_uncovered=allow_uncovered)
