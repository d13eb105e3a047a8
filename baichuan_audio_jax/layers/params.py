"""Parameter creation with logical axis names.

Every parameter of the package is made by :func:`param`: it records the logical axis names
(``out_sharding`` metadata, mapped to mesh axes by :mod:`baichuan_audio_jax.sharding`) and
disables NNX eager sharding, so models can be built anywhere (with or without a mesh) and placed
afterwards from their partition specs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: Sequence[str | None],
          dtype=jnp.float32) -> nnx.Param:
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise ValueError(f"{len(axes)} axis names {tuple(axes)} for a parameter of shape {shape}")
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=tuple(axes), eager_sharding=False)


def normal(stddev: float) -> Initializer:
    return jax.nn.initializers.normal(stddev)


def fan_in_normal(in_axis: int | Sequence[int] = -2) -> Initializer:
    """N(0, 1/fan_in): unit-variance activations through a linear map."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=in_axis)


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


def to_dtype(name_or_dtype) -> jnp.dtype:
    return jnp.dtype(name_or_dtype)


class Buffer(nnx.Variable):
    """A non-trainable array that belongs to the model and its checkpoints (e.g. the sinusoid
    position tables, which the reference stores as persistent buffers). Optimizers see only
    :class:`flax.nnx.Param`."""


def buffer(value, axes: Sequence[str | None]) -> Buffer:
    value = jnp.asarray(value)
    if len(axes) != value.ndim:
        raise ValueError(f"{len(axes)} axis names {tuple(axes)} for a buffer of shape {value.shape}")
    return Buffer(value, out_sharding=tuple(axes), eager_sharding=False)
