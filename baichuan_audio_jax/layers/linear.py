"""Dense layers over named axes."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.params import Initializer, fan_in_normal, param, zeros


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class Dense(nnx.Module):
    """y = x·W + b with W of shape ``(in, *out)``.

    ``in_axis`` and ``out_axes`` are logical axis names. ``out_features`` may be a tuple (e.g.
    ``(heads, head_dim)``) so attention projections keep their head structure in the parameter.
    Computation happens in ``dtype``; the parameter is stored in ``param_dtype``.
    """

    def __init__(self, in_features: int, out_features: int | Sequence[int], *, in_axis: str | None,
                 out_axes: str | None | Sequence[str | None], use_bias: bool = True,
                 dtype=jnp.float32, param_dtype=jnp.float32, kernel_init: Initializer | None = None,
                 rngs: nnx.Rngs):
        out_features = _as_tuple(out_features)
        out_axes = _as_tuple(out_axes)
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        init = kernel_init or fan_in_normal(in_axis=0)
        self.kernel = param(rngs, init, (in_features, *out_features), (in_axis, *out_axes), param_dtype)
        self.bias = param(rngs, zeros, out_features, out_axes, param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...].astype(self.dtype)
        y = jax.lax.dot_general(x.astype(self.dtype), k, (((x.ndim - 1,), (0,)), ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class DenseIn(nnx.Module):
    """Contracts several trailing input axes, e.g. attention output ``(heads, head_dim) -> embed``."""

    def __init__(self, in_features: Sequence[int], out_features: int, *, in_axes: Sequence[str | None],
                 out_axis: str | None, use_bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
                 kernel_init: Initializer | None = None, rngs: nnx.Rngs):
        in_features = tuple(in_features)
        self.dtype = dtype
        n = len(in_features)
        init = kernel_init or fan_in_normal(in_axis=tuple(range(n)))
        self.kernel = param(rngs, init, (*in_features, out_features), (*in_axes, out_axis), param_dtype)
        self.bias = param(rngs, zeros, (out_features,), (out_axis,), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...].astype(self.dtype)
        n = k.ndim - 1
        contract = (tuple(range(x.ndim - n, x.ndim)), tuple(range(n)))
        y = jax.lax.dot_general(x.astype(self.dtype), k, (contract, ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
