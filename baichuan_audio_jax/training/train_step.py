"""The compiled training program: state initialisation and the sharded train step.

:func:`build_program` derives everything from the config and a mesh:

* the model's graph definition and abstract state (``nnx.eval_shape``: nothing is allocated);
* parameter / model-state / optimizer-state shardings from the logical-axis rules, batch
  shardings over (data, fsdp);
* ``init()``: the train state created directly in its shardings (one XLA program);
* ``step(state, batch) -> (state, metrics)``: a pure function of the state pytree under
  ``jax.jit`` with in/out shardings and the state donated (this is pjit).

Mixed precision: parameters are stored in ``model.param_dtype`` (float32 master weights) and
cast to ``model.dtype`` (e.g. bfloat16) inside each layer; gradients, optimizer moments and
updates stay in the parameter dtype. Rematerialisation follows ``model.remat_policy``.

Only trainable leaves are differentiated: the loss is a function of the trainable leaves with the
frozen ones passed as constants, so a stage that freezes the LM head or the LLM computes no
weight gradient for them (no buffer, no collective); the optimizer sees zeros there, which it
discards.

Gradient accumulation (``train.grad_accum_steps`` = A): the global batch is split into A
microbatches — microbatch j takes rows j, j+A, j+2A, …, so every device holds an equal share of
each — and a ``lax.scan`` sums their gradients before one optimizer update. Loss normalisers
are computed over the whole global batch first, so the result equals the unsplit step. The
loss's other outputs are combined by the task's ``merge_sums`` (default: summed).

After the optimizer update, a task's ``update_state`` (if any) updates the non-gradient model
state from those outputs (e.g. EMA codebooks) with its own key, ``fold_in(step key, 1 << 30)``.
Metrics are the scalar outputs plus whatever ``update_state`` reports, and ``nonfinite`` (1.0
when the loss or the trainable gradient norm is not finite). Under ``train.nonfinite = "skip"``
such a step leaves parameters, model state and optimizer state unchanged (a ``jnp.where`` on the
new state inside the program; the step counter still advances past the batch). What the trainer
does about it: ``training/divergence.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.sharding import constrain
from baichuan_audio_jax.training import mesh as mesh_lib
from baichuan_audio_jax.training.optimizer import (
    TRAIN,
    apply_updates,
    make_optimizer,
    trainable_labels,
    trainable_norm,
    trainable_report,
)
from baichuan_audio_jax.training.tasks import Task, get_task, parse_stage
from baichuan_audio_jax.training.train_state import TrainState


@dataclasses.dataclass
class TrainProgram:
    config: Any
    task: Task
    model_cfg: ModelConfig
    mesh: Mesh
    graphdef: Any
    labels: Any
    tx: Any
    schedule: Callable
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
    state_shardings: TrainState
    batch_shardings: dict
    init: Callable[[], TrainState]
    step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    flops_per_step: float
    trainable_description: str
    fields: dict  # field -> (dtype, per-row shape)

    @property
    def rows(self) -> int:
        return int(self.config.data.batch_size)

    @property
    def seq_len(self) -> int:
        return int(self.config.data.seq_len)

    def report(self) -> str:
        return trainable_report(self.abstract_state.params, self.labels, self.task.prefix,
                                self.trainable_description)

    def abstract_batch(self) -> dict:
        """ShapeDtypeStructs of a global batch with its shardings (for AOT lowering)."""
        return {k: jax.ShapeDtypeStruct((self.rows, *shape), jnp.dtype(dtype), sharding=self.batch_shardings[k])
                for k, (dtype, shape) in self.fields.items()}


class InMesh:
    """A jitted function traced, lowered and run with ``mesh`` as the current mesh, so the
    models' logical sharding constraints (:func:`baichuan_audio_jax.sharding.constrain`) apply."""

    def __init__(self, fn, mesh: Mesh):
        self.fn, self.mesh = fn, mesh

    def __call__(self, *args):
        with jax.set_mesh(self.mesh):
            return self.fn(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self.fn.lower(*args)


def _split_model(model: nnx.Module) -> tuple[Any, dict, dict]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def build_program(config, mesh: Mesh, task: Task | None = None, *, donate: bool = True) -> TrainProgram:
    """The program of ``config`` on ``mesh``. Call it outside a mesh context (the abstract model
    is built from logical names, which a mesh context would try to resolve)."""
    task = task or get_task(str(config.task))
    model_cfg = ModelConfig.from_config(config.model)
    train_cfg = config.train
    seed = int(config.seed)
    rows, seq_len = int(config.data.batch_size), int(config.data.seq_len)
    accum = int(train_cfg.grad_accum_steps)
    if accum < 1 or rows % accum:
        raise ValueError(f"train.grad_accum_steps={accum} must be >= 1 and divide data.batch_size={rows}")

    options = task.model_options(config) if task.model_options is not None else {}
    make = lambda: task.make_model(model_cfg, nnx.Rngs(seed), **options)
    graphdef, abs_params, abs_rest = _split_model(nnx.eval_shape(make))
    param_sh = mesh_lib.variable_shardings(abs_params, mesh)
    rest_sh = mesh_lib.variable_shardings(abs_rest, mesh)
    abs_params_dict = nnx.to_pure_dict(abs_params)
    rule = task.trainable(config.stage)
    labels = trainable_labels(abs_params_dict, rule, task.prefix)
    tx, schedule = (task.make_optimizer or make_optimizer)(train_cfg, labels, int(config.steps))

    def init() -> TrainState:
        _, params, rest = _split_model(make())
        params = nnx.to_pure_dict(params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=nnx.to_pure_dict(rest),
                          opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))

    abstract = jax.eval_shape(init)
    rep = mesh_lib.replicated(mesh)
    opt_sh = mesh_lib.optimizer_shardings(abstract.opt_state, abstract.params, param_sh, mesh)
    state_sh = TrainState(step=rep, params=param_sh, model_state=rest_sh, opt_state=opt_sh, rng=rep)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    fields = task.fields(config)
    batch_sh = {k: mesh_lib.batch_sharding(mesh, (rows, *shape)) for k, (_, shape) in fields.items()}
    merge = task.merge_sums or (lambda a, b: jax.tree.map(jnp.add, a, b))
    skip_nonfinite = str(train_cfg.get("nonfinite", "stop")) == "skip"

    params_def = jax.tree.structure(abs_params_dict)
    is_train = [lab == TRAIN for lab in jax.tree.leaves(labels)]

    def partition(params) -> tuple[list, list]:
        leaves = jax.tree.leaves(params)
        return ([x for x, t in zip(leaves, is_train) if t], [x for x, t in zip(leaves, is_train) if not t])

    def join(train_leaves, frozen_leaves):
        it_train, it_frozen = iter(train_leaves), iter(frozen_leaves)
        return jax.tree.unflatten(params_def, [next(it_train) if t else next(it_frozen) for t in is_train])

    def loss_of(train_leaves, frozen_leaves, model_state, microbatch, denominators, rng, step):
        model = nnx.merge(graphdef, join(train_leaves, frozen_leaves), model_state)
        return task.loss(model, microbatch, denominators, rng, train_cfg, step)

    grad_of_trainable = jax.value_and_grad(loss_of, has_aux=True)

    def grad_fn(params, model_state, microbatch, denominators, rng, step):
        """((loss, sums), grads of the trainable leaves, as a list)."""
        train_leaves, frozen_leaves = partition(params)
        return grad_of_trainable(train_leaves, frozen_leaves, model_state, microbatch, denominators, rng, step)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with jax.named_scope("forward_backward"):
            loss, sums, grads = forward_backward(state, batch)
        with jax.named_scope("optimizer"):
            grad_norm = trainable_norm(grads, labels)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = apply_updates(state.params, updates, labels)
        model_state, state_metrics = state.model_state, {}
        if task.update_state is not None:
            model_state, state_metrics = task.update_state(model_state, params, batch, sums,
                                                           jax.random.fold_in(state.step_key(), 1 << 30), state.step,
                                                           train_cfg)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:  # train.nonfinite=skip: a non-finite step leaves the whole state as it was
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            params, model_state, opt_state = (keep(params, state.params), keep(model_state, state.model_state),
                                              keep(opt_state, state.opt_state))
        new = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
        scalars = {k: v for k, v in sums.items() if jnp.ndim(v) == 0}
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step), **scalars,
                   **state_metrics, "nonfinite": 1.0 - finite.astype(jnp.float32)}
        return new, metrics

    def forward_backward(state: TrainState, batch: dict):
        """(loss, sums, grads) of the global batch, accumulated over microbatches."""
        denominators = task.denominators(batch, model_cfg)
        rng = state.step_key()
        if accum == 1:
            (loss, sums), grads = grad_fn(state.params, state.model_state, batch, denominators, rng, state.step)
        else:
            def split(x):  # [B, ...] -> [A, B/A, ...], microbatch j = rows j, j+A, ...
                return jnp.swapaxes(x.reshape(rows // accum, accum, *x.shape[1:]), 0, 1)
            micro = jax.tree.map(split, batch)

            def body(carry, xs):
                j, mb = xs
                mb = {k: constrain(v, mesh_lib.BATCH_AXES[:v.ndim] + (None,) * (v.ndim - 2)) for k, v in mb.items()}
                (mb_loss, mb_sums), g = grad_fn(state.params, state.model_state, mb, denominators,
                                                jax.random.fold_in(rng, j), state.step)
                c_loss, c_sums, c_g = carry
                first = j == 0  # the first microbatch's outputs replace the zero carry (merge may not add)
                merged = jax.tree.map(lambda new, m: jnp.where(first, new, m), mb_sums, merge(c_sums, mb_sums))
                return (c_loss + mb_loss, merged, jax.tree.map(jnp.add, c_g, g)), None

            zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                jax.eval_shape(grad_fn, state.params, state.model_state,
                                               jax.tree.map(lambda x: x[0], micro), denominators, rng, state.step))
            (loss, sums, grads), _ = jax.lax.scan(body, (zero[0][0], zero[0][1], zero[1]),
                                                  (jnp.arange(accum), micro))
        frozen_zeros = [jnp.zeros(x.shape, x.dtype) for x in partition(state.params)[1]]
        return loss, sums, join(grads, frozen_zeros)

    init_jit = InMesh(jax.jit(init, out_shardings=state_sh), mesh)
    step_jit = InMesh(jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep),
                              donate_argnums=(0,) if donate else ()), mesh)
    return TrainProgram(
        config=config, task=task, model_cfg=model_cfg, mesh=mesh, graphdef=graphdef, labels=labels, tx=tx,
        schedule=schedule, abstract_state=abstract, state_shardings=state_sh, batch_shardings=batch_sh,
        init=init_jit, step=step_jit,
        flops_per_step=float(task.flops_per_step(model_cfg, rows, seq_len, train_cfg)),
        trainable_description=f"stage {parse_stage(config.stage)}: {rule.description}", fields=fields)
