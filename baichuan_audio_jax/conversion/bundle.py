"""The model bundle: the directory ``convert`` writes, ``train`` exports and ``generate`` reads.

::

    BUNDLE/
      bundle.json        format version, components present, dtypes, provenance (small)
      config.json        the model section of the config (this package's JSON format; any
                         command taking --config accepts BUNDLE or BUNDLE/config.json)
      params/            Orbax checkpoint of the model state (BaichuanAudio: one subtree per
                         component: params/llm/..., params/audio_tokenizer/...,
                         params/flow_matching/...), restorable onto any mesh; every variable
                         type is stored (parameters, position-table buffers, RVQ codebooks)
      vocoder/           Orbax checkpoint of the HiFT vocoder state (optional)
      tokenizer/         text tokenizer files, copied as given (a Hugging Face tokenizer.json and
                         its config files, or a sentencepiece .model)
      reference_extras/  what only the reference layout needs, so torch -> bundle -> torch is
                         bit-exact: recognised-but-unused tensors (<checkpoint>.safetensors), the
                         reference config.json and generation_config.json

A bundle holds one or both reference checkpoint kinds (``model``: everything of the reference
``OmniForCausalLM``; ``vocoder``: ``hift.pt``). A bundle is written into a hidden staging
directory and renamed into place when complete (:mod:`baichuan_audio_jax.staging`), so a directory
with ``bundle.json`` is always whole; adding a checkpoint kind to an existing bundle
(:func:`kept_bundle_info`, :func:`staged_bundle`) stages a new bundle that hard-links the kept
files and swaps it in the same way.

:func:`load_bundle` restores the model (all or some components) with the parameter dtype of its
config, optionally sharded for a mesh; :func:`save_bundle` writes one from in-memory states.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh, SingleDeviceSharding

from baichuan_audio_jax.config import ModelConfig, load_config, model_config_to_json
from baichuan_audio_jax.conversion.components import COMPONENTS, components_of
from baichuan_audio_jax.conversion.orbax_io import OrbaxParams, save_tree
from baichuan_audio_jax.errors import array_of, cause_of
from baichuan_audio_jax.models.baichuan_audio import BaichuanAudio
from baichuan_audio_jax.sharding import state_shardings
from baichuan_audio_jax.staging import staged_directory, staging_path

BUNDLE_FORMAT = "baichuan-audio-bundle"
BUNDLE_VERSION = 1
BUNDLE_FILE = "bundle.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIRS = {"model": "params", "vocoder": "vocoder"}
TOKENIZER_DIR = "tokenizer"
EXTRAS_DIR = "reference_extras"
# Files of a Hugging Face tokenizer (or a sentencepiece model) recognised in a model directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "spiece.model")
# Reference-side files carried in reference_extras/ and written back on export.
REFERENCE_SIDE_FILES = ("config.json", "generation_config.json")
# The config sections the arrays of each checkpoint kind depend on (kept unchanged when another
# kind is added to a bundle).
CHECKPOINT_SECTIONS = {
    "model": ("llm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching", "tokens"),
    "vocoder": ("vocoder",),
}


def checkpoint_files(checkpoint: str) -> tuple[str, ...]:
    """Paths (relative to the bundle) that belong to one checkpoint kind and are rewritten with it."""
    own = (CHECKPOINT_DIRS[checkpoint], os.path.join(EXTRAS_DIR, f"{checkpoint}.safetensors"))
    if checkpoint == "model":
        own += (TOKENIZER_DIR,) + tuple(os.path.join(EXTRAS_DIR, f) for f in REFERENCE_SIDE_FILES)
    return own


class BundleError(ValueError):
    pass


def is_bundle(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.exists(os.path.join(path, BUNDLE_FILE))


def read_bundle_info(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    info_path = os.path.join(path, BUNDLE_FILE)
    if not os.path.isdir(path):
        raise BundleError(f"bundle {path} does not exist")
    if not os.path.exists(info_path):
        raise BundleError(f"{path} is not a model bundle (no {BUNDLE_FILE})")
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{info_path}: cannot read ({e})") from e
    if info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{info_path}: not a {BUNDLE_FORMAT} file")
    if info.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{info_path}: bundle format version {info.get('format_version')} is not supported "
                          f"(this version reads {BUNDLE_VERSION})")
    return info


def bundle_model_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """The ``model`` section stored in a bundle."""
    return load_config(os.fspath(path)).model


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def dtype_summary(dtypes: Iterable[Any]) -> dict[str, int]:
    """dtype name -> number of arrays."""
    out: dict[str, int] = {}
    for d in dtypes:
        name = np.dtype(d).name
        out[name] = out.get(name, 0) + 1
    return out


def compress_dtypes(dtypes: Mapping[str, Any]) -> dict:
    """name -> dtype as {"default": most common, "exceptions": {name: dtype}} (small in bundle.json)."""
    names = {k: np.dtype(v).name for k, v in dtypes.items()}
    if not names:
        return {"default": None, "exceptions": {}}
    counts: dict[str, int] = {}
    for v in names.values():
        counts[v] = counts.get(v, 0) + 1
    default = max(counts, key=counts.get)
    return {"default": default, "exceptions": {k: v for k, v in names.items() if v != default}}


def expand_dtype(record: Mapping[str, Any] | None, name: str) -> str | None:
    if not record:
        return None
    return record.get("exceptions", {}).get(name, record.get("default"))


def copy_tokenizer(source: str | os.PathLike, dest_dir: str) -> list[str]:
    """Copies a tokenizer file, or the recognised tokenizer files of a directory, into ``dest_dir``."""
    source = os.fspath(source)
    if os.path.isfile(source):
        files = [source]
    elif os.path.isdir(source):
        files = [os.path.join(source, f) for f in TOKENIZER_FILES if os.path.isfile(os.path.join(source, f))]
        if not files:
            raise BundleError(f"{source}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")
    else:
        raise BundleError(f"tokenizer {source} does not exist")
    os.makedirs(dest_dir, exist_ok=True)
    for f in files:
        shutil.copy2(f, os.path.join(dest_dir, os.path.basename(f)))
    return sorted(os.path.basename(f) for f in files)


def tokenizer_files_in(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES)


def make_info(*, components: Sequence[str], checkpoints: Mapping[str, Mapping[str, Any]], tokenizer: Sequence[str],
              reference_dtypes: Mapping[str, Any] | None = None, reference_layout: Mapping[str, Any] | None = None,
              extras: Sequence[str] = (), source: str = "") -> dict:
    """The content of ``bundle.json``.

    ``checkpoints``: per checkpoint kind present (``model``, ``vocoder``): its directory, the
    dtype summary of its arrays and where it came from. ``reference_dtypes``: per checkpoint kind,
    the dtype of every reference tensor it came from (compressed), so export restores them
    exactly. ``reference_layout``: per component, the naming variant of its reference keys (the
    vocoder's weight-norm naming), so export writes the names it came with.
    """
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "components": list(components),
        "checkpoints": {k: dict(v) for k, v in checkpoints.items()},
        "tokenizer": list(tokenizer),
        "reference_dtypes": dict(reference_dtypes or {}),
        "reference_layout": {k: dict(v) for k, v in (reference_layout or {}).items()},
        "reference_extras": list(extras),
        "source": source,
    }


def merge_info(kept: Mapping[str, Any] | None, new: Mapping[str, Any], checkpoint: str) -> dict:
    """``bundle.json`` of a bundle whose ``checkpoint`` kind is (re)written as ``new`` describes it,
    keeping the other kinds of ``kept`` (None: a new bundle). ``reference_extras`` is ``new``'s
    (the caller lists the staged directory)."""
    if kept is None:
        return dict(new)

    def other(component: str) -> bool:
        return component in COMPONENTS and COMPONENTS[component].checkpoint != checkpoint

    out = dict(kept)
    order = list(COMPONENTS)
    out["components"] = sorted([c for c in kept.get("components", []) if other(c)] + list(new["components"]),
                               key=lambda c: order.index(c) if c in order else len(order))
    for field in ("checkpoints", "reference_dtypes"):
        out[field] = {**{k: v for k, v in kept.get(field, {}).items() if k != checkpoint}, **new.get(field, {})}
    out["reference_layout"] = {**{c: v for c, v in kept.get("reference_layout", {}).items() if other(c)},
                               **new.get("reference_layout", {})}
    if checkpoint == "model":
        out["tokenizer"] = list(new.get("tokenizer", []))
    out["reference_extras"] = list(new.get("reference_extras", []))
    out["source"] = kept.get("source") or new.get("source", "")
    return out


def kept_bundle_info(path: str | os.PathLike, checkpoint: str, *, overwrite: bool = False) -> dict | None:
    """When writing ``checkpoint`` to ``path``: the ``bundle.json`` of an existing bundle there whose
    other checkpoint kinds are kept, or None when a new bundle is written (``path`` absent, or
    replaced with ``overwrite``). Refuses to touch an existing output unless that is safe: a
    bundle already holding ``checkpoint`` needs ``overwrite``; so does anything else at ``path``."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        return None
    if not is_bundle(path):
        if overwrite:
            return None
        raise FileExistsError(f"output {path} already exists and is not a model bundle (remove it or choose "
                              "another output)")
    info = read_bundle_info(path)
    has = checkpoint in info.get("checkpoints", {})
    if has and not overwrite:
        raise FileExistsError(f"bundle {path} already has a {checkpoint} checkpoint (pass --overwrite to replace it)")
    others = [k for k in info.get("checkpoints", {}) if k != checkpoint]
    return info if others else None


def check_kept_config(path: str | os.PathLike, kept: Mapping[str, Any], model_config) -> None:
    """The sections of ``model_config`` that the kept checkpoint kinds of the bundle at ``path``
    depend on must equal the bundle's (the stored arrays were made for them)."""
    old = ModelConfig.from_config(bundle_model_config(path))
    new = ModelConfig.from_config(model_config)
    for kind in kept.get("checkpoints", {}):
        for section in CHECKPOINT_SECTIONS.get(kind, ()):
            if getattr(old, section) != getattr(new, section):
                a, b = dataclasses.asdict(getattr(old, section)), dataclasses.asdict(getattr(new, section))
                diff = [f"{k}: bundle {a[k]}, given {b[k]}" for k in a if a[k] != b.get(k)]
                raise BundleError(f"bundle {path} keeps its {kind} checkpoint, whose config section {section!r} "
                                  f"differs from the given config ({'; '.join(diff)})")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


@contextlib.contextmanager
def staged_bundle(path: str | os.PathLike, checkpoint: str, kept: Mapping[str, Any] | None, *,
                  overwrite: bool = False) -> Iterator[str]:
    """A staging directory that becomes the bundle at ``path`` when the block completes. With
    ``kept`` (see :func:`kept_bundle_info`) it starts with the existing bundle's files except
    those of ``checkpoint`` (:func:`checkpoint_files`) and ``bundle.json``/``config.json``,
    hard-linked (the existing bundle is never modified; it is replaced only once the new one is
    complete)."""

    path = os.path.abspath(os.fspath(path))
    with staged_directory(path, overwrite=overwrite or kept is not None) as staging:
        if kept is not None:
            skip = set(checkpoint_files(checkpoint)) | {BUNDLE_FILE, CONFIG_FILE}
            for root, dirs, files in os.walk(path):
                rel = os.path.relpath(root, path)
                dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in skip]
                os.makedirs(os.path.join(staging, rel), exist_ok=True)
                for f in files:
                    if os.path.normpath(os.path.join(rel, f)) not in skip:
                        _link_or_copy(os.path.join(root, f), os.path.join(staging, rel, f))
        yield staging


def finish_bundle(staging: str, model_config: ml_collections.ConfigDict, info: Mapping[str, Any]) -> None:
    """Writes ``config.json`` and, last, ``bundle.json`` into a staged bundle."""
    write_json(os.path.join(staging, CONFIG_FILE), model_config_to_json(model_config))
    write_json(os.path.join(staging, BUNDLE_FILE), dict(info))


# ----------------------------------------------------------------------------- restore

def checkpoint_model(checkpoint: str, cfg: ModelConfig, rngs: nnx.Rngs,
                     components: Sequence[str] | None = None) -> nnx.Module:
    """The module whose state a bundle checkpoint holds: ``BaichuanAudio`` (with ``components``,
    default all) for ``"model"``, the vocoder component's own model for ``"vocoder"``."""

    if checkpoint == "model":
        return BaichuanAudio(cfg, rngs=rngs, components=components)
    (comp,) = components_of(checkpoint)
    return comp.build(cfg, rngs)


def _flat(state) -> dict[tuple, Any]:
    return {tuple(p): v for p, v in nnx.to_flat_state(state)}
def restore_state(directory: str, abstract_state: Any, shardings: Any = None) -> Any:
    """Restores an NNX state (given abstractly) from an Orbax checkpoint holding (at least) its
    parameters, cast to the state's dtypes. ``shardings``: None (default device), a ``Mesh``
    (placement from the logical axis rules) or a state-shaped tree of shardings."""


    flat = _flat(abstract_state)
    if shardings is None:
        flat_sh = {p: SingleDeviceSharding(jax.devices()[0]) for p in flat}
    elif isinstance(shardings, Mesh):
        flat_sh = _flat_shardings(state_shardings(abstract_state, shardings), flat)
    else:
        flat_sh = _flat_shardings(shardings, flat)
    try:
        stored = OrbaxParams(directory)
    except Exception as e:  # Orbax/TensorStore raise many types for damaged or absent metadata
        raise BundleError(f"{directory}: cannot read the checkpoint's metadata: {cause_of(e)}") from e
    problems = []
    for p, var in flat.items():
        v = var.get_value()
        if p not in stored:
            problems.append(f"{'/'.join(map(str, p))}: absent from the checkpoint")
        elif stored.shape(p) != tuple(v.shape):
            problems.append(f"{'/'.join(map(str, p))}: checkpoint shape {stored.shape(p)}, model expects "
                            f"{tuple(v.shape)}")
    if problems:
        raise BundleError(f"{directory} does not match the model ({len(problems)} problem(s)): "
                          + "; ".join(problems[:10]))
    target = traverse_util.unflatten_dict({
        p: jax.ShapeDtypeStruct(var.get_value().shape, var.get_value().dtype, sharding=flat_sh[p])
        for p, var in flat.items()})
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            os.path.abspath(directory),
            args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                        partial_restore=True))
    except Exception as e:  # truncated or missing array files surface as TensorStore errors
        array = array_of(e)
        raise BundleError(f"{directory}: cannot read " + (f"array {array}" if array else "the checkpoint")
                          + f": {cause_of(e)}") from e
    nnx.replace_by_pure_dict(abstract_state, restored)
    return abstract_state


def _flat_shardings(tree: Any, flat_state: Mapping[tuple, Any]) -> dict[tuple, Any]:
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(flat_state):
        raise BundleError(f"{len(leaves)} shardings given for {len(flat_state)} arrays")
    return dict(zip(flat_state, leaves))


@dataclasses.dataclass
class LoadedBundle:
    model: nnx.Module | None  # BaichuanAudio with the requested components (None: a vocoder-only bundle)
    config: ModelConfig
    model_config: ml_collections.ConfigDict  # the config's model section as stored
    info: dict
    vocoder: nnx.Module | None = None
    tokenizer_dir: str | None = None  # tokenizer files, if the bundle has any


def load_bundle(path: str | os.PathLike, *, shardings: Any = None, components: Sequence[str] | None = None,
                vocoder: bool | None = None) -> LoadedBundle:
    """Restores a bundle's model (and vocoder) with the dtypes of its config.

    Every variable of the stored state is restored: parameters, buffers (position tables) and
    codebooks alike. ``components``: the model components to restore (default: every one in the
    bundle; ``[]`` for none, e.g. only the vocoder). ``shardings``: None, a
    ``jax.sharding.Mesh`` (each variable placed by its logical axes) or a tree of shardings
    matching the model state. ``vocoder``: restore it (default: if present).
    """

    path = os.fspath(path)
    info = read_bundle_info(path)
    model_config = bundle_model_config(path)
    cfg = ModelConfig.from_config(model_config)
    present = list(info.get("components", []))
    unknown = [c for c in present if c not in COMPONENTS]
    if unknown and components is None:
        raise BundleError(f"{path} holds component(s) {unknown} that this version does not know")
    model_components = [c.name for c in components_of("model") if c.name in present]
    wanted = model_components if components is None else list(components)
    not_model = [c for c in wanted if c in COMPONENTS and COMPONENTS[c].checkpoint != "model"]
    if not_model:
        raise BundleError(f"{not_model} are not model components; restore the vocoder with vocoder=True")
    absent = [c for c in wanted if c not in present]
    if absent:
        raise BundleError(f"{path} has no component(s) {absent} (it has {present})")
    model = None
    if wanted:
        graphdef, state = nnx.split(nnx.eval_shape(
            lambda: checkpoint_model("model", cfg, nnx.Rngs(0), components=wanted)))
        state = restore_state(os.path.join(path, CHECKPOINT_DIRS["model"]), state, shardings)
        model = nnx.merge(graphdef, state)
    voc = None
    has_vocoder = "vocoder" in info.get("checkpoints", {})
    if vocoder or (vocoder is None and has_vocoder):
        if not has_vocoder:
            raise BundleError(f"{path} has no vocoder (add one with `convert --component vocoder --output {path}`)")
        vgraph, vstate = nnx.split(nnx.eval_shape(lambda: checkpoint_model("vocoder", cfg, nnx.Rngs(0))))
        vstate = restore_state(os.path.join(path, CHECKPOINT_DIRS["vocoder"]), vstate, shardings)
        voc = nnx.merge(vgraph, vstate)
    tok = os.path.join(path, TOKENIZER_DIR)
    return LoadedBundle(model, cfg, model_config, info, voc, tok if os.path.isdir(tok) else None)


# ----------------------------------------------------------------------------- save

def save_bundle(path: str | os.PathLike, model_config: ml_collections.ConfigDict, model: nnx.Module | Any, *,
                vocoder: nnx.Module | Any | None = None, tokenizer: str | os.PathLike | None = None,
                reference_extras: str | os.PathLike | None = None, reference_layout: Mapping[str, Any] | None = None,
                source: str = "", overwrite: bool = False) -> str:
    """Writes a bundle from in-memory states (e.g. at the end of training).

    ``model``: a ``BaichuanAudio`` (or its state); its arrays may be sharded over a mesh. Every
    variable of the state is saved (parameters, buffers, codebooks).
    ``reference_extras`` and ``reference_layout``: the ``reference_extras/`` directory and the
    ``reference_layout`` entry of the bundle the run started from, carried over so an export to
    the reference layout keeps its unused tensors, config and key naming.
    Multi-process runs call this on every process (file operations happen on process 0).
    """

    def pure(x):
        return nnx.to_pure_dict(nnx.state(x) if isinstance(x, nnx.Module) else x)

    trees = {"model": pure(model)}
    components = list(getattr(model, "component_names", ()) or trees["model"])
    if vocoder is not None:
        trees["vocoder"] = pure(vocoder)
    multi = jax.process_count() > 1
    path = os.path.abspath(os.fspath(path))

    def write(staging: str) -> None:
        checkpoints = {}
        for kind, tree in trees.items():
            save_tree(os.path.join(staging, CHECKPOINT_DIRS[kind]), tree)
            checkpoints[kind] = {"directory": CHECKPOINT_DIRS[kind],
                                 "dtypes": dtype_summary(a.dtype for a in jax.tree.leaves(tree))}
        if jax.process_index() != 0:
            return
        tok = copy_tokenizer(tokenizer, os.path.join(staging, TOKENIZER_DIR)) if tokenizer is not None else []
        extras = []
        if reference_extras is not None:
            shutil.copytree(os.fspath(reference_extras), os.path.join(staging, EXTRAS_DIR))
            extras = sorted(os.listdir(os.path.join(staging, EXTRAS_DIR)))
        finish_bundle(staging, model_config, make_info(
            components=components + (["vocoder"] if vocoder is not None else []), checkpoints=checkpoints,
            tokenizer=tok, reference_layout=reference_layout, extras=extras, source=source))

    if not multi:
        with staged_directory(path, overwrite=overwrite) as staging:
            write(staging)
        return path

    staging = staging_path(path)
    if jax.process_index() == 0:
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"output {path} already exists")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    multihost_utils.sync_global_devices("bundle:staging")
    write(staging)
    multihost_utils.sync_global_devices("bundle:written")
    if jax.process_index() == 0:
        if os.path.exists(path):
            shutil.rmtree(path)
        os.rename(staging, path)
    multihost_utils.sync_global_devices("bundle:renamed")
    return path

