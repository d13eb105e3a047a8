"""Starting a run from trained weights: ``config.init_from``.

``config.init_from`` maps a part of this run's model (an attribute path, ``/``-separated, e.g.
``tokenizer`` or ``llm``) to where its weights come from::

    init_from.tokenizer = "runs/tokenizer_tiny"             # a training run: same-named part
    init_from.tokenizer = "runs/tokenizer_tiny#tokenizer"   # ... or the part named after '#'
    init_from.llm = "bundles/qwen_tiny#llm"                 # a model bundle (convert / train export)
    init_from.llm = "runs/audio_llm_tiny#"                  # '#' alone: the source's whole model
    init_from.model = "runs/stage1#"                         # 'model': this run's whole model
    init_from.generator = "bundles/demo#vocoder"             # a bundle's vocoder (vocoder task)

``model`` names this run's whole model (unless the model has a part of that name): an audio-LLM
stage-2 run starts from a stage-1 run with ``init_from.model = "RUN#"``, or from a bundle's
language model with ``init_from.model = "BUNDLE#llm"``.

A training run (a ``train`` workdir) is read from its latest checkpoint (``config.json`` beside
it says which task and model it trained); a model bundle through :func:`bundle.load_bundle`.
The part's parameters and model state (e.g. codebooks, EMA statistics) replace the freshly
initialised ones; structures and shapes must agree (a mismatch is an error naming the path).
Applied only when a run starts: a resumed run restores everything from its own checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from baichuan_audio_jax.conversion.bundle import is_bundle, load_bundle
from baichuan_audio_jax.training.checkpointing import Checkpointer
from baichuan_audio_jax.training.train_state import TrainState
from baichuan_audio_jax.training.train_step import build_program


def _key(tree: Any, name: str):
    for k in tree:
        if str(k) == name:
            return k
    raise KeyError(name)


WHOLE_MODEL = "model"


def _has_key(tree: Any, name: str) -> bool:
    return any(str(k) == name for k in tree)


def subtree(tree: Any, path: str, where: str) -> Any:
    node = tree
    for part in [p for p in path.split("/") if p]:
        try:
            node = node[_key(node, part)]
        except (KeyError, TypeError):
            raise ValueError(f"{where} has no part {path!r} (missing {part!r})") from None
    return node


def optional_subtree(tree: Any, path: str) -> Any:
    """:func:`subtree`, or an empty dict when the part has no variables of this kind (e.g. a model
    part without buffers has no entry in the non-parameter state)."""
    try:
        return subtree(tree, path, "")
    except ValueError:
        return {}


def _replace(tree: Any, path: str, value: Any) -> Any:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return value
    out = dict(tree)
    k = _key(out, parts[0])
    out[k] = _replace(out[k], "/".join(parts[1:]), value)
    return out


def parse_spec(target: str, spec: str) -> tuple[str, str]:
    """(location, source part) of an ``init_from`` value."""
    location, sep, part = str(spec).partition("#")
    return location, (part if sep else target)


def run_state(workdir: str, mesh, step: int | None = None) -> tuple[TrainState, Any]:
    """The checkpointed state of the training run in ``workdir`` (latest step by default) and its
    program."""

    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            src = ml_collections.ConfigDict(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{workdir} is not a training run (cannot read {path}: {e})") from e
    program = build_program(src, mesh, donate=False)
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        if checkpointer.latest_step() is None:
            raise ValueError(f"training run {workdir} has no checkpoint")
        state, _, _ = checkpointer.restore(program.abstract_state, step)
    finally:
        checkpointer.close()
    return state, program


def _source_parts(location: str, part: str, mesh) -> tuple[Any, Any]:
    """(parameters, other model state) of ``part`` of the model at ``location`` as pure dicts."""

    if is_bundle(location):
        names = [p for p in part.split("/") if p]
        if names[:1] == ["vocoder"]:  # the bundle's HiFT vocoder, e.g. init_from.generator = "BUNDLE#vocoder"
            sub, names = load_bundle(location, components=[], vocoder=True).vocoder, names[1:]
        else:
            sub = load_bundle(location, vocoder=False).model
        for name in names:
            if not hasattr(sub, name):
                raise ValueError(f"bundle {location} has no part {part!r} (missing {name!r})")
            sub = getattr(sub, name)
        _, params, rest = nnx.split(sub, nnx.Param, ...)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    if os.path.exists(os.path.join(location, "checkpoints")):
        state, _ = run_state(location, mesh)
        return (subtree(state.params, part, f"training run {location}"),
                optional_subtree(state.model_state, part))
    raise ValueError(f"init_from source {location!r} is neither a model bundle nor a training run "
                     "(a workdir with checkpoints/)")


def _check_same(name: str, got: Any, want: Any) -> None:
    if jax.tree.structure(got) != jax.tree.structure(want):
        raise ValueError(f"init_from.{name}: the source's structure differs from this model's part "
                         f"({len(jax.tree.leaves(got))} vs {len(jax.tree.leaves(want))} arrays)")
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        if tuple(a.shape) != tuple(b.shape):
            where = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            raise ValueError(f"init_from.{name}: {where} has shape {tuple(a.shape)} in the source, "
                             f"{tuple(b.shape)} in this model")


def apply_init_from(config, state: TrainState, state_shardings: TrainState, mesh,
                    log: Callable[[str], None] = print) -> TrainState:
    """``state`` with every ``config.init_from`` part replaced (see the module docstring)."""
    init = config.get("init_from")
    if not init:
        return state
    items = init.to_dict() if isinstance(init, ml_collections.ConfigDict) else dict(init)
    params, model_state = state.params, state.model_state
    for target, spec in items.items():
        if not spec:
            continue
        location, part = parse_spec(target, spec)
        if target == WHOLE_MODEL and not _has_key(params, WHOLE_MODEL):
            target = ""
            part = "" if part == WHOLE_MODEL else part
        src_params, src_rest = _source_parts(location, part, mesh)
        want_params = subtree(params, target, "this model")
        want_rest = optional_subtree(model_state, target)
        _check_same(target, src_params, want_params)
        _check_same(target, src_rest, want_rest)
        put = lambda src, want, sh: jax.tree.map(lambda a, w, s: jax.device_put(jax.numpy.asarray(a, w.dtype), s),
                                                 src, want, sh)
        params = _replace(params, target, put(src_params, want_params,
                                              subtree(state_shardings.params, target, "shardings")))
        if want_rest:
            model_state = _replace(model_state, target, put(src_rest, want_rest,
                                                            subtree(state_shardings.model_state, target, "shardings")))
        log(f"initialised {target or 'the model'} from {location} ({part or 'whole model'})")
    return state.replace(params=params, model_state=model_state)
