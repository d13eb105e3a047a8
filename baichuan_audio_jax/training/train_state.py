"""The training state: one pytree that is sharded, donated and checkpointed as a whole."""
from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    """``step``: optimizer steps taken (int32 scalar). ``params``: the model's ``nnx.Param``
    values as a nested dict. ``model_state``: every other model variable (buffers, EMA
    statistics a task updates outside the gradient). ``opt_state``: the optax state (none for
    frozen leaves). ``rng``: the run's base key as raw ``uint32[2]`` data (per-step keys are
    ``fold_in(rng, step)``, so resuming reproduces them)."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
