"""Modules as pure functions of their state, for ``jax.jit`` boundaries.

``fn, state = pure(model, "method")`` gives ``fn(state, *args, **kwargs)`` that merges the
module's graph definition with ``state`` inside the traced function and calls the method. The
state is a plain pytree that can be sharded, donated and checkpointed; the module object never
crosses the jit boundary.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx


def pure(module: nnx.Module, method: str = "__call__") -> tuple[Callable[..., Any], Any]:
    graphdef, state = nnx.split(module)

    def fn(state, *args, **kwargs):
        return getattr(nnx.merge(graphdef, state), method)(*args, **kwargs)

    fn.__name__ = f"{type(module).__name__}.{method}"
    return fn, state


def init_model(make: Callable[[], nnx.Module], out_shardings: Any = None) -> nnx.Module:
    """Builds ``make()`` with its initialisers compiled as one XLA program (eager NNX
    initialisation dispatches one small program per parameter and is slow). ``out_shardings``
    (a pytree of shardings matching the state) places every parameter where it belongs as it
    is created, so a large model never exists unsharded."""

    graphdef, _ = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.split(make())[1], out_shardings=out_shardings)()
    return nnx.merge(graphdef, state)
