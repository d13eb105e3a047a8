"""What the engine trains: a small *task* interface, and the audio-LLM task.

The engine (mesh, optimizer, train step, checkpoints, metrics, loop) is generic; a task tells it

* ``prefix``: the name under which the model's parameter paths appear in labels and reports
  (``llm/audio_head/...``);
* ``make_model(model_cfg, rngs, **model_options(config))``: builds the ``nnx.Module`` (its
  ``nnx.Param`` variables are trained, every other variable is *model state*, checkpointed but
  outside the gradient); ``model_options`` (optional) reads training-only structure from the run
  config (e.g. the vocoder's discriminators);
* ``batch_fields``: field -> (dtype, trailing shape) of a ``[B, S, ...]`` batch; or, for batches
  whose fields have lengths of their own (audio frames, mel frames, transcript tokens),
  ``row_shapes(config)``: field -> (dtype, per-row shape), see :meth:`Task.fields`;
* ``denominators(batch, model_cfg)``: loss normalisers computed over the whole global batch;
* ``loss(model, microbatch, denominators, rng, train_cfg, step) -> (loss, sums)``: a scalar to
  differentiate and per-microbatch outputs: scalar metrics, and any arrays ``update_state``
  needs (e.g. per-code assignment counts). Microbatch outputs are combined by ``merge_sums``
  (default: addition); only scalars are reported as metrics;
* ``trainable(stage)``: a :class:`Trainable` rule over parameter paths;
* ``update_state(model_state, params, batch, sums, rng, step, train_cfg) -> (model_state,
  metrics)`` (optional): a non-gradient update applied after each optimizer step from the
  forward's outputs, e.g. the EMA codebooks of the audio tokenizer's RVQ; it may add metrics;
* ``flops_per_step(model_cfg, batch_size, seq_len, train_cfg)``: model FLOPs of one optimizer
  step (forward + backward), for model FLOPs utilisation;
* ``tokens(batch)``: tokens (or frames) the step trains on (numpy, host side), for tokens/s;
* ``validate(batch, model_cfg)`` (optional): raises ValueError naming the field when a host
  batch holds values the model cannot take (token ids, codes out of range).
* ``make_optimizer(train_cfg, labels, total_steps) -> (optax transformation, schedule)``
  (optional): the task's own optimizer over the ``train``/``frozen``-labelled parameters, e.g. one
  AdamW per part (the vocoder's generator and discriminators); default
  :func:`baichuan_audio_jax.training.optimizer.make_optimizer`.

The audio tokenizer (``training/tokenizer_task.py``), the flow-matching decoder
(``training/flow_task.py``), the encoder's ASR pretraining (``training/encoder_asr_task.py``) and
the HiFT vocoder (``training/vocoder_task.py``) are tasks of this interface; register a task with
:func:`register`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from typing import Any, Callable, Mapping

import jax
import numpy as np

from baichuan_audio_jax import batch as batch_layout
from baichuan_audio_jax.models.audio_llm import AudioLLM, Dropout
from baichuan_audio_jax.training.losses import audio_llm_loss, loss_denominators


@dataclasses.dataclass(frozen=True)
class Trainable:
    """Which parameters a stage trains: ``only`` these path patterns, or all ``except`` these.

    Patterns are ``fnmatch`` globs over ``<prefix>/<parameter path>`` (e.g. ``llm/audio_head/*``).
    """

    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    description: str = "all parameters"

    def __call__(self, path: str) -> bool:
        match = lambda pats: any(fnmatch.fnmatchcase(path, p) for p in pats)
        if self.only is not None and not match(self.only):
            return False
        return not match(self.exclude)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    prefix: str
    make_model: Callable[..., Any]
    batch_fields: Mapping[str, tuple[type, tuple[int, ...]]]
    denominators: Callable[[Mapping[str, Any]], dict]
    loss: Callable[..., tuple[Any, dict]]
    stages: Mapping[int, Trainable]
    flops_per_step: Callable[..., float]
    tokens: Callable[[Mapping[str, np.ndarray]], int]
    update_state: Callable[..., Any] | None = None
    validate: Callable[..., None] | None = None
    row_shapes: Callable[[Any], Mapping[str, tuple[type, tuple[int, ...]]]] | None = None
    merge_sums: Callable[[dict, dict], dict] | None = None
    make_optimizer: Callable[..., Any] | None = None
    model_options: Callable[[Any], dict] | None = None

    def fields(self, config) -> dict[str, tuple[type, tuple[int, ...]]]:
        """field -> (dtype, per-row shape) of this task's batches under ``config`` (``row_shapes``
        if the task has it, else ``(data.seq_len, *trailing shape)`` of every ``batch_fields``)."""
        if self.row_shapes is not None:
            return {k: (dtype, tuple(int(n) for n in shape)) for k, (dtype, shape) in self.row_shapes(config).items()}
        seq_len = int(config.data.seq_len)
        return {k: (dtype, (seq_len, *suffix)) for k, (dtype, suffix) in self.batch_fields.items()}

    def trainable(self, stage: int | str) -> Trainable:
        s = parse_stage(stage)
        if s not in self.stages:
            raise ValueError(f"task {self.name!r} has no stage {stage!r}; stages: {sorted(self.stages)}")
        return self.stages[s]


def parse_stage(stage: int | str) -> int:
    """``0``/``"all"`` (everything), ``1``, ``2``."""
    if isinstance(stage, str):
        if stage.strip().lower() in ("all", "full"):
            return 0
        try:
            return int(stage)
        except ValueError:
            raise ValueError(f"stage must be 0/'all', 1 or 2, got {stage!r}") from None
    return int(stage)


_TASKS: dict[str, Task] = {}
# Tasks defined in their own modules, imported (and so registered) on first use.
_LAZY_TASKS = {"audio_tokenizer": "baichuan_audio_jax.training.tokenizer_task",
               "flow_matching": "baichuan_audio_jax.training.flow_task",
               "encoder_asr": "baichuan_audio_jax.training.encoder_asr_task",
               "vocoder": "baichuan_audio_jax.training.vocoder_task"}


def register(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in _TASKS and name in _LAZY_TASKS:

        importlib.import_module(_LAZY_TASKS[name])
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(set(_TASKS) | set(_LAZY_TASKS))}")
    return _TASKS[name]


# --------------------------------------------------------------------------------------------
# The audio LLM (Qwen2.5-style decoder + audio embeddings + audio head).
# --------------------------------------------------------------------------------------------

def _make_audio_llm(model_cfg, rngs):
    return AudioLLM(model_cfg, rngs=rngs)


def _audio_llm_loss(model, batch, denominators, rng, train_cfg, step=None):
    del step  # the audio LLM trains without schedules

    rate = lambda key: float(train_cfg.get(key, 0.0) or 0.0)
    drop = Dropout(rng, embed=rate("embed_dropout"), residual=rate("residual_dropout"), mlp=rate("mlp_dropout"))
    return audio_llm_loss(model, batch, denominators,
                          audio_loss_weight=float(train_cfg.audio_loss_weight),
                          max_audio_positions=int(train_cfg.max_audio_positions),
                          loss_chunk_size=int(train_cfg.loss_chunk_size),
                          dropout=drop if drop.active else None)


def _audio_llm_denominators(batch, model_cfg=None):
    return loss_denominators(batch)


def audio_llm_flops_per_step(model_cfg, batch_size: int, seq_len: int, train_cfg=None) -> float:
    """Model FLOPs of one training step (forward + backward = 3 × forward, no remat recompute).

    Per token: 2 FLOPs per weight of every matmul of the decoder and LM head (embedding lookups
    are free) plus causal attention scores and values (2·2·S·heads·head_dim per layer, half of
    it masked: counted once). Per audio-head position (``max_audio_positions`` per row, the
    positions the step evaluates): each of the 8 depth positions runs every head layer's
    projections and its own FFN slice, and classifier k.
    """
    c = model_cfg.llm
    h, nh, kv, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    per_layer = h * nh * d + 2 * h * kv * d + nh * d * h + 3 * h * c.intermediate_size
    dense = c.num_layers * per_layer + h * c.vocab_size
    attn = c.num_layers * 2 * seq_len * nh * d
    token_fwd = 2 * dense + attn
    hc = model_cfg.audio_head
    codebooks = len(model_cfg.codebook_sizes)
    head_layer = codebooks * (4 * h * h + 2 * (h * 2 * h))
    head = hc.num_layers * head_layer + h * sum(s + 1 for s in model_cfg.codebook_sizes)
    audio_positions = int(getattr(train_cfg, "max_audio_positions", 0) or seq_len) if train_cfg else seq_len
    audio_positions = min(audio_positions, seq_len)
    fwd = batch_size * (seq_len * token_fwd + audio_positions * 2 * head)
    return 3.0 * fwd


def _audio_llm_validate(batch, model_cfg) -> None:
    batch_layout.validate_batch(batch, vocab_size=model_cfg.llm.vocab_size, codebook_sizes=model_cfg.codebook_sizes)


def _audio_llm_tokens(batch) -> int:
    return int(np.count_nonzero(batch["segment_ids"]))


AUDIO_LLM = register(Task(
    name="audio_llm",
    prefix="llm",
    make_model=_make_audio_llm,
    batch_fields=batch_layout.FIELDS,
    denominators=_audio_llm_denominators,
    loss=_audio_llm_loss,
    stages={
        0: Trainable(description="all parameters"),
        # Paper §3.3, stage 1: the LLM stays fixed; audio embeddings and the audio head learn.
        1: Trainable(only=("llm/audio_embed/*", "llm/audio_head/*"),
                     description="audio embeddings + audio head only"),
        # Stage 2: everything except the text embedding and the LM head.
        2: Trainable(exclude=("llm/embed_tokens/*", "llm/lm_head/*"),
                     description="all but the text embedding and LM head"),
    },
    flops_per_step=audio_llm_flops_per_step,
    tokens=_audio_llm_tokens,
    validate=_audio_llm_validate,
))


def parameter_paths(tree: Any, prefix: str) -> list[str]:
    """``prefix/a/b/c`` for every leaf of a nested-dict parameter tree (flatten order)."""

    return [f"{prefix}/" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def path_tree(tree: Any, prefix: str) -> Any:
    """A tree like ``tree`` whose leaves are their ``prefix/...`` paths."""

    return jax.tree.unflatten(jax.tree.structure(tree), parameter_paths(tree, prefix))


def check_batch_fields(task: Task, batch: Mapping[str, np.ndarray], rows: int, seq_len: int,
                       where: str = "batch", model_cfg=None,
                       fields: Mapping[str, tuple[type, tuple[int, ...]]] | None = None) -> None:
    """Raises ValueError naming the field when a host batch does not match the task's layout
    (and, given ``model_cfg``, the task's value checks). ``fields`` (from :meth:`Task.fields`)
    gives per-row shapes; without it every field is ``[rows, seq_len, *trailing]``."""
    if fields is None:
        fields = {k: (dtype, (seq_len, *suffix)) for k, (dtype, suffix) in task.batch_fields.items()}
    missing = [k for k in fields if k not in batch]
    if missing:
        raise ValueError(f"{where} lacks field(s) {missing} required by task {task.name!r}")
    for k, (dtype, shape) in fields.items():
        want = (rows, *shape)
        got = tuple(np.shape(batch[k]))
        if got != want:
            raise ValueError(f"{where} field {k!r}: shape {got}, expected {want}")
        if np.asarray(batch[k]).dtype != np.dtype(dtype):
            raise ValueError(f"{where} field {k!r}: dtype {np.asarray(batch[k]).dtype}, expected {np.dtype(dtype)}")
    if model_cfg is not None and task.validate is not None:
        try:
            task.validate(batch, model_cfg)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
