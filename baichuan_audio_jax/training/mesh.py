"""The device mesh of a run and every sharding derived from the logical-axis rules.

The rules table lives in :mod:`baichuan_audio_jax.sharding`; this module only applies it:

* parameters and model state: each variable's logical axis names (``out_sharding`` metadata);
* optimizer state: every parameter-shaped leaf (Adam moments) takes its parameter's sharding,
  every other leaf (step counters) is replicated;
* batches: ``[B, S, ...]`` fields are laid out as (``activation_batch``, ``activation_length``).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from baichuan_audio_jax.sharding import logical_to_mesh_spec, make_mesh, state_shardings

BATCH_AXES = ("activation_batch", "activation_length")


def mesh_from_config(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
    """``data`` × ``fsdp`` × ``tensor`` from ``config.mesh`` (one size may be -1)."""
    return make_mesh(int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def variable_shardings(state: nnx.State, mesh: Mesh) -> dict:
    """:func:`~baichuan_audio_jax.sharding.state_shardings` as a nested dict (the state's pure-dict
    structure), the form the train state keeps."""
    return nnx.to_pure_dict(nnx.State(state_shardings(state, mesh)))


def optimizer_shardings(abstract_opt_state: Any, abstract_params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings of an optimizer state: a leaf whose key path ends with a parameter's path and
    has that parameter's shape (Adam moments, accumulators) is laid out like the parameter;
    every other leaf (step counters) is replicated. Works through any optax wrapper, including
    the ``MaskedNode`` gaps ``multi_transform`` leaves for frozen parameters."""
    by_path = {}
    for (path, a), (_, sh) in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                  jax.tree_util.tree_flatten_with_path(param_shardings)[0]):
        by_path[tuple(path)] = (tuple(a.shape), sh)

    def one(path, leaf):
        path = tuple(path)
        for i in range(len(path)):
            hit = by_path.get(path[i:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Rows over (data, fsdp), positions and trailing axes replicated."""
    names = BATCH_AXES[: len(shape)] + (None,) * max(0, len(shape) - len(BATCH_AXES))
    return NamedSharding(mesh, logical_to_mesh_spec(names, shape, mesh))


def batch_shardings(mesh: Mesh, fields: dict, rows: int, seq_len: int) -> dict:
    """One sharding per batch field (``fields``: name -> (dtype, trailing shape))."""
    return {k: batch_sharding(mesh, (rows, seq_len, *suffix)) for k, (_, suffix) in fields.items()}


def describe(mesh: Mesh) -> str:
    return " × ".join(f"{name}={size}" for name, size in mesh.shape.items()) + f" ({mesh.size} devices)"
