"""Stacked layers: created once with a leading ``layers`` axis, run scanned or unrolled.

Parameters of repeated layers always live stacked (one array per parameter with a leading
``layers`` axis), whatever the execution mode, so checkpoints and weight mappings do not depend
on ``scan_layers``. :func:`run_stack` either ``lax.scan``s one compiled layer body over the
stack (fast compiles, what pods use) or unrolls a Python loop over the slices (same numbers;
useful for debugging and per-layer inspection).

:func:`unstack` turns a stack into a list of layers with their own arrays, which
:func:`run_stack` runs unrolled. Decoding uses it on CPU: a step there reads every weight once,
and XLA's CPU backend copies a layer's slice out of a stacked array before each matmul (scanned
or unrolled alike), which multiplies the bytes a step moves; separate arrays are read in place.
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
    ``layers`` may also be the list :func:`unstack` makes (always run unrolled).
    """
    if isinstance(layers, nnx.List):
        ys = []
        for i, layer in enumerate(layers):
            layer_graphdef, layer_state = nnx.split(layer)

            def one(c, inp, layer_graphdef=layer_graphdef):
                st, x = inp
                return body(nnx.merge(layer_graphdef, st), c, x)

            carry, y = remat(one, remat_policy)(carry, (layer_state, jax.tree.map(lambda a: a[i], xs)))
            ys.append(y)
        return carry, _stack_ys(ys)
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
    return carry, _stack_ys(ys)


def _stack_ys(ys: list) -> Any:
    if all(y is None for y in ys):
        return None
    return jax.tree.map(lambda *a: jax.numpy.stack(a), *ys)


def unstack(layers: nnx.Module) -> nnx.List:
    """The layers of a stack as a list of modules, each with its own (sliced) arrays and its
    logical axis names without the leading ``layers`` axis. A list passes through unchanged."""
    if isinstance(layers, nnx.List):
        return layers
    graphdef, state = nnx.split(layers)
    num = jax.tree.leaves(state)[0].shape[0]

    def layer_state(i):
        def one(var):
            meta = {}
            names = var.get_metadata().get("out_sharding")
            if names:
                meta["out_sharding"] = tuple(names)[1:]
            return var.replace(var.get_value()[i], **meta)

        return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))

    return nnx.List([nnx.merge(graphdef, layer_state(i)) for i in range(num)])
