"""A model bundle for new pretraining, initialised from Hugging Face checkpoints.

The LLM and LM head come from a Qwen2/Qwen2.5 checkpoint (``Qwen2ForCausalLM`` names, mapping
table ``hf_qwen2``), the audio encoder from a Whisper checkpoint (``WhisperModel``,
``WhisperForConditionalGeneration`` or a bare ``WhisperEncoder``; mapping table ``hf_whisper``);
every parameter no source provides (the audio embeddings and audio head, the VQ bridge and audio
decoder, flow matching) is freshly initialised exactly as the model initialises it. Sources are
registered in :data:`INIT_SOURCES`.

Qwen2 specifics, handled explicitly and reported:

* tied embeddings (the small Qwen2.5 models): with an untied model config the LM head starts as a
  copy of ``model.embed_tokens.weight``; a config that ties them cannot take a separate head;
* vocabulary size: the reference's 152064 may exceed a checkpoint's (151936 for the small
  Qwen2.5 models); the missing rows of the embedding and LM head are filled with the mean of the
  checkpoint's rows (as ``transformers``' ``resize_token_embeddings`` does). A checkpoint with more
  rows than the config is an error;
* the checkpoint's ``config.json`` must describe the same decoder as the model config.

Whisper specifics: the encoder's prefix is detected (``encoder.``, ``model.encoder.`` or none);
the decoder and ``proj_out`` tensors are not used (counted in a note); the checkpoint's
``config.json`` must describe the same encoder as ``model.audio_encoder``, field by field.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx, traverse_util

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.bundle import (
    CHECKPOINT_DIRS,
    checkpoint_model,
    dtype_summary,
    finish_bundle,
    make_info,
)
from baichuan_audio_jax.conversion.components import COMPONENTS, TableRef, components_of
from baichuan_audio_jax.conversion.convert import (
    ConversionError,
    ConversionResult,
    Coverage,
    Progress,
    abstract_state,
    bundle_tokenizer,
    coverage_of,
    flat_abstract,
    plan_leaves,
    write_concrete,
)
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.orbax_io import DEFAULT_MAX_INFLIGHT_BYTES, StreamedArray, StreamTarget, save_tree
from baichuan_audio_jax.conversion.tables import hf_qwen2_table, hf_whisper_table
from baichuan_audio_jax.conversion.tables.hf_whisper import encoder_config_from_hf, whisper_encoder_prefix
from baichuan_audio_jax.conversion.torch_io import ReferenceCheckpoint
from baichuan_audio_jax.staging import staged_directory

VOCAB_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


class Qwen2View:
    """A Qwen2 checkpoint as the model expects it: LM head present, vocabulary padded."""

    def __init__(self, ckpt: ReferenceCheckpoint, cfg: ModelConfig):
        self.ckpt = ckpt
        self.paths = ckpt.paths
        self.directories = ckpt.directories
        self.notes: list[str] = []
        hf = ckpt.config or {}
        where = ckpt.config_path or ", ".join(ckpt.paths)
        if not ckpt.config:
            self.notes.append("no config.json beside the weights: the decoder geometry is checked from shapes only")
        else:
            check_qwen2_config(hf, cfg, where)
        if "model.embed_tokens.weight" not in ckpt:
            raise ConversionError(f"{', '.join(ckpt.paths)}: no model.embed_tokens.weight; is this a Qwen2 checkpoint?")
        self._alias: dict[str, str] = {}
        self._hidden: set[str] = set()
        has_head = "lm_head.weight" in ckpt
        tied = bool(hf.get("tie_word_embeddings", not has_head))
        if cfg.llm.tie_word_embeddings:
            if has_head and not tied:
                raise ConversionError(f"{where}: the checkpoint has a separate lm_head.weight but the config ties the "
                                      "LM head to the embeddings (llm.tie_word_embeddings=True)")
            self._hidden.update({"lm_head.weight"} & set(ckpt.keys()))
        elif not has_head or tied:
            self._alias["lm_head.weight"] = "model.embed_tokens.weight"
            self._hidden.update({"lm_head.weight"} & set(ckpt.keys()))
            self.notes.append("the checkpoint ties its LM head to the embeddings: lm_head starts as a copy of "
                              "model.embed_tokens.weight (untied from here on)")
        rows = ckpt.infos["model.embed_tokens.weight"].shape[0]
        self.vocab = cfg.llm.vocab_size
        if rows > self.vocab:
            raise ConversionError(f"{ckpt.infos['model.embed_tokens.weight'].file}: model.embed_tokens.weight has "
                                  f"{rows} rows but the config's llm.vocab_size is {self.vocab}; set "
                                  f"--config.model.llm.vocab_size={rows} or larger")
        self.pad = self.vocab - rows
        if self.pad:
            self.notes.append(f"vocabulary padded from {rows} to {self.vocab} rows (embedding and LM head); the new "
                              "rows are the mean of the checkpoint's rows")

    def listing(self) -> dict[str, tuple]:
        out = {}
        for k, (shape, dt) in self.ckpt.listing().items():
            if k not in self._hidden:
                out[k] = (shape, dt)
        for k, src in self._alias.items():
            out[k] = self.ckpt.listing()[src]
        for k in VOCAB_KEYS:
            if k in out and self.pad:
                shape, dt = out[k]
                out[k] = ((shape[0] + self.pad, *shape[1:]), dt)
        return out

    def get(self, name: str) -> np.ndarray:
        t = self.ckpt.get(self._alias.get(name, name))
        if name in VOCAB_KEYS and self.pad:
            mean = t.astype(np.float32).mean(axis=0, keepdims=True).astype(t.dtype)
            t = np.concatenate([t, np.repeat(mean, self.pad, axis=0)], axis=0)
        return t


def check_qwen2_config(hf: Mapping[str, Any], cfg: ModelConfig, where: str) -> None:
    if hf.get("model_type") not in (None, "qwen2"):
        raise ConversionError(f"{where}: model_type {hf.get('model_type')!r}; expected a Qwen2/Qwen2.5 checkpoint "
                              "(model_type 'qwen2')")
    c = cfg.llm
    ours = {"hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads, "intermediate_size": c.intermediate_size,
            "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_norm_eps}
    if "head_dim" in hf and hf["head_dim"] is not None:
        ours["head_dim"] = c.head_dim
    bad = [f"{k}: checkpoint {hf[k]}, config {v}" for k, v in ours.items()
           if k in hf and hf[k] is not None and not math.isclose(float(hf[k]), float(v), rel_tol=1e-9)]
    if hf.get("hidden_act", "silu") != "silu":
        bad.append(f"hidden_act: checkpoint {hf['hidden_act']}, the model uses silu")
    if bad:
        raise ConversionError(f"{where} describes a different decoder than the config: " + "; ".join(bad))


# Tensors of a Hugging Face Whisper checkpoint outside the encoder: the text decoder and the output
# projection (tied to the decoder's embedding), under each model class's prefix.
WHISPER_UNUSED_PREFIXES = ("decoder.", "model.decoder.", "proj_out.")
WHISPER_TABLE_PREFIX = "encoder."  # the names the hf_whisper table is built with


class WhisperView:
    """A Whisper checkpoint as the ``hf_whisper`` table expects it: the encoder's tensors under
    ``encoder.`` whatever the model class, the decoder and ``proj_out`` left out (and counted)."""

    def __init__(self, ckpt: ReferenceCheckpoint, cfg: ModelConfig):
        self.ckpt = ckpt
        self.paths = ckpt.paths
        self.directories = ckpt.directories
        self.notes: list[str] = []
        where = ckpt.config_path or ", ".join(ckpt.paths)
        try:
            self.prefix = whisper_encoder_prefix(ckpt.keys())
        except KeyError as e:
            raise ConversionError(f"{', '.join(ckpt.paths)}: {e.args[0]}; is this a Whisper checkpoint?") from e
        if ckpt.config:
            check_whisper_config(ckpt.config, cfg, where)
        else:
            self.notes.append("no config.json beside the Whisper weights: the encoder geometry is checked from "
                              "shapes only")
        self._names: dict[str, str] = {}
        ignored = []
        for k in ckpt.keys():
            if self.prefix and k.startswith(self.prefix):
                self._names[WHISPER_TABLE_PREFIX + k[len(self.prefix):]] = k
            elif not self.prefix and not k.startswith(WHISPER_UNUSED_PREFIXES):
                self._names[WHISPER_TABLE_PREFIX + k] = k
            elif k.startswith(WHISPER_UNUSED_PREFIXES):
                ignored.append(k)
            else:
                self._names[k] = k  # neither encoder nor decoder: reported as unknown by the coverage check
        if ignored:
            self.notes.append(f"Whisper decoder and output projection not used ({len(ignored)} tensors)")

    def listing(self) -> dict[str, tuple]:
        info = self.ckpt.listing()
        return {name: info[k] for name, k in self._names.items()}

    def get(self, name: str) -> np.ndarray:
        return self.ckpt.get(self._names[name])


def check_whisper_config(hf: Mapping[str, Any], cfg: ModelConfig, where: str) -> None:
    """A HF ``WhisperConfig`` (as a dict) must describe the model's audio encoder, field by field."""
    if hf.get("model_type") not in (None, "whisper"):
        raise ConversionError(f"{where}: model_type {hf.get('model_type')!r}; expected a Whisper checkpoint "
                              "(model_type 'whisper')")
    try:
        theirs = encoder_config_from_hf(hf)
    except KeyError as e:
        raise ConversionError(f"{where}: no {e.args[0]!r} in the Whisper config") from e
    except ValueError as e:
        raise ConversionError(f"{where}: {e}") from e
    enc = cfg.audio_encoder
    bad = [f"{k}: checkpoint {v}, config audio_encoder.{k} {getattr(enc, k)}" for k, v in theirs.items()
           if v != getattr(enc, k)]
    if not math.isclose(enc.layer_norm_eps, 1e-5, rel_tol=1e-9):
        bad.append(f"layer_norm_eps: Whisper uses 1e-05, config audio_encoder.layer_norm_eps {enc.layer_norm_eps}")
    if bad:
        raise ConversionError(f"{where} describes a different encoder than the config: " + "; ".join(bad))


@dataclasses.dataclass(frozen=True)
class InitSource:
    """A Hugging Face checkpoint family that initialises (part of) a registered component.

    ``view``: wraps the checkpoint to present what the table expects (e.g. :class:`Qwen2View`,
    :class:`WhisperView`: aliases, padding, tensors the model does not take left out with a note).
    """

    name: str
    component: str
    table: TableRef
    view: Callable[[ReferenceCheckpoint, ModelConfig], Any] | None = None


INIT_SOURCES: dict[str, InitSource] = {
    "qwen2": InitSource("qwen2", "llm", TableRef(hf_qwen2_table), view=Qwen2View),
    "whisper": InitSource("whisper", "audio_tokenizer", TableRef(hf_whisper_table), view=WhisperView),
}


def fresh_values(cfg: ModelConfig, seed: int, paths: Sequence[tuple]) -> dict[tuple, np.ndarray]:
    """Parameters exactly as a full initialisation with ``seed`` gives them; only their
    initialisers are compiled (the others are dead code), once per config and set of paths."""
    paths = tuple(paths)
    values = _fresh_program(cfg, paths)(jax.random.key(seed))
    return {p: np.asarray(v) for p, v in zip(paths, values)}


@functools.lru_cache(maxsize=16)
def _fresh_program(cfg: ModelConfig, paths: tuple) -> Callable:
    def init(key):
        model = checkpoint_model("model", cfg, nnx.Rngs(key))
        flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model))}
        return [flat[p].get_value() for p in paths]

    return jax.jit(init)


def group_by_bytes(items: Sequence[tuple], sizes: Sequence[int], budget: int) -> list[list]:
    """Consecutive groups of at most ``budget`` bytes (a larger item forms a group of its own)."""
    groups, total = [[]], 0
    for item, n in zip(items, sizes):
        if groups[-1] and total + n > budget:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += n
    return [g for g in groups if g]


def init_from_hf(sources: Mapping[str, str | os.PathLike], output: str, model_config, *, seed: int = 0,
                 dtype: Any = None, tokenizer: str | None = None, overwrite: bool = False, progress: bool = False,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES) -> ConversionResult:
    """Builds a full-model bundle from Hugging Face checkpoints (``{"qwen2": DIR, "whisper": DIR}``).

    Parameters the sources provide keep their checkpoint dtype (or ``dtype``); fresh ones get the
    config's ``param_dtype`` (or ``dtype``). Text tokenizer files are taken from ``tokenizer`` or
    from the Qwen2 source directory, if it has them.
    """
    cfg = ModelConfig.from_config(model_config)
    unknown = [n for n in sources if n not in INIT_SOURCES]
    if unknown:
        raise ConversionError(f"unknown initialisation source(s) {unknown}; known: {sorted(INIT_SOURCES)}")
    _, state = abstract_state("model", cfg)
    flat = flat_abstract(state)
    shapes = {p: tuple(v.shape) for p, v in flat.items()}
    plans, leaves, notes = [], {}, []
    for name, path in sources.items():
        spec = INIT_SOURCES[name]
        comp = COMPONENTS[spec.component]
        ckpt = ReferenceCheckpoint(path)
        view = spec.view(ckpt, cfg) if spec.view is not None else ckpt
        notes += getattr(view, "notes", [])
        listing = view.listing()
        keys = list(listing)
        concrete = combine_tables(spec.table.fn(cfg, tuple(comp.model_path) + tuple(spec.table.sub_path)))
        cov = Coverage(f"{name} initialisation", ", ".join(ckpt.paths), len(keys))
        coverage_of(cov, name, concrete, shapes, listing, keys)
        if cov.has_problems:
            raise ConversionError("\n".join([f"the {name} checkpoint does not match the config:"] + cov.lines()))
        these, _ = plan_leaves(flat, concrete, lambda k, listing=listing: listing[k][1], dtype)
        overlap = set(these) & set(leaves)
        if overlap:
            raise ConversionError(f"{name}: parameters {sorted(map(str, overlap))[:4]} are initialised twice")
        leaves.update(these)
        plans.append((view, concrete))
    fresh = [p for p in flat if p not in leaves]
    fresh_dtype = np.dtype(dtype) if dtype is not None else None
    for p in fresh:
        leaves[p] = StreamedArray(p, tuple(flat[p].shape), fresh_dtype or np.dtype(flat[p].dtype))
    if fresh:
        tops = sorted({"/".join(map(str, p[:2])) for p in fresh})
        notes.append(f"freshly initialised (seed {seed}): {', '.join(tops)}")
    total = sum(leaf.nbytes for leaf in leaves.values())
    count = sum(len(c) for _, c in plans) + len(fresh)
    output = os.path.abspath(output)
    with staged_directory(output, overwrite=overwrite) as staging:
        prog = Progress("initialise bundle", total, count, progress)

        async def produce(target: StreamTarget) -> None:
            for view, concrete in plans:
                for c in concrete:
                    t = view.get(c.torch)
                    await write_concrete(target, c, t)
                    prog.update(t.nbytes)
                    del t
            for group in group_by_bytes(fresh, [leaves[p].nbytes for p in fresh], max_inflight_bytes):
                for p, a in fresh_values(cfg, seed, group).items():
                    await target.write(p, a)
                    prog.update(a.nbytes)
                del a

        try:
            save_tree(os.path.join(staging, CHECKPOINT_DIRS["model"]), traverse_util.unflatten_dict(leaves),
                      produce, max_inflight_bytes=max_inflight_bytes)
        finally:
            seconds = prog.close()
        # Text tokenizer files only from the text model's source (a Whisper directory may hold
        # Whisper's own tokenizer, which is not the LLM's).
        text_dirs = [d for name, (v, _) in zip(sources, plans) if INIT_SOURCES[name].component == "llm"
                     for d in v.directories]
        tok = bundle_tokenizer(staging, tokenizer, text_dirs)
        info = make_info(
            components=[c.name for c in components_of("model")],
            checkpoints={"model": {"directory": CHECKPOINT_DIRS["model"],
                                   "dtypes": dtype_summary(leaf.dtype for leaf in leaves.values())}},
            tokenizer=tok,
            source="init: " + ", ".join(f"{n} from {os.path.basename(os.path.normpath(str(p)))}"
                                        for n, p in sources.items()) + (f"; fresh (seed {seed})" if fresh else ""))
        finish_bundle(staging, model_config, info)
    return ConversionResult(output, count, total, seconds, notes)

