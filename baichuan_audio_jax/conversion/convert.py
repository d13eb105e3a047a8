"""Checkpoint conversion between the reference PyTorch layout and model bundles, streaming.

* :func:`check_listing` maps every key of a ``name -> (shape, dtype)`` listing (file headers or a
  shapes JSON; no weights) through the component registry and mapping tables and checks every
  shape against the config: ``mapped K/K`` per component, unknown, missing and mis-shaped keys
  by name with both shapes, keys of components left out by a ``components`` selection.
* :func:`torch_to_bundle` reads reference tensors one at a time, converts each through its
  mapping-table transform and writes the pieces straight into the Orbax checkpoint (a stacked
  parameter one layer slice at a time), so memory stays at about one reference tensor. Arrays
  keep the reference dtype unless ``dtype`` says otherwise; unused tensors, the reference
  config and tokenizer files are carried in the bundle. A checkpoint kind can be added to an
  existing bundle (the vocoder to a model bundle, or the reverse).
* :func:`bundle_to_torch` reads the bundle one parameter (or layer slice) at a time and writes the
  reference layout with exactly the reference names, shapes and dtypes: a Hugging Face style
  safetensors directory for the model, a ``hift.pt``-layout ``.safetensors`` (or, with torch,
  ``.pt``) file for the vocoder.

torch -> bundle -> torch reproduces every tensor bit for bit.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from tqdm import tqdm

from baichuan_audio_jax.config import (
    ModelConfig,
    complete_reference_config,
    model_config_from_reference,
    reference_config_from_model,
)
from baichuan_audio_jax.conversion.bundle import (
    CHECKPOINT_DIRS,
    EXTRAS_DIR,
    REFERENCE_SIDE_FILES,
    TOKENIZER_DIR,
    BundleError,
    bundle_model_config,
    check_kept_config,
    checkpoint_model,
    compress_dtypes,
    copy_tokenizer,
    dtype_summary,
    expand_dtype,
    finish_bundle,
    kept_bundle_info,
    make_info,
    merge_info,
    read_bundle_info,
    staged_bundle,
    tokenizer_files_in,
    write_json,
)
from baichuan_audio_jax.conversion.components import (
    COMPONENTS,
    LayoutError,
    components_of,
    partition_keys,
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
    file_writer,
    is_checkpoint_file_name,
    is_float_dtype,
)
from baichuan_audio_jax.staging import staged_directory, staged_file

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
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # component not selected -> keys
    layouts: dict[str, dict] = dataclasses.field(default_factory=dict)  # component -> detected key naming
    missing: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)  # (name, expected shape)
    unknown: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)  # (name, shape)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)  # (name, expected, found)
    bad_dtypes: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, dtype)
    hints: list[str] = dataclasses.field(default_factory=list)  # config overrides the shapes imply

    @property
    def has_problems(self) -> bool:
        return bool(self.missing or self.unknown or self.mismatched or self.bad_dtypes)

    def lines(self, limit: int = 40) -> list[str]:
        out = [f"{self.checkpoint} checkpoint ({self.source}): {self.num_keys} keys"]
        for c in self.components:
            out.append(f"  {c.name}: mapped {c.mapped}/{c.total}")
            if len(c.tables) > 1:
                out += [f"    {t.table}: {t.mapped}/{t.total}" for t in c.tables]
        for name, keys in self.skipped.items():
            out.append(f"  {name}: {len(keys)} keys skipped (component not selected, e.g. {keys[0]})")
        problems = ([f"  shape mismatch: {k}: expected {list(e)} from the config, found {list(f)}"
                     for k, e, f in self.mismatched]
                    + [f"  missing: {k} (expected {list(s)})" for k, s in self.missing]
                    + [f"  unknown: {k} {list(s)} (no component or mapping table names it)" for k, s in self.unknown]
                    + [f"  dtype: {k} is {d}, expected a floating-point type" for k, d in self.bad_dtypes])
        out += problems[:limit]
        if len(problems) > limit:
            out.append(f"  ... and {len(problems) - limit} more problem(s)")
        if self.hints:
            out.append(f"  hint: the checkpoint's shapes imply {' '.join(self.hints)}")
        if self.has_problems:
            out.append(f"  FAILED: {len(self.missing)} missing, {len(self.unknown)} unknown, "
                       f"{len(self.mismatched)} mis-shaped, {len(self.bad_dtypes)} bad dtype")
        elif self.skipped:
            n = sum(len(v) for v in self.skipped.values())
            out.append(f"  OK for the selected component(s); {n} keys of {', '.join(self.skipped)} skipped")
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


def check_listing(cfg: ModelConfig, listing: Listing, checkpoint: str = "model", source: str = "",
                  components: Sequence[str] | None = None) -> Coverage:
    """Maps every key of ``listing`` (name -> (shape, dtype or None)) for one reference checkpoint.

    ``components`` selects some of the checkpoint's components (default: all): every key of a
    selected one must be present; keys of the others are counted as skipped. Each component's key
    naming variant is detected from its keys (:attr:`Coverage.layouts`)."""
    comps = components_of(checkpoint, components)
    chosen, skipped, unknown = partition_keys(listing, checkpoint, [c.name for c in comps])
    cov = Coverage(checkpoint, source, len(listing), skipped=skipped,
                   unknown=[(k, tuple(listing[k][0])) for k in unknown])
    _, state = abstract_state(checkpoint, cfg, [c.name for c in comps])
    shapes = {p: tuple(v.shape) for p, v in flat_abstract(state).items()}
    for comp in comps:
        keys = chosen.get(comp.name, [])
        try:
            cov.layouts[comp.name] = comp.detect_layout(keys)
        except LayoutError as e:
            raise ConversionError(f"{source}: {e}") from e
        before = len(cov.mismatched)
        coverage_of(cov, comp.name, comp.concrete(cfg, cov.layouts[comp.name]), shapes, listing, keys)
        if len(cov.mismatched) > before and comp.config_hint is not None:
            cov.hints += comp.config_hint({k: tuple(listing[k][0]) for k in keys}, comp.section(cfg))
    return cov


# ----------------------------------------------------------------------------- shared pieces

class Progress:
    """A tqdm bar over bytes (rate in B/s) with tensors/s in its postfix."""

    def __init__(self, desc: str, total_bytes: int, total_tensors: int, enabled: bool):
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
    nonfinite: dict[str, int] = dataclasses.field(default_factory=dict)  # tensor -> NaN/Inf values

    def warnings(self, limit: int = 5) -> list[str]:
        """One line naming the tensors that hold NaN or Inf values (none when all are finite)."""
        if not self.nonfinite:
            return []
        named = ", ".join(f"{k} ({n} values)" for k, n in list(self.nonfinite.items())[:limit])
        more = f" and {len(self.nonfinite) - limit} more" if len(self.nonfinite) > limit else ""
        return [f"{len(self.nonfinite)} tensor(s) hold NaN/Inf values: {named}{more}; the converted checkpoint "
                "carries them as they are"]

    @property
    def gb_per_s(self) -> float:
        return self.bytes / 1e9 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        return (f"wrote {self.output}: {self.tensors} tensors, {self.bytes / 1e9:.3f} GB in {self.seconds:.1f}s "
                f"({self.gb_per_s:.2f} GB/s)")


def count_nonfinite(t: np.ndarray) -> int:
    """NaN and Inf values in a float array (0 for integer arrays)."""
    t = np.asarray(t)
    if t.dtype.kind not in "fc" and t.dtype.name != "bfloat16":
        return 0
    return int(t.size - np.count_nonzero(np.isfinite(t)))  # no float32 copy: conversion peak memory matters


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
                    components: Sequence[str] | None = None, dtype: Any = None, tokenizer: str | None = None,
                    overwrite: bool = False, progress: bool = False,
                    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES) -> ConversionResult:
    """Converts a reference checkpoint (``checkpoint``: ``"model"`` or ``"vocoder"``) into the model
    bundle at ``output``.

    Every key is checked first (names, shapes against ``model_config``, dtypes); any problem
    raises :class:`ConversionError` with the full report before anything is written.
    ``components`` converts some of the checkpoint's components (default: all); keys of the
    others are skipped and reported. ``dtype``: the dtype of the stored arrays (default: each
    tensor's own). When ``output`` is a bundle holding the *other* checkpoint kind, this one is
    added to it (its config must agree with the bundle's on what the kept arrays depend on); an
    existing checkpoint of this kind is replaced only with ``overwrite``. Either way the result
    is staged and swapped in whole.
    """
    cfg = ModelConfig.from_config(model_config)
    comps = components_of(checkpoint, components)
    output = os.path.abspath(output)
    kept = kept_bundle_info(output, checkpoint, overwrite=overwrite)
    if kept is not None:
        try:
            check_kept_config(output, kept, model_config)
        except BundleError as e:
            raise ConversionError(str(e)) from e
    listing = source.listing()
    cov = check_listing(cfg, listing, checkpoint, source=", ".join(source.paths), components=[c.name for c in comps])
    if cov.has_problems:
        raise ConversionError("\n".join(["the checkpoint does not match the config:"] + cov.lines()))
    concrete = combine_tables(*[t for c in comps for t in c.mapping_tables(cfg, cov.layouts[c.name])])
    _, state = abstract_state(checkpoint, cfg, [c.name for c in comps])
    flat = flat_abstract(state)
    leaves, uncovered = plan_leaves(flat, concrete, lambda k: listing[k][1], dtype)
    if uncovered:
        raise ConversionError(f"{len(uncovered)} model parameter(s) are not covered by the mapping tables, "
                              f"e.g. {[_p(p) for p in uncovered[:8]]}")
    extras = [TensorSpec(c.torch, tuple(listing[c.torch][0]), listing[c.torch][1])
              for c in concrete if c.transform is None]
    names = [c.torch for c in concrete]
    total = sum(TensorSpec(k, tuple(listing[k][0]), listing[k][1]).nbytes for k in names)
    notes = []
    if cov.skipped:
        notes.append("skipped (component not selected): " + ", ".join(
            f"{n} ({len(k)} tensors)" for n, k in cov.skipped.items()))
    if kept is not None:
        others = [k for k in kept["checkpoints"] if k != checkpoint]
        notes.append(f"written into the existing bundle, keeping its {' and '.join(others)} checkpoint")
    with staged_bundle(output, checkpoint, kept, overwrite=overwrite) as staging:
        extras_writer = None
        if extras:
            os.makedirs(os.path.join(staging, EXTRAS_DIR), exist_ok=True)
            extras_writer = SafetensorsWriter(os.path.join(staging, EXTRAS_DIR, f"{checkpoint}.safetensors"),
                                              extras, {"format": "pt"})
        prog = Progress(f"torch -> bundle ({checkpoint})", total, len(names), progress)
        nonfinite: dict[str, int] = {}

        async def produce(target: StreamTarget) -> None:
            for c in concrete:
                t = source.get(c.torch)
                if bad := count_nonfinite(t):
                    nonfinite[c.torch] = bad
                if c.transform is None:
                    extras_writer.write(c.torch, t)
                else:
                    await write_concrete(target, c, t)
                prog.update(t.nbytes)
                del t

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
        tok = []
        if checkpoint == "model":
            _copy_reference_side_files(source.directories, os.path.join(staging, EXTRAS_DIR))
            tok = bundle_tokenizer(staging, tokenizer, source.directories)
        elif tokenizer is not None:
            notes.append("--tokenizer ignored: tokenizer files belong with the model checkpoint")
        extras_dir = os.path.join(staging, EXTRAS_DIR)
        origin = "torch: " + ", ".join(os.path.basename(os.path.normpath(p)) for p in source.paths)
        if source.stripped:
            origin += f" (wrapper prefix {sorted(set(source.stripped.values()))} removed)"
        info = make_info(
            components=[c.name for c in comps],
            checkpoints={checkpoint: {"directory": CHECKPOINT_DIRS[checkpoint],
                                      "dtypes": dtype_summary(leaf.dtype for leaf in leaves.values()),
                                      "source": origin}},
            tokenizer=tok,
            reference_dtypes={checkpoint: compress_dtypes({k: listing[k][1] for k in names})},
            reference_layout={n: v for n, v in cov.layouts.items() if v},
            extras=sorted(os.listdir(extras_dir)) if os.path.isdir(extras_dir) else [],
            source=origin)
        finish_bundle(staging, model_config, merge_info(kept, info, checkpoint))
    return ConversionResult(output, len(names), total, seconds, notes, cov, nonfinite)


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
    """Writes a bundle's ``checkpoint`` in the reference layout.

    ``"model"``: a Hugging Face style safetensors directory (shards + index, ``config.json``,
    tokenizer files). ``"vocoder"``: one ``hift.pt``-layout file, ``.safetensors`` (streamed) or
    ``.pt`` (needs torch; ``torch.save`` holds the state in memory), under the weight-norm naming
    the vocoder came with. Names and shapes are exactly the reference's; each tensor gets the
    dtype it had in the reference checkpoint the bundle came from (recorded in ``bundle.json``),
    else the stored parameter's dtype, unless ``dtype`` is given.
    """
    info = read_bundle_info(bundle)
    if checkpoint not in info.get("checkpoints", {}):
        raise ConversionError(f"bundle {bundle} has no {checkpoint} checkpoint "
                              f"(it has {sorted(info.get('checkpoints', {}))})")
    single_file = checkpoint != "model"
    if single_file and not is_checkpoint_file_name(output):
        raise ConversionError(f"the {checkpoint} checkpoint is one file: name the output .safetensors or .pt "
                              f"(e.g. hift.safetensors), got {output}")
    if not single_file and is_checkpoint_file_name(output):
        raise ConversionError(f"the model checkpoint is written as a Hugging Face style directory; {output} names a "
                              "file")
    model_config = bundle_model_config(bundle)
    cfg = ModelConfig.from_config(model_config)
    present = info.get("components", [])
    foreign = [n for n in present if n not in COMPONENTS]
    if foreign:
        raise ConversionError(f"bundle {bundle} holds component(s) {foreign} that this version does not know")
    comps = [c for c in components_of(checkpoint) if c.name in present]
    if not comps:
        raise ConversionError(f"bundle {bundle} holds none of the {checkpoint} components")
    notes = []
    lacking = [c.name for c in components_of(checkpoint) if c.name not in present]
    if lacking:
        notes.append(f"the bundle lacks component(s) {lacking}: their reference tensors are not written")
    layouts = info.get("reference_layout", {})
    concrete = combine_tables(*[t for c in comps for t in c.mapping_tables(cfg, layouts.get(c.name))])
    params = OrbaxParams(os.path.join(bundle, info["checkpoints"][checkpoint].get(
        "directory", CHECKPOINT_DIRS[checkpoint])))
    _, state = abstract_state(checkpoint, cfg, [c.name for c in comps])
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
    unexpected = [k for k in (extras.keys() if extras is not None else []) if k not in {c.torch for c in concrete}]
    if unexpected:
        raise ConversionError(f"{extras_file} holds tensor(s) no mapping table names, e.g. {unexpected[:4]}")
    if zeros:
        notes.append(f"{len(zeros)} unused reference tensor(s) are not in the bundle and were written as zeros "
                     f"(the reference ignores their values), e.g. {zeros[0]}")
    output = os.path.abspath(output)
    prog = Progress(f"bundle -> torch ({checkpoint})", sum(s.nbytes for s in specs), len(specs), progress)
    staged = staged_file(output, overwrite=overwrite) if single_file else staged_directory(output, overwrite=overwrite)
    nonfinite: dict[str, int] = {}
    try:
        with staged as staging:
            writer = (file_writer(staging, specs, name=output) if single_file
                      else HFCheckpointWriter(staging, specs, max_shard_bytes=max_shard_bytes))
            try:
                for c, spec in zip(concrete, specs):
                    if c.transform is None:
                        t = extras.get(c.torch) if c.torch not in zeros else np.zeros(spec.shape, spec.dtype)
                    else:
                        t = c.transform.to_torch([params.read(s.path, s.index) for s in c.slots])
                    if bad := count_nonfinite(t):
                        nonfinite[spec.name] = bad
                    writer.write(spec.name, t.astype(spec.dtype, copy=False))
                    prog.update(spec.nbytes)
                    del t
                writer.close()
            except BaseException:
                writer.abort()
                raise
            if not single_file:
                by_dtype: dict[str, int] = {}
                for spec in specs:
                    by_dtype[np.dtype(spec.dtype).name] = by_dtype.get(np.dtype(spec.dtype).name, 0) + spec.nbytes
                notes += _write_model_side_files(bundle, staging, cfg, max(by_dtype, key=by_dtype.get))
    finally:
        seconds = prog.close()
    return ConversionResult(output, len(specs), sum(s.nbytes for s in specs), seconds, notes, nonfinite=nonfinite)


def _write_model_side_files(bundle: str, staging: str, cfg: ModelConfig, torch_dtype: str) -> list[str]:
    """config.json (the carried reference config if it still describes the model, else written from
    the bundle's config, naming ``torch_dtype``: the dtype of most written bytes),
    generation_config.json and the tokenizer files next to the weights."""
    notes = []
    carried_cfg = os.path.join(bundle, EXTRAS_DIR, "config.json")
    if os.path.exists(carried_cfg) and carried_config_matches(cfg, carried_cfg):
        with open(carried_cfg) as f:
            carried = json.load(f)
        complete = complete_reference_config(carried, cfg, torch_dtype)
        if complete == carried:
            shutil.copy2(carried_cfg, os.path.join(staging, "config.json"))
            notes.append("config.json: the reference config carried in the bundle")
        else:  # the reference code reads keys the carried file lacks: add them, keep its own values
            write_json(os.path.join(staging, "config.json"), complete)
            notes.append("config.json: the reference config carried in the bundle, with the keys it lacked added")
    else:
        write_json(os.path.join(staging, "config.json"), reference_config_from_model(cfg, torch_dtype))
        notes.append("config.json: written from the bundle's config" + (
            " (the carried reference config describes a different model)" if os.path.exists(carried_cfg) else ""))
    for name in REFERENCE_SIDE_FILES:
        src = os.path.join(bundle, EXTRAS_DIR, name)
        if name != "config.json" and os.path.isfile(src):
            shutil.copy2(src, os.path.join(staging, name))
    tok = os.path.join(bundle, TOKENIZER_DIR)
    if os.path.isdir(tok):
        for f in sorted(os.listdir(tok)):
            shutil.copy2(os.path.join(tok, f), os.path.join(staging, f))
    return notes


def concrete_param(concrete: Sequence[Concrete]) -> Path:
    """Any parameter path of the tables (the dtype of unused tensors without a record follows it)."""
    for c in concrete:
        if c.slots:
            return c.slots[0].path
    raise ConversionError("the mapping tables name no parameter")
