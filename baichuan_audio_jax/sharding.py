"""The logical-axis rules table and everything derived from it.

Parameters and activations are annotated with *logical* axis names (``embed``, ``mlp``,
``heads``, ...). This module alone decides which mesh axis (``data``, ``fsdp``, ``tensor``) each
name is laid out on. Change :data:`LOGICAL_AXIS_RULES` to change the parallelism of every model.

Parameter names:
  ``embed``        model width (LLM hidden, audio d_model)            -> fsdp
  ``mlp``          feed-forward inner width                            -> tensor
  ``heads``        attention query heads                               -> tensor
  ``kv_heads``     attention key/value heads                           -> tensor
  ``head_dim``     per-head width                                      -> replicated
  ``vocab``        text vocabulary (embedding rows, lm_head columns)   -> tensor
  ``audio_vocab``  codebook classes (audio embeddings, head outputs)   -> replicated
  ``codebook_dim`` RVQ code vector width                               -> replicated
  ``depth``        audio-head depth positions (8 codebooks)            -> replicated
  ``layers``       stacked layer axis of scanned layers                -> replicated
  ``positions``    rows of sinusoid position tables                    -> replicated
  ``norm``         norm scales/biases                                  -> replicated
  ``conv_kernel``  convolution taps                                    -> replicated
  ``conv_in``, ``conv_out``  convolution channels                      -> replicated
Activation names:
  ``activation_batch`` -> (data, fsdp); ``activation_heads``/``activation_kv_heads``/
  ``activation_mlp``/``activation_vocab`` -> tensor; ``activation_length``/
  ``activation_embed`` -> replicated.
  ``activation_depth``        the audio head's 8 depth (codebook) positions -> replicated
  ``activation_audio_vocab``  codebook classes of the audio head's logits   -> replicated
  ``activation_codebooks``    the 8 codes of a frame / its 8 code embeddings -> replicated
  ``activation_channels``     conv channels of the tokenizer/flow/vocoder activations -> replicated

Every large activation carries these names (``constrain``), so XLA never lays an activation out
by the fsdp-sharded weight it meets (which would keep every row on every chip and finish each
matmul with an activation-sized all-reduce): rows stay split over (data, fsdp), widths whole.

A mesh axis is dropped for a dimension it does not divide (e.g. 4 KV heads on tensor=8): the
dimension is then replicated on that axis and :func:`logical_to_mesh_spec` says so when asked to
``report``.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("audio_vocab", None),
    ("codebook_dim", None),
    ("depth", None),
    ("layers", None),
    ("positions", None),
    ("norm", None),
    ("conv_kernel", None),
    ("conv_in", None),
    ("conv_out", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("activation_depth", None),
    ("activation_audio_vocab", None),
    ("activation_codebooks", None),
    ("activation_channels", None),
)

_RULES = dict(LOGICAL_AXIS_RULES)


def mesh_axes_for(name: str | None) -> tuple[str, ...]:
    """Mesh axes for one logical name (unknown names are an error: the table must be complete)."""
    if name is None:
        return ()
    if name not in _RULES:
        raise KeyError(f"logical axis {name!r} has no entry in LOGICAL_AXIS_RULES")
    v = _RULES[name]
    if v is None:
        return ()
    return (v,) if isinstance(v, str) else tuple(v)


def logical_to_mesh_spec(names: Sequence[str | None] | P | None, shape: Sequence[int] | None = None,
                         mesh: Mesh | None = None) -> P:
    """Maps logical names to a mesh PartitionSpec.

    With ``shape`` and ``mesh``, mesh axes absent from the mesh, of size 1, already used by an
    earlier dimension, or not dividing the dimension are dropped.
    """
    if names is None:
        return P()
    names = tuple(names)
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        axes = []
        for ax in mesh_axes_for(name):
            if ax in used:
                continue
            if mesh is not None:
                size = mesh.shape.get(ax, 1)
                if size == 1:
                    continue
                if shape is not None:
                    prod = int(np.prod([mesh.shape[a] for a in axes])) * size
                    if shape[i] % prod:
                        continue
            axes.append(ax)
            used.add(ax)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*out)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for an NNX state (or abstract state) from its ``out_sharding`` metadata."""

    def one(var):
        value = var.get_value() if hasattr(var, "get_value") else var.value
        names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
        spec = logical_to_mesh_spec(names, getattr(value, "shape", None), mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_mesh_spec(names, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 (fills the remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                         f"{int(np.prod(sizes))} devices, {len(devices)} available")
    arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
