"""Weight-normalised 1-D convolutions (the HiFT vocoder's layers).

PyTorch's ``weight_norm`` (dim 0) stores a magnitude ``g`` and a direction ``v`` and uses
``w = v · (g / ‖v‖)`` with the norm over every axis but PyTorch's axis 0: the *output* channel of
a Conv1d ``[out, in, k]`` and the *input* channel of a ConvTranspose1d ``[in, out, k]``.

Here ``v`` is kept in this package's kernel layout ``[k, in, out]`` and ``g`` has the same rank
with size 1 on the normalised axes (``[1, 1, out]`` for a convolution, ``[1, in, 1]`` for a
transposed one), so both map to and from the checkpoint with the kernel's own transposition and
the fold is one broadcast. Keeping ``(g, v)`` as the parameters (instead of folding at load time)
makes conversion exact in both directions and keeps the parametrisation for fine-tuning.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.conv import conv1d, conv_transpose1d
from baichuan_audio_jax.layers.params import fan_in_normal, param, zeros

_AXES = ("conv_kernel", "conv_in", "conv_out")


def fold_weight_norm(v: jax.Array, g: jax.Array) -> jax.Array:
    """``v · (g / ‖v‖)``, the norm taken over the axes where ``g`` has size 1 (no epsilon)."""
    axes = tuple(i for i, n in enumerate(g.shape) if n == 1)
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
    return v * (g / norm)


def _direction_and_magnitude(rngs: nnx.Rngs, shape: tuple, g_shape: tuple, param_dtype):
    v = param(rngs, fan_in_normal(in_axis=(0, 1)), shape, _AXES, param_dtype)
    axes = tuple(i for i, n in enumerate(g_shape) if n == 1)
    norm = jnp.sqrt(jnp.sum(jnp.square(v[...]), axis=axes, keepdims=True))
    # g starts at ‖v‖, so the initial weight is v itself (as PyTorch's weight_norm does).
    g = param(rngs, lambda key, s, d: norm.astype(d).reshape(s), g_shape, _AXES, param_dtype)
    return v, g


class WeightNormConv1d(nnx.Module):
    """Conv1d (PyTorch padding/dilation semantics, channels-last) with weight-norm parameters
    ``v`` ``[k, in, out]``, ``g`` ``[1, 1, out]`` and ``bias``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int | Sequence[int] = 0, dilation: int = 1, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.v, self.g = _direction_and_magnitude(rngs, (kernel_size, in_channels, out_channels),
                                                  (1, 1, out_channels), param_dtype)
        self.bias = param(rngs, zeros, (out_channels,), ("conv_out",), param_dtype)

    def kernel(self) -> jax.Array:
        return fold_weight_norm(self.v[...], self.g[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv1d(x, self.kernel().astype(x.dtype), stride=self.stride, padding=self.padding,
                   dilation=self.dilation)
        return y + self.bias[...].astype(x.dtype)


class WeightNormConvTranspose1d(nnx.Module):
    """ConvTranspose1d with weight-norm parameters ``v`` ``[k, in, out]``, ``g`` ``[1, in, 1]``
    (normalised per *input* channel, as PyTorch's dim-0 weight norm of ``[in, out, k]``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stride, self.padding = stride, padding
        self.v, self.g = _direction_and_magnitude(rngs, (kernel_size, in_channels, out_channels),
                                                  (1, in_channels, 1), param_dtype)
        self.bias = param(rngs, zeros, (out_channels,), ("conv_out",), param_dtype)

    def kernel(self) -> jax.Array:
        return fold_weight_norm(self.v[...], self.g[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv_transpose1d(x, self.kernel().astype(x.dtype), stride=self.stride, padding=self.padding)
        return y + self.bias[...].astype(x.dtype)
