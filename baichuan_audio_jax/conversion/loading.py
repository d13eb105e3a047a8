"""Building a model and filling it from reference tensors through the mapping tables."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from baichuan_audio_jax.conversion.mapping import Concrete, MappingError, flat_state, load_tensors


def uncovered_paths(state: Any, concrete: Sequence[Concrete]) -> list[str]:
    covered = {s.path for c in concrete for s in c.slots}
    return ["/".join(map(str, p)) for p in flat_state(state) if p not in covered]


def load_model(make: Callable[[], nnx.Module], concrete: Sequence[Concrete], tensors: Mapping[str, np.ndarray],
               *, allow_uncovered: bool = False, unknown_ok: Callable[[str], bool] | None = None,
               seed: int = 0) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    """Builds ``make()`` and loads ``tensors`` (reference name -> array) into it.

    Every tensor named by ``concrete`` must be present (missing keys are listed by name) and every
    tensor given must be named by ``concrete`` unless ``unknown_ok(name)``. The model is built
    abstractly (no initialisers run). With ``allow_uncovered``, parameters the tables do not cover
    are set to zeros (for a source that holds only part of a model, e.g. one fixture file);
    otherwise every parameter must be covered.
    Returns the model and the recognised-but-unused tensors.
    """
    expected = {c.torch for c in concrete}
    unknown = sorted(k for k in tensors if k not in expected and not (unknown_ok and unknown_ok(k)))
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
