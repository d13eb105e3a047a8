"""Orbax checkpoints written and read one parameter (or one layer slice) at a time.

Writing: a pytree may hold :class:`StreamedArray` leaves, placeholders with a shape and dtype
whose data are produced *while* Orbax writes the checkpoint. The registered handler opens one
TensorStore array per streamed leaf (stacked parameters are laid out in one storage shard per
layer) and hands a :class:`StreamTarget` to a producer coroutine, which writes whole arrays or
single layer slices in any order as it reads its source. At most ``max_inflight_bytes`` of
written-but-uncommitted data are kept, so memory stays at about one source tensor. The result
is an ordinary Orbax ``PyTreeCheckpointHandler`` checkpoint (OCDBT, as Orbax writes it by
default; uncompressed): ``ocp.StandardCheckpointer().restore`` or ``PyTreeRestore`` read it,
with any target dtype and sharding.

Reading: :class:`OrbaxParams` opens such a checkpoint (or any Orbax pytree checkpoint) and reads
one leaf, or one index of its leading axis, without restoring the rest.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
from typing import Any, Awaitable, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from orbax.checkpoint import type_handlers as th

Key = tuple  # a pytree path, e.g. ('llm', 'layers', 'attn', 'q_proj', 'kernel')
DEFAULT_MAX_INFLIGHT_BYTES = 256 * 2**20


class StreamError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class StreamedArray:
    """A checkpoint leaf written by a producer. ``stacked``: how many leading axes are layer axes
    written one slot at a time (0: the leaf is written whole; 1: a ``layers`` axis; 2: nested
    stacks such as the U-Net's mid blocks and their transformer blocks), one storage shard per
    slot."""

    key: Key
    shape: tuple
    dtype: np.dtype
    stacked: int = 0

    @property
    def write_shape(self) -> tuple:
        k = int(self.stacked)
        return (1,) * k + tuple(self.shape[k:])

    @property
    def blocks(self) -> list[tuple]:
        """Every slot (an index tuple over the stacked axes; ``[()]`` for a whole leaf)."""
        return list(itertools.product(*(range(n) for n in self.shape[:int(self.stacked)])))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class StreamTarget:
    """What a producer writes into: ``await target.write(key, array, index=None)``."""

    def __init__(self, stores: Mapping[Key, Any], leaves: Mapping[Key, StreamedArray], max_inflight_bytes: int):
        self._stores = stores
        self._leaves = leaves
        self._written = {k: set() for k in leaves}
        self._inflight: collections.deque = collections.deque()
        self._inflight_bytes = 0
        self._max_inflight = max_inflight_bytes

    def leaf(self, key: Key) -> StreamedArray:
        return self._leaves[key]

    async def write(self, key: Key, array: np.ndarray, index: int | tuple | None = None) -> None:
        """Writes the whole leaf (``index=None``) or slot ``index`` (an int for one stacked axis, a
        tuple for nested stacks) of a stacked leaf."""
        leaf = self._leaves.get(key)
        if leaf is None:
            raise StreamError(f"{'/'.join(map(str, key))} is not a streamed leaf of this checkpoint")
        idx = None if index is None else (index,) if isinstance(index, int) else tuple(index)
        k = 0 if idx is None else len(idx)
        expected = tuple(leaf.shape[k:])
        if tuple(array.shape) != expected:
            raise StreamError(f"{'/'.join(map(str, key))}: writing shape {tuple(array.shape)}, expected {expected}")
        if idx is None:
            blocks = leaf.blocks
        else:
            if k != int(leaf.stacked) or not all(0 <= i < n for i, n in zip(idx, leaf.shape)):
                raise StreamError(f"{'/'.join(map(str, key))}: no layer slot {index}")
            blocks = [idx]
        done = self._written[key].intersection(blocks)
        if done:
            raise StreamError(f"{'/'.join(map(str, key))}: slot(s) {sorted(b[0] if len(b) == 1 else b for b in done)}"
                              " written twice")
        array = np.ascontiguousarray(array, dtype=leaf.dtype)
        store = self._stores[key]
        if idx is not None:
            region = tuple(slice(i, i + 1) for i in idx)
            fut = store[region].write(array[(None,) * k], can_reference_source_data_indefinitely=True)
        else:
            fut = store.write(array, can_reference_source_data_indefinitely=True)
        self._written[key].update(blocks)
        self._inflight.append((fut, array.nbytes))
        self._inflight_bytes += array.nbytes
        while self._inflight and self._inflight_bytes > self._max_inflight:
            await self._retire()

    async def _retire(self) -> None:
        fut, n = self._inflight.popleft()
        await fut
        self._inflight_bytes -= n

    async def finish(self) -> None:
        while self._inflight:
            await self._retire()
        for key, leaf in self._leaves.items():
            missing = [b[0] if len(b) == 1 else b for b in sorted(set(leaf.blocks) - self._written[key])]
            if missing:
                what = f"layer slot(s) {missing}" if leaf.stacked else "its data"
                raise StreamError(f"{'/'.join(map(str, key))}: {what} never written")


Producer = Callable[[StreamTarget], Awaitable[None]]


class _StreamHandler(th.NumpyHandler):
    """Writes :class:`StreamedArray` leaves through the producer (stored like numpy arrays)."""

    def __init__(self, produce: Producer, max_inflight_bytes: int):
        super().__init__()
        self._produce = produce
        self._max_inflight = max_inflight_bytes

    async def serialize(self, values, infos, args=None):
        args = args or [th.SaveArgs()] * len(values)
        stores = {}
        for leaf, info, arg in zip(values, infos, args):
            await info.await_path_creation()
            ocdbt = bool(info.is_ocdbt_checkpoint)
            spec = th.get_json_tspec_write(info, ocdbt, tuple(leaf.shape), leaf.write_shape, np.dtype(leaf.dtype),
                                           process_index=jax.process_index() if ocdbt else None, arg=arg)
            stores[leaf.key] = await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context)
        target = StreamTarget(stores, {leaf.key: leaf for leaf in values}, self._max_inflight)
        await self._produce(target)
        await target.finish()
        return []


def save_tree(directory: str | os.PathLike, tree: Any, produce: Producer | None = None, *,
              max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES) -> None:
    """Saves ``tree`` (numpy/jax arrays and :class:`StreamedArray` leaves) as an Orbax pytree
    checkpoint at ``directory``; ``produce`` writes the streamed leaves."""
    streamed = [x for x in jax.tree.leaves(tree) if isinstance(x, StreamedArray)]
    if streamed and produce is None:
        raise ValueError("the tree has streamed leaves but no producer was given")

    async def nothing(target):
        return None

    registry = th.create_type_handler_registry(
        (StreamedArray, _StreamHandler(produce or nothing, max_inflight_bytes)),
        (np.ndarray, th.NumpyHandler()),
        (jax.Array, th.ArrayHandler()),
    )
    handler = ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=registry)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(epath.Path(os.path.abspath(os.fspath(directory))), args=ocp.args.PyTreeSave(tree))


def _flatten_metadata(tree: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flatten_metadata(v, prefix + (str(k),)))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_flatten_metadata(v, prefix + (str(i),)))
    elif tree is not None:
        out[prefix] = tree
    return out


def key_str(key: Key) -> tuple:
    return tuple(str(k) for k in key)


class OrbaxParams:
    """Random access to the leaves of an Orbax pytree checkpoint, one array or slice at a time."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"Orbax checkpoint directory {self.directory} does not exist")
        try:
            meta = ocp.PyTreeCheckpointer().metadata(self.directory).item_metadata
        except Exception as e:  # Orbax raises several types for a missing/corrupt checkpoint
            raise ValueError(f"{self.directory}: not a readable Orbax checkpoint ({type(e).__name__}: {e})") from e
        self._use_zarr3 = bool(getattr(meta, "use_zarr3", False))
        self._meta = _flatten_metadata(meta.tree)
        self._ocdbt = th.is_ocdbt_checkpoint(epath.Path(self.directory))
        self._context = th.get_ts_context(use_ocdbt=self._ocdbt)
        self._stores: dict[tuple, Any] = {}

    def keys(self) -> list[tuple]:
        return list(self._meta)

    def __contains__(self, key: Key) -> bool:
        return key_str(key) in self._meta

    def metadata(self, key: Key):
        k = key_str(key)
        if k not in self._meta:
            raise KeyError(f"{self.directory}: no parameter {'/'.join(k)}")
        return self._meta[k]

    def shape(self, key: Key) -> tuple:
        return tuple(self.metadata(key).shape)

    def dtype(self, key: Key) -> np.dtype:
        return np.dtype(self.metadata(key).dtype)

    def _store(self, key: Key):
        k = key_str(key)
        if k not in self._stores:
            m = self.metadata(key)
            info = th.ParamInfo(name=m.name, parent_dir=epath.Path(self.directory), is_ocdbt_checkpoint=self._ocdbt,
                                use_zarr3=self._use_zarr3, ts_context=self._context)
            spec = th.get_json_tspec_read(info, use_ocdbt=self._ocdbt)
            self._stores[k] = ts.open(spec, open=True, context=self._context).result()
        return self._stores[k]

    def read(self, key: Key, index: int | tuple | None = None) -> np.ndarray:
        """The whole leaf, or ``leaf[index]`` (int or index tuple over stacked axes) read without
        the rest of the stacked axes."""
        store = self._store(key)
        out = (store if index is None else store[index]).read().result()
        return np.asarray(out).astype(self.dtype(key), copy=False)
