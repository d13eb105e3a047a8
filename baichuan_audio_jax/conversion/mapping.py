"""Declarative weight mapping between the reference PyTorch state_dict and NNX states.

A component's mapping is a :class:`MappingTable`: a list of entries, each naming one reference
tensor (a template such as ``model.layers.{i}.self_attn.W_pack.weight``), the NNX parameter
path(s) it becomes (``layers/attn/q_proj/kernel@{i}``: ``@{i}`` = slot i of a stacked
``layers`` axis; ``@{m},{b}`` = slot (m, b) of two nested stacked axes) and a
:class:`Transform` that converts in both directions. The target shapes come from the model
itself (its abstract state), so transforms need no config and the same table serves every model
size. ``Unused`` entries name reference tensors the JAX model does not need
(e.g. the audio head's ignored FFN biases): they are recognised, shape-checked and carried
through conversions, never silently dropped.

Everything else is derived from the tables: loading (:func:`load_tensors`), exporting
(:func:`export_tensors`), expected reference shapes for a config (:func:`expected_torch_shapes`)
and key-coverage checks (:func:`check_coverage`). Checkpoint I/O builds on these.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from flax import nnx

Path = tuple  # an NNX state path, e.g. ('layers', 'attn', 'q_proj', 'kernel')


# ----------------------------------------------------------------------------- transforms

def contiguous(a: np.ndarray, slab_bytes: int = 1 << 20) -> np.ndarray:
    """``np.ascontiguousarray(a)`` for transposed views, several times faster on large arrays.

    numpy copies a permuted view element by element in the destination's order, striding
    through the whole source for every output row. Copying one contiguous slab of the source at
    a time (along the view's axis of largest stride) keeps reads sequential. The result is the
    same array, bit for bit.
    """
    if a.flags.c_contiguous or a.ndim < 2 or a.nbytes < (16 << 20):
        return np.ascontiguousarray(a)
    k = int(np.argmax(np.abs(a.strides)))
    step = max(1, slab_bytes // max(a.nbytes // a.shape[k], 1))
    out = np.empty(a.shape, a.dtype)
    for i in range(0, a.shape[k], step):
        sl = (slice(None),) * k + (slice(i, i + step),)
        out[sl] = a[sl]
    return out


class Transform:
    """Converts one reference tensor to ``n`` JAX arrays and back.

    ``jax_shapes`` are the shapes of the JAX slots (one layer's slice for stacked parameters).
    """

    n_out = 1

    def to_jax(self, t: np.ndarray, jax_shapes: Sequence[tuple]) -> list[np.ndarray]:
        raise NotImplementedError

    def to_torch(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def torch_shape(self, jax_shapes: Sequence[tuple]) -> tuple:
        raise NotImplementedError


class Same(Transform):
    """Identical layout (embeddings, norm scales); a plain reshape if the ranks differ."""

    def to_jax(self, t, jax_shapes):
        return [t.reshape(jax_shapes[0])]

    def to_torch(self, arrays):
        return arrays[0]

    def torch_shape(self, jax_shapes):
        return tuple(jax_shapes[0])


class Vector(Transform):
    """A flat reference vector that the JAX model keeps structured (e.g. a bias ``[heads, hd]``)."""

    def to_jax(self, t, jax_shapes):
        return [t.reshape(jax_shapes[0])]

    def to_torch(self, arrays):
        return arrays[0].reshape(-1)

    def torch_shape(self, jax_shapes):
        return (int(np.prod(jax_shapes[0])),)


@dataclasses.dataclass(frozen=True)
class Linear(Transform):
    """nn.Linear ``[out, in]`` <-> kernel ``[*in_dims, *out_dims]`` (first ``n_in`` axes are input)."""

    n_in: int = 1

    def to_jax(self, t, jax_shapes):
        return [contiguous(t.T).reshape(jax_shapes[0])]

    def to_torch(self, arrays):
        a = arrays[0]
        n_in = int(np.prod(a.shape[:self.n_in]))
        return contiguous(a.reshape(n_in, -1).T)

    def torch_shape(self, jax_shapes):
        s = jax_shapes[0]
        return (int(np.prod(s[self.n_in:])), int(np.prod(s[:self.n_in])))


class Conv(Transform):
    """nn.Conv1d ``[out, in, k]`` <-> ``[k, in, out]``."""

    def to_jax(self, t, jax_shapes):
        return [contiguous(t.transpose(2, 1, 0)).reshape(jax_shapes[0])]

    def to_torch(self, arrays):
        return contiguous(arrays[0].transpose(2, 1, 0))

    def torch_shape(self, jax_shapes):
        k, i, o = jax_shapes[0]
        return (o, i, k)


class ConvTranspose(Transform):
    """nn.ConvTranspose1d ``[in, out, k]`` <-> ``[k, in, out]``."""

    def to_jax(self, t, jax_shapes):
        return [contiguous(t.transpose(2, 0, 1)).reshape(jax_shapes[0])]

    def to_torch(self, arrays):
        return contiguous(arrays[0].transpose(1, 2, 0))

    def torch_shape(self, jax_shapes):
        k, i, o = jax_shapes[0]
        return (i, o, k)


@dataclasses.dataclass(frozen=True)
class SplitRows(Transform):
    """One reference tensor whose rows (axis 0) are the concatenation of several JAX parameters,
    each converted by ``inner`` (e.g. W_pack = [q; k; v], in_proj = [q; k; v])."""

    inner: Transform
    parts: int = 3

    @property
    def n_out(self):
        return self.parts

    def to_jax(self, t, jax_shapes):
        rows = [self.inner.torch_shape([s])[0] for s in jax_shapes]
        if sum(rows) != t.shape[0]:
            raise ValueError(f"cannot split {t.shape[0]} rows into {rows}")
        pieces = np.split(t, np.cumsum(rows)[:-1], axis=0)
        return [self.inner.to_jax(p, [s])[0] for p, s in zip(pieces, jax_shapes)]

    def to_torch(self, arrays):
        return np.concatenate([self.inner.to_torch([a]) for a in arrays], axis=0)

    def torch_shape(self, jax_shapes):
        shapes = [self.inner.torch_shape([s]) for s in jax_shapes]
        return (sum(s[0] for s in shapes), *shapes[0][1:])


@dataclasses.dataclass(frozen=True)
class Custom(Transform):
    """A bespoke bijection given by three functions (e.g. the audio head's depth FFN slices)."""

    forward: Callable[[np.ndarray, tuple], np.ndarray]
    backward: Callable[[np.ndarray], np.ndarray]
    shape: Callable[[tuple], tuple]

    def to_jax(self, t, jax_shapes):
        return [contiguous(self.forward(t, tuple(jax_shapes[0])))]

    def to_torch(self, arrays):
        return contiguous(self.backward(arrays[0]))

    def torch_shape(self, jax_shapes):
        return tuple(self.shape(tuple(jax_shapes[0])))


# ----------------------------------------------------------------------------- tables

@dataclasses.dataclass(frozen=True)
class Entry:
    torch: str  # reference name template
    jax: tuple  # one or more NNX path templates ('a/b/c', '@{i}' suffix = stacked slot)
    transform: Transform = Same()

    def __init__(self, torch: str, jax: str | Sequence[str], transform: Transform = Same()):
        object.__setattr__(self, "torch", torch)
        object.__setattr__(self, "jax", (jax,) if isinstance(jax, str) else tuple(jax))
        object.__setattr__(self, "transform", transform)


@dataclasses.dataclass(frozen=True)
class Unused:
    """A reference tensor the JAX model does not use; ``shape(cfg_shapes)`` gives its shape from
    the values of the table's ``dims`` (see :class:`MappingTable`)."""

    torch: str
    shape: Callable[[Mapping[str, int]], tuple]


@dataclasses.dataclass(frozen=True)
class MappingTable:
    """``ranges``: placeholder -> count (e.g. ``{'i': num_layers}``); ``dims``: named sizes used by
    ``Unused`` shapes; ``prefix``: NNX path prefix of the component inside the model state."""

    name: str
    entries: tuple
    ranges: Mapping[str, int]
    dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
    prefix: tuple = ()

    def __add__(self, other: "MappingTable") -> "MappingTable":
        raise TypeError("combine tables with combine_tables(), which keeps each one's ranges")


@dataclasses.dataclass(frozen=True)
class Slot:
    path: Path  # full NNX path
    # Slot along the leading stacked axis (an int), along two nested stacked axes (a tuple (m, b),
    # e.g. the U-Net's mid blocks and their transformer blocks), or None for an unstacked parameter.
    index: int | tuple | None


@dataclasses.dataclass(frozen=True)
class Concrete:
    """One reference tensor with everything needed to convert it."""

    torch: str
    slots: tuple  # of Slot; empty for unused tensors
    transform: Transform | None
    unused_shape: tuple | None = None
    table: str = ""


_FIELD = re.compile(r"\{(\w+)\}")


def _parse_path(template: str, values: Mapping[str, int], prefix: tuple) -> Slot:
    s = template.format(**values)
    index = None
    if "@" in s:
        s, idx = s.split("@")
        slot = tuple(int(i) for i in idx.split(","))
        index = slot[0] if len(slot) == 1 else slot
    parts = tuple(int(p) if p.isdigit() else p for p in s.split("/"))
    return Slot(prefix + parts, index)


def expand(table: MappingTable) -> list[Concrete]:
    """All concrete reference tensors of a table, in table order."""
    out = []
    for e in table.entries:
        names = sorted(set(_FIELD.findall(e.torch)))
        missing = [n for n in names if n not in table.ranges]
        if missing:
            raise KeyError(f"table {table.name}: no range for placeholder(s) {missing} in {e.torch}")
        for combo in itertools.product(*(range(table.ranges[n]) for n in names)):
            values = dict(zip(names, combo))
            key = e.torch.format(**values)
            if isinstance(e, Unused):
                out.append(Concrete(key, (), None, tuple(e.shape(table.dims)), table.name))
            else:
                slots = tuple(_parse_path(j, values, table.prefix) for j in e.jax)
                out.append(Concrete(key, slots, e.transform, None, table.name))
    return out


def combine_tables(*tables: MappingTable) -> list[Concrete]:
    out, seen = [], set()
    for t in tables:
        for c in expand(t):
            if c.torch in seen:
                raise ValueError(f"reference tensor {c.torch} is mapped twice")
            seen.add(c.torch)
            out.append(c)
    return out


# ----------------------------------------------------------------------------- state access

def flat_state(state: Any) -> dict[Path, nnx.Variable]:
    return {tuple(p): v for p, v in nnx.to_flat_state(state)}
def _value(var) -> Any:
    return var.get_value() if hasattr(var, "get_value") else var.value


def stacked_dims(slot: Slot) -> int:
    """How many leading stacked axes a slot indexes (0, 1 or the nesting depth)."""
    return 0 if slot.index is None else 1 if isinstance(slot.index, int) else len(slot.index)


def slot_shape(var_shape: tuple, slot: Slot) -> tuple:
    return tuple(var_shape[stacked_dims(slot):])
def expected_torch_shapes(concrete: Sequence[Concrete], shapes: Mapping[Path, tuple]) -> dict[str, tuple]:
    """Reference name -> expected shape, from the JAX model's parameter shapes."""
    out = {}
    for c in concrete:
        if c.transform is None:
            out[c.torch] = c.unused_shape
            continue
        js = []
        for s in c.slots:
            if s.path not in shapes:
                raise KeyError(f"{c.torch}: model has no parameter {'/'.join(map(str, s.path))}")
            js.append(slot_shape(shapes[s.path], s))
        out[c.torch] = tuple(c.transform.torch_shape(js))
    return out


def state_shapes(state: Any) -> dict[Path, tuple]:
    return {p: tuple(_value(v).shape) for p, v in flat_state(state).items()}


@dataclasses.dataclass
class CoverageReport:
    mapped: list[str]
    missing: list[str]  # expected by the tables, absent from the source
    unknown: list[str]  # in the source, in no table
    mismatched: list[tuple[str, tuple, tuple]]  # (name, expected, found)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unknown or self.mismatched)


def check_coverage(concrete: Sequence[Concrete], shapes: Mapping[Path, tuple],
                   source_shapes: Mapping[str, tuple], ignore_unknown: Callable[[str], bool] | None = None
                   ) -> CoverageReport:
    expected = expected_torch_shapes(concrete, shapes)
    missing = [k for k in expected if k not in source_shapes]
    unknown = [k for k in source_shapes if k not in expected and not (ignore_unknown and ignore_unknown(k))]
    mismatched = [(k, expected[k], tuple(source_shapes[k])) for k in expected
                  if k in source_shapes and tuple(source_shapes[k]) != tuple(expected[k])]
    mapped = [k for k in expected if k in source_shapes and tuple(source_shapes[k]) == tuple(expected[k])]
    return CoverageReport(mapped, missing, unknown, mismatched)


# ----------------------------------------------------------------------------- conversion

class MappingError(ValueError):
    pass


def load_tensors(state: Any, concrete: Sequence[Concrete], get: Callable[[str], np.ndarray],
                 available: Iterable[str] | None = None, dtype: Any = None) -> tuple[Any, dict[str, np.ndarray]]:
    """Fills ``state`` (an NNX state, concrete or abstract) from reference tensors.

    ``get(name)`` returns one tensor as numpy; every mapped name must be ``available``. Returns
    the new state (every variable touched by the tables replaced; others kept) and the unused
    tensors by name. Shapes are checked against the model before anything is converted.
    Stacked parameters are assembled from their per-layer slices.
    """
    flat = flat_state(state)
    shapes = {p: tuple(_value(v).shape) for p, v in flat.items()}
    if available is not None:
        available = set(available)
        missing = [c.torch for c in concrete if c.torch not in available]
        if missing:
            raise MappingError(f"{len(missing)} reference tensor(s) missing, e.g. {missing[:8]}")
    expected = expected_torch_shapes(concrete, shapes)
    new_values: dict[Path, np.ndarray] = {}
    unused: dict[str, np.ndarray] = {}
    for c in concrete:
        t = np.asarray(get(c.torch))
        if tuple(t.shape) != tuple(expected[c.torch]):
            raise MappingError(f"{c.torch}: shape {tuple(t.shape)} in the source, model expects "
                               f"{tuple(expected[c.torch])}")
        if c.transform is None:
            unused[c.torch] = t
            continue
        parts = c.transform.to_jax(t, [slot_shape(shapes[s.path], s) for s in c.slots])
        for s, a in zip(c.slots, parts):
            var_dtype = dtype or _value(flat[s.path]).dtype
            if s.index is None:
                new_values[s.path] = a.astype(var_dtype)
            else:
                buf = new_values.get(s.path)
                if buf is None:
                    buf = np.full(shapes[s.path], np.nan, dtype=var_dtype)
                    new_values[s.path] = buf
                buf[s.index] = a
    for p, a in new_values.items():
        if a.dtype.kind == "f" and np.isnan(a).any() and not np.isnan(a).all():
            gaps = np.isnan(a).reshape(a.shape[0], -1).any(axis=1)
            raise MappingError(f"{'/'.join(map(str, p))}: layer slot(s) {np.where(gaps)[0].tolist()} "
                               "never (fully) written by the mapping table")
    for p, a in new_values.items():
        var = flat[p]
        var.set_value(a) if hasattr(var, "set_value") else setattr(var, "value", a)
    return nnx.from_flat_state(list(flat.items())), unused


def export_tensors(state: Any, concrete: Sequence[Concrete], unused: Mapping[str, np.ndarray] | None = None,
                   ) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (reference name, numpy tensor) for every concrete entry, one at a time.

    Unused tensors come from ``unused`` (as carried by a conversion) or, when absent, zeros of
    the reference shape (the reference ignores their values).
    """
    flat = flat_state(state)
    for c in concrete:
        if c.transform is None:
            if unused is not None and c.torch in unused:
                yield c.torch, np.asarray(unused[c.torch])
            else:
                yield c.torch, np.zeros(c.unused_shape, np.float32)
            continue
        arrays = []
        for s in c.slots:
            v = np.asarray(_value(flat[s.path]))
            arrays.append(v if s.index is None else v[s.index])
        yield c.torch, c.transform.to_torch(arrays)
