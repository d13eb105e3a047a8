"""Checkpoint conversion between the reference PyTorch layout and model bundles, streaming.

* :func:`check_listing` maps every key of a ``name -> (shape, dtype)`` listing (file headers or a
  shapes JSON; no weights) through the component registry and mapping tables and checks every
  shape against the config: ``mapped K/K`` per component, unknown, missing and mis-shaped keys
  by name with both shapes, keys of components this version does not convert yet.
* :func:`torch_to_bundle` reads reference tensors one at a time, converts each through its
  mapping-table transform and writes the pieces straight into the Orbax checkpoint (a stacked
  parameter one layer slice at a time), so memory stays at about one reference tensor. Arrays
  keep the reference dtype unless ``dtype`` says otherwise; unused tensors, the reference
  config and tokenizer files are carried in the bundle.
* :func:`bundle_to_torch` reads the bundle one parameter (or layer slice) at a time and writes a
  Hugging Face style safetensors directory with exactly the reference names, shapes and dtypes.

torch -> bundle -> torch reproduces every tensor bit for bit.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from baichuan_audio_jax.bundle import (
    CHECKPOINT_DIRS,
    EXTRAS_DIR,
    REFERENCE_SIDE_FILES,
    TOKENIZER_DIR,
    bundle_model_config,
    checkpoint_model,
    compress_dtypes,
    copy_tokenizer,
    dtype_summary,
    expand_dtype,
    finish_bundle,
    make_info,
    read_bundle_info,
    tokenizer_files_in,
    write_json,
)
from baichuan_audio_jax.config import ModelConfig, model_config_from_reference, reference_config_from_model
from baichuan_audio_jax.conversion.components import (
    COMPONENTS,
    components_of,
    partition_keys,
    require_checkpoint_support,
)
from baichuan_audio_jax.conversion.mapping import (
    Concrete,
    check_coverage,
    combine_tables,
    expected_torch_shapes,
    slot_shape,
    stacked_dims,
)
from baichuan_audio_jax.conversion.orbax_io import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    OrbaxParams,
    StreamedArray,
    StreamTarget,
    save_tree,
)
from baichuan_audio_jax.conversion.torch_io import (
    DEFAULT_MAX_SHARD_BYTES,
    HFCheckpointWriter,
    ReferenceCheckpoint,
    SafetensorsWriter,
    TensorSpec,
    is_float_dtype,
)
from baichuan_audio_jax.staging import staged_directory

Listing = Mapping[str, tuple]  # name -> (shape, dtype or None)
Path = tuple


class ConversionError(ValueError):
    pass


def _p(path: Path) -> str:
    return "/".join(map(str, path))


def abstract_state(checkpoint: str, cfg: ModelConfig, components: Sequence[str] | None = None):
    """(graphdef, abstract state) of a bundle checkpoint's model; no initialiser runs."""
    return nnx.split(nnx.eval_shape(lambda: checkpoint_model(checkpoint, cfg, nnx.Rngs(0), components)))


def flat_abstract(state) -> dict[Path, jax.ShapeDtypeStruct]:
    return {tuple(p): v.get_value() for p, v in nnx.to_flat_state(state)}


# ----------------------------------------------------------------------------- coverage

@dataclasses.dataclass
class TableCoverage:
    table: str
    mapped: int
    total: int


@dataclasses.dataclass
class ComponentCoverage:
    name: str
    tables: list[TableCoverage]

    @property
    def mapped(self) -> int:
        return sum(t.mapped for t in self.tables)

    @property
    def total(self) -> int:
        return sum(t.total for t in self.tables)


@dataclasses.dataclass
class Coverage:
    """The result of mapping one listing (see :func:`check_listing`)."""

    checkpoint: str
    source: str
    num_keys: int
    components: list[ComponentCoverage] = dataclasses.field(default_factory=list)
    pending: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # not-yet-supported component -> keys
    missing: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)  # (name, expected shape)
    unknown: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)  # (name, shape)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)  # (name, expected, found)
    bad_dtypes: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, dtype)

    @property
    def has_problems(self) -> bool:
        return bool(self.missing or self.unknown or self.mismatched or self.bad_dtypes)

    @property
    def complete(self) -> bool:
        """Every key mapped, nothing left for a later version."""
        return not self.has_problems and not self.pending

    def lines(self, limit: int = 40) -> list[str]:
        out = [f"{self.checkpoint} checkpoint ({self.source}): {self.num_keys} keys"]
        for c in self.components:
            out.append(f"  {c.name}: mapped {c.mapped}/{c.total}")
            if len(c.tables) > 1:
                out += [f"    {t.table}: {t.mapped}/{t.total}" for t in c.tables]
        for name, keys in self.pending.items():
            out.append(f"  {name}: {len(keys)} keys, component not yet supported by this version (e.g. {keys[0]})")
        problems = ([f"  shape mismatch: {k}: expected {list(e)} from the config, found {list(f)}"
                     for k, e, f in self.mismatched]
                    + [f"  missing: {k} (expected {list(s)})" for k, s in self.missing]
                    + [f"  unknown: {k} {list(s)} (no component or mapping table names it)" for k, s in self.unknown]
                    + [f"  dtype: {k} is {d}, expected a floating-point type" for k, d in self.bad_dtypes])
        out += problems[:limit]
        if len(problems) > limit:
            out.append(f"  ... and {len(problems) - limit} more problem(s)")
        if self.has_problems:
            out.append(f"  FAILED: {len(self.missing)} missing, {len(self.unknown)} unknown, "
                       f"{len(self.mismatched)} mis-shaped, {len(self.bad_dtypes)} bad dtype")
        elif self.pending:
            n = sum(len(v) for v in self.pending.values())
            out.append(f"  INCOMPLETE: {n} keys belong to component(s) not yet supported: {', '.join(self.pending)}")
        else:
            out.append("  OK: full coverage")
        return out


def _table_counts(concrete: Sequence[Concrete], mapped: set[str]) -> list[TableCoverage]:
    order: dict[str, TableCoverage] = {}
    for c in concrete:
        t = order.setdefault(c.table, TableCoverage(c.table, 0, 0))
        t.total += 1
        t.mapped += c.torch in mapped
    return list(order.values())


def coverage_of(cov: Coverage, name: str, concrete: Sequence[Concrete], shapes: Mapping[Path, tuple],
                listing: Listing, keys: Iterable[str]) -> set[str]:
    """Adds one component's result to ``cov``; returns its mapped keys."""
    src = {k: tuple(listing[k][0]) for k in keys}
    rep = check_coverage(concrete, shapes, src)
    expected = expected_torch_shapes(concrete, shapes)
    cov.missing += [(k, tuple(expected[k])) for k in rep.missing]
    cov.unknown += [(k, src[k]) for k in rep.unknown]
    cov.mismatched += [(k, tuple(e), tuple(f)) for k, e, f in rep.mismatched]
    mapped = set(rep.mapped)
    for k in rep.mapped:
        dt = listing[k][1]
        if dt is not None and not is_float_dtype(dt):
            cov.bad_dtypes.append((k, np.dtype(dt).name))
            mapped.discard(k)
    cov.components.append(ComponentCoverage(name, _table_counts(concrete, mapped)))
    return mapped


def check_listing(cfg: ModelConfig, listing: Listing, checkpoint: str = "model", source: str = "") -> Coverage:
    """Maps every key of ``listing`` (name -> (shape, dtype or None)) for one reference checkpoint."""
    comps = components_of(checkpoint)
    supported, pending, unknown = partition_keys(listing, checkpoint)
    cov = Coverage(checkpoint, source, len(listing), pending=pending,
                   unknown=[(k, tuple(listing[k][0])) for k in unknown])
    if comps:
        _, state = abstract_state(checkpoint, cfg)
        shapes = {p: tuple(v.shape) for p, v in flat_abstract(state).items()}
        for comp in comps:
            coverage_of(cov, comp.name, comp.concrete(cfg), shapes, listing, supported.get(comp.name, []))
    return cov


# ----------------------------------------------------------------------------- shared pieces

class Progress:
    """A tqdm bar over bytes (rate in B/s) with tensors/s in its postfix."""

    def __init__(self, desc: str, total_bytes: int, total_tensors: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                        disable=not enabled, dynamic_ncols=True, mininterval=0.5)
        self.tensors = 0
        self.total_tensors = total_tensors
        self.bytes = 0
        self.t0 = time.perf_counter()

    def update(self, nbytes: int) -> None:
        self.tensors += 1
        self.bytes += int(nbytes)
        self.bar.update(int(nbytes))
        rate = self.tensors / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.tensors}/{self.total_tensors} tensors, {rate:.1f} tensors/s", refresh=False)

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.t0


@dataclasses.dataclass
class ConversionResult:
    output: str
    tensors: int
    bytes: int
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    coverage: Coverage | None = None

    @property
    def gb_per_s(self) -> float:
        return self.bytes / 1e9 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        return (f"wrote {self.output}: {self.tensors} tensors, {self.bytes / 1e9:.3f} GB in {self.seconds:.1f}s "
                f"({self.gb_per_s:.2f} GB/s)")


def plan_leaves(flat: Mapping[Path, jax.ShapeDtypeStruct], concrete: Sequence[Concrete],
                source_dtype: Callable[[str], np.dtype], dtype: Any = None
                ) -> tuple[dict[Path, StreamedArray], list[Path]]:
    """One :class:`StreamedArray` per parameter written by ``concrete``, and the parameters no
    entry writes. A parameter's dtype is ``dtype`` or the promotion of its sources' dtypes."""
    sources: dict[Path, list] = {}
    for c in concrete:
        if c.transform is None:
            continue
        for s in c.slots:
            if s.path not in flat:
                raise ConversionError(f"{c.torch}: the model has no parameter {_p(s.path)}")
            sources.setdefault(s.path, []).append((c, s))
    leaves = {}
    for path, srcs in sources.items():
        stacked = {stacked_dims(s) for _, s in srcs}
        if len(stacked) > 1:
            raise ConversionError(f"{_p(path)} is written both whole and per layer by the mapping tables")
        if stacked == {0} and len(srcs) > 1:
            raise ConversionError(f"{_p(path)} is written by several reference tensors: "
                                  f"{[c.torch for c, _ in srcs]}")
        dt = np.dtype(dtype) if dtype is not None else np.dtype(
            functools.reduce(jnp.promote_types, [source_dtype(c.torch) for c, _ in srcs]))
        leaves[path] = StreamedArray(path, tuple(flat[path].shape), dt, stacked=stacked.pop())
    return leaves, [p for p in flat if p not in sources]


async def write_concrete(target: StreamTarget, c: Concrete, t: np.ndarray) -> None:
    """Converts one reference tensor and writes its pieces (whole parameters or layer slices)."""
    parts = c.transform.to_jax(t, [slot_shape(target.leaf(s.path).shape, s) for s in c.slots])
    for s, part in zip(c.slots, parts):
        await target.write(s.path, part, s.index)


def _copy_reference_side_files(directories: Sequence[str], dest: str) -> list[str]:
    copied = []
    for d in directories:
        for name in REFERENCE_SIDE_FILES:
            src = os.path.join(d, name)
            if os.path.isfile(src) and name not in copied:
                os.makedirs(dest, exist_ok=True)
                shutil.copy2(src, os.path.join(dest, name))
                copied.append(name)
    return copied


def bundle_tokenizer(staging: str, tokenizer: str | None, directories: Sequence[str]) -> list[str]:
    dest = os.path.join(staging, TOKENIZER_DIR)
    if tokenizer is not None:
        return copy_tokenizer(tokenizer, dest)
    for d in directories:
        if tokenizer_files_in(d):
            return copy_tokenizer(d, dest)
    return []


# ----------------------------------------------------------------------------- torch -> bundle

def torch_to_bundle(source: ReferenceCheckpoint, output: str, model_config, *, checkpoint: str = "model",
                    dtype: Any = None, tokenizer: str | None = None, carry_unsupported: bool = False,
                    overwrite: bool = False, progress: bool = False,
                    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES) -> ConversionResult:
    """Converts a reference checkpoint into a model bundle at ``output``.

    Every key is checked first (names, shapes against ``model_config``, dtypes); any problem
    raises :class:`ConversionError` with the full report before anything is written. Keys of
    components this version does not convert make it fail too, unless ``carry_unsupported``:
    they are then carried verbatim in ``reference_extras/`` (and come back on export).
    ``dtype``: the dtype of the stored parameters (default: each tensor's own).
    """
    cfg = ModelConfig.from_config(model_config)
    comps = require_checkpoint_support(checkpoint)
    listing = source.listing()
    cov = check_listing(cfg, listing, checkpoint, source=", ".join(source.paths))
    if cov.has_problems:
        raise ConversionError("\n".join(["the checkpoint does not match the config:"] + cov.lines()))
    if cov.pending and not carry_unsupported:
        raise ConversionError("\n".join(cov.lines() + [
            "this version cannot convert every component of the checkpoint; pass --carry-unsupported to convert "
            "the supported ones and carry the rest unchanged in the bundle's reference_extras/"]))
    concrete = combine_tables(*[t for c in comps for t in c.mapping_tables(cfg)])
    carried = [k for keys in cov.pending.values() for k in keys]
    _, state = abstract_state(checkpoint, cfg)
    flat = flat_abstract(state)
    leaves, uncovered = plan_leaves(flat, concrete, lambda k: listing[k][1], dtype)
    if uncovered:
        raise ConversionError(f"{len(uncovered)} model parameter(s) are not covered by the mapping tables, "
                              f"e.g. {[_p(p) for p in uncovered[:8]]}")
    extras = [TensorSpec(c.torch, tuple(listing[c.torch][0]), listing[c.torch][1])
              for c in concrete if c.transform is None]
    extras += [TensorSpec(k, tuple(listing[k][0]), listing[k][1]) for k in carried]
    names = [c.torch for c in concrete] + carried
    total = sum(TensorSpec(k, tuple(listing[k][0]), listing[k][1]).nbytes for k in names)
    notes = []
    if carried:
        notes.append(f"carried unconverted in {EXTRAS_DIR}/: " + ", ".join(
            f"{n} ({len(k)} tensors)" for n, k in cov.pending.items()))
    output = os.path.abspath(output)
    with staged_directory(output, overwrite=overwrite) as staging:
        extras_writer = None
        if extras:
            os.makedirs(os.path.join(staging, EXTRAS_DIR), exist_ok=True)
            extras_writer = SafetensorsWriter(os.path.join(staging, EXTRAS_DIR, f"{checkpoint}.safetensors"),
                                              extras, {"format": "pt"})
        prog = Progress(f"torch -> bundle ({checkpoint})", total, len(names), progress)

        async def produce(target: StreamTarget) -> None:
            for c in concrete:
                t = source.get(c.torch)
                if c.transform is None:
                    extras_writer.write(c.torch, t)
                else:
                    await write_concrete(target, c, t)
                prog.update(t.nbytes)
                del t
            for k in carried:
                t = source.get(k)
                extras_writer.write(k, t)
                prog.update(t.nbytes)

        try:
            save_tree(os.path.join(staging, CHECKPOINT_DIRS[checkpoint]), traverse_util.unflatten_dict(leaves),
                      produce, max_inflight_bytes=max_inflight_bytes)
            if extras_writer is not None:
                extras_writer.close()
        except BaseException:
            if extras_writer is not None:
                extras_writer.abort()
            raise
        finally:
            seconds = prog.close()
        _copy_reference_side_files(source.directories, os.path.join(staging, EXTRAS_DIR))
        tok = bundle_tokenizer(staging, tokenizer, source.directories)
        extras_dir = os.path.join(staging, EXTRAS_DIR)
        info = make_info(
            components=[c.name for c in comps],
            checkpoints={checkpoint: {"directory": CHECKPOINT_DIRS[checkpoint],
                                      "dtypes": dtype_summary(leaf.dtype for leaf in leaves.values())}},
            tokenizer=tok,
            reference_dtypes={checkpoint: compress_dtypes({k: listing[k][1] for k in names})},
            extras=sorted(os.listdir(extras_dir)) if os.path.isdir(extras_dir) else [],
            carried_unsupported={n: len(k) for n, k in cov.pending.items()} if carried else {},
            source="torch: " + ", ".join(os.path.basename(os.path.normpath(p)) for p in source.paths))
        finish_bundle(staging, model_config, info)
    return ConversionResult(output, len(names), total, seconds, notes, cov)


# ----------------------------------------------------------------------------- bundle -> torch

def _reference_sections(cfg: ModelConfig) -> tuple:
    """What a reference ``config.json`` describes (the vocoder's settings live in its own code)."""
    return (cfg.llm, cfg.audio_head, cfg.audio_encoder, cfg.vq_bridge, cfg.audio_decoder, cfg.flow_matching)


def carried_config_matches(cfg: ModelConfig, carried_path: str) -> bool:
    """Whether the reference ``config.json`` carried in a bundle describes ``cfg``'s model."""
    try:
        ref = ModelConfig.from_config(model_config_from_reference(carried_path))
    except (KeyError, ValueError):
        return False
    return _reference_sections(ref) == _reference_sections(cfg)


def bundle_to_torch(bundle: str, output: str, *, checkpoint: str = "model", dtype: Any = None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
                    progress: bool = False) -> ConversionResult:
    """Writes a bundle's ``checkpoint`` as a Hugging Face style safetensors directory.

    Names and shapes are exactly the reference's; each tensor gets the dtype it had in the
    reference checkpoint the bundle came from (recorded in ``bundle.json``), else the stored
    parameter's dtype, unless ``dtype`` is given.
    """
    info = read_bundle_info(bundle)
    if checkpoint not in info.get("checkpoints", {}):
        raise ConversionError(f"bundle {bundle} has no {checkpoint} checkpoint "
                              f"(it has {sorted(info.get('checkpoints', {}))})")
    model_config = bundle_model_config(bundle)
    cfg = ModelConfig.from_config(model_config)
    present = info.get("components", [])
    foreign = [n for n in present if n not in COMPONENTS and n != "vocoder"]
    if foreign:
        raise ConversionError(f"bundle {bundle} holds component(s) {foreign} that this version does not know")
    comps = [c for c in components_of(checkpoint) if c.name in present]
    if not comps:
        require_checkpoint_support(checkpoint)
        raise ConversionError(f"bundle {bundle} holds none of the {checkpoint} components")
    notes = []
    lacking = [c.name for c in components_of(checkpoint) if c.name not in present]
    if lacking:
        notes.append(f"the bundle lacks component(s) {lacking}: their reference tensors are not written")
    concrete = combine_tables(*[t for c in comps for t in c.mapping_tables(cfg)])
    params = OrbaxParams(os.path.join(bundle, info["checkpoints"][checkpoint].get(
        "directory", CHECKPOINT_DIRS[checkpoint])))
    _, state = abstract_state(checkpoint, cfg, [c.name for c in comps] if checkpoint == "model" else None)
    shapes = {p: tuple(v.shape) for p, v in flat_abstract(state).items()}
    problems = []
    for p, shape in shapes.items():
        if p not in params:
            problems.append(f"{_p(p)}: absent")
        elif params.shape(p) != shape:
            problems.append(f"{_p(p)}: stored {list(params.shape(p))}, the config expects {list(shape)}")
    if problems:
        raise ConversionError(f"bundle {bundle} does not match its config ({len(problems)} problem(s)): "
                              + "; ".join(problems[:10]))
    expected = expected_torch_shapes(concrete, shapes)
    extras_file = os.path.join(bundle, EXTRAS_DIR, f"{checkpoint}.safetensors")
    extras = ReferenceCheckpoint(extras_file) if os.path.exists(extras_file) else None
    ref_dtypes = info.get("reference_dtypes", {}).get(checkpoint)
    override = np.dtype(dtype) if dtype is not None else None
    specs, zeros = [], []
    for c in concrete:
        if c.transform is None:
            if extras is not None and c.torch in extras:
                stored = extras.infos[c.torch]
                if stored.shape != tuple(expected[c.torch]):
                    raise ConversionError(f"{extras_file}: {c.torch} is {list(stored.shape)}, the config expects "
                                          f"{list(expected[c.torch])}")
                dt = override or stored.dtype
            else:
                zeros.append(c.torch)
                dt = override or np.dtype(expand_dtype(ref_dtypes, c.torch) or params.dtype(concrete_param(concrete)))
        else:
            dt = override or np.dtype(expand_dtype(ref_dtypes, c.torch) or params.dtype(c.slots[0].path))
        specs.append(TensorSpec(c.torch, tuple(expected[c.torch]), dt))
    mapped_names = {c.torch for c in concrete}
    carried = [k for k in (extras.keys() if extras is not None else []) if k not in mapped_names]
    specs += [TensorSpec(k, extras.infos[k].shape, override or extras.infos[k].dtype) for k in carried]
    if zeros:
        notes.append(f"{len(zeros)} unused reference tensor(s) are not in the bundle and were written as zeros "
                     f"(the reference ignores their values), e.g. {zeros[0]}")
    if carried:
        notes.append(f"{len(carried)} tensor(s) carried unconverted in the bundle written back unchanged")
    output = os.path.abspath(output)
    with staged_directory(output, overwrite=overwrite) as staging:
        writer = HFCheckpointWriter(staging, specs, max_shard_bytes=max_shard_bytes)
        prog = Progress(f"bundle -> torch ({checkpoint})", sum(s.nbytes for s in specs), len(specs), progress)
        try:
            for c, spec in zip(concrete, specs):
                if c.transform is None:
                    t = extras.get(c.torch) if c.torch not in zeros else np.zeros(spec.shape, spec.dtype)
                else:
                    t = c.transform.to_torch([params.read(s.path, s.index) for s in c.slots])
                writer.write(spec.name, t.astype(spec.dtype, copy=False))
                prog.update(spec.nbytes)
                del t
            for spec in specs[len(concrete):]:
                writer.write(spec.name, extras.get(spec.name).astype(spec.dtype, copy=False))
                prog.update(spec.nbytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            seconds = prog.close()
        if checkpoint == "model":
            carried_cfg = os.path.join(bundle, EXTRAS_DIR, "config.json")
            if os.path.exists(carried_cfg) and carried_config_matches(cfg, carried_cfg):
                shutil.copy2(carried_cfg, os.path.join(staging, "config.json"))
                notes.append("config.json: the reference config carried in the bundle")
            else:
                write_json(os.path.join(staging, "config.json"), reference_config_from_model(cfg))
                notes.append("config.json: written from the bundle's config" + (
                    " (the carried reference config describes a different model)"
                    if os.path.exists(carried_cfg) else ""))
        for name in REFERENCE_SIDE_FILES:
            src = os.path.join(bundle, EXTRAS_DIR, name)
            if name != "config.json" and os.path.isfile(src):
                shutil.copy2(src, os.path.join(staging, name))
        tok = os.path.join(bundle, TOKENIZER_DIR)
        if os.path.isdir(tok):
            for f in sorted(os.listdir(tok)):
                shutil.copy2(os.path.join(tok, f), os.path.join(staging, f))
    return ConversionResult(output, len(specs), sum(s.nbytes for s in specs), seconds, notes)


def concrete_param(concrete: Sequence[Concrete]) -> Path:
    """Any parameter path of the tables (the dtype of unused tensors without a record follows it)."""
    for c in concrete:
        if c.slots:
            return c.slots[0].path
    raise ConversionError("the mapping tables name no parameter")
