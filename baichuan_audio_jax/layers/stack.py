"""Stacked layers: created once with a leading ``layers`` axis, run scanned or unrolled.

Parameters of repeated layers always live stacked (one array per parameter with a leading
``layers`` axis), whatever the execution mode, so checkpoints and weight mappings do not depend
on ``scan_layers``. :func:`run_stack` either ``lax.scan``s one compiled layer body over the
stack (fast compiles, what pods use) or unrolls a Python loop over the slices (same numbers;
useful for debugging and per-layer inspection).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from baichuan_audio_jax.layers.remat import remat


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """Builds ``num_layers`` independent layers as one module whose parameters have a leading axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(r: nnx.Rngs) -> nnx.Module:
        return make_layer(r)

    return create(rngs)


def run_stack(layers: nnx.Module, carry: Any, body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
              xs: Any = None, *, scan: bool = True, remat_policy: str = "none") -> tuple[Any, Any]:
    """Runs ``carry, y = body(layer, carry, x)`` over the stack; returns (carry, stacked ys).

    ``xs`` are per-layer inputs with a leading layer axis (e.g. a stacked KV cache) or None.
    """
    graphdef, state = nnx.split(layers)

    def step(c, inp):
        layer_state, x = inp
        return body(nnx.merge(graphdef, layer_state), c, x)

    step = remat(step, remat_policy)
    if scan:
        return jax.lax.scan(step, carry, (state, xs))
    num = jax.tree.leaves(state)[0].shape[0]
    ys = []
    for i in range(num):
        sl = jax.tree.map(lambda a: a[i], (state, xs))
        carry, y = step(carry, sl)
        ys.append(y)
    if all(y is None for y in ys):
        return carry, None
    return carry, jax.tree.map(lambda *a: jax.numpy.stack(a), *ys)
