"""1-D convolutions over channels-last input ``[B, T, C]``.

Kernels are stored ``[k, in, out]`` for both the plain and the transposed convolution (the
weight mappings turn PyTorch's ``[out, in, k]`` and ``[in, out, k]`` into this). Padding follows
PyTorch: ``padding`` is applied on both sides, or given as ``(left, right)``.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.layers.params import fan_in_normal, param, zeros

_DIMS = ("NWC", "WIO", "NWC")


def _pad_pair(padding: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(padding, int):
        return (padding, padding)
    left, right = padding
    return (int(left), int(right))


def conv1d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int | Sequence[int] = 0,
           dilation: int = 1, groups: int = 1) -> jax.Array:
    """PyTorch Conv1d semantics on [B, T, C] with a [k, in/groups, out] kernel."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride,), padding=(_pad_pair(padding),), rhs_dilation=(dilation,),
        dimension_numbers=_DIMS, feature_group_count=groups)


def conv_transpose1d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> jax.Array:
    """PyTorch ConvTranspose1d semantics on [B, T, C] with a [k, in, out] kernel.

    Output length (T − 1)·stride − 2·padding + dilation·(k − 1) + 1.
    """
    k = kernel.shape[0]
    edge = dilation * (k - 1) - padding
    if edge < 0:
        raise ValueError(f"padding {padding} larger than the transposed kernel's reach")
    return jax.lax.conv_general_dilated(
        x, jnp.flip(kernel, axis=0), window_strides=(1,), padding=((edge, edge),), lhs_dilation=(stride,),
        rhs_dilation=(dilation,), dimension_numbers=_DIMS)


class Conv1d(nnx.Module):
    """PyTorch ``nn.Conv1d`` on channels-last input, kernel ``[k, in, out]``."""

    op = staticmethod(conv1d)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int | Sequence[int] = 0, dilation: int = 1, use_bias: bool = True,
                 axes: Sequence[str | None] = ("conv_kernel", "conv_in", "conv_out"),
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.dtype = dtype
        self.kernel = param(rngs, fan_in_normal(in_axis=(0, 1)), (kernel_size, in_channels, out_channels),
                            tuple(axes), param_dtype)
        self.bias = param(rngs, zeros, (out_channels,), (axes[-1],), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.op(x.astype(self.dtype), self.kernel[...].astype(self.dtype), stride=self.stride,
                    padding=self.padding, dilation=self.dilation)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class ConvTranspose1d(Conv1d):
    """PyTorch ``nn.ConvTranspose1d`` on channels-last input, kernel ``[k, in, out]`` (the mapping
    tables turn PyTorch's ``[in, out, k]`` into this); ``padding`` is a single int as in PyTorch."""

    op = staticmethod(conv_transpose1d)
