"""AdamW with warmup + cosine decay, global-norm clipping and stage-wise freezing.

Freezing (paper §3.3 two-stage pretraining) uses ``optax.multi_transform`` with labels from
parameter paths: ``train`` leaves get clipping + AdamW, ``frozen`` leaves get
``optax.set_to_zero()``, which allocates no optimizer state for them. :func:`apply_updates`
then returns frozen leaves untouched (not ``p + 0``), so they stay bit-identical and their
donated buffers are simply passed through. The clipping norm, like the reported gradient norm,
is that of the trainable leaves.

Gradient accumulation is an explicit microbatch loop inside the train step (see
``train_step.py``), not ``optax.MultiSteps``: every optimizer step consumes exactly one global
batch and advances the step counter by one, so a checkpoint never holds a half-accumulated
gradient, resume is exact at any step, and no accumulator buffer the size of the parameters
lives in the optimizer state.

Weight decay applies to matrices and embedding tables, not to biases or norm scales.
"""
from __future__ import annotations

from typing import Any

import jax
import optax

from baichuan_audio_jax.training.tasks import Trainable, path_tree

TRAIN, FROZEN = "train", "frozen"
_NO_DECAY_NAMES = ("bias", "scale")


def learning_rate_schedule(train_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then cosine decay to
    ``min_learning_rate`` at ``decay_steps`` (0: the run's total steps)."""
    decay = int(train_cfg.decay_steps) or int(total_steps)
    warmup = int(train_cfg.warmup_steps)
    peak = float(train_cfg.learning_rate)
    if decay <= warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
                                    [max(warmup, 1)])
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay, float(train_cfg.min_learning_rate))


def trainable_labels(params: Any, rule: Trainable, prefix: str) -> Any:
    """A tree like ``params`` with ``"train"``/``"frozen"`` leaves."""
    return jax.tree.map(lambda path: TRAIN if rule(path) else FROZEN, path_tree(params, prefix))


def _decay_mask(params: Any) -> Any:
    paths = path_tree(params, "")
    return jax.tree.map(lambda p: p.rsplit("/", 1)[-1] not in _NO_DECAY_NAMES, paths)


def make_optimizer(train_cfg, labels: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, learning-rate schedule) for the labelled parameter tree."""
    schedule = learning_rate_schedule(train_cfg, total_steps)
    parts = []
    if float(train_cfg.max_grad_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(train_cfg.max_grad_norm)))
    parts.append(optax.adamw(schedule, b1=float(train_cfg.b1), b2=float(train_cfg.b2), eps=float(train_cfg.eps),
                             weight_decay=float(train_cfg.weight_decay), mask=_decay_mask))
    tx = optax.multi_transform({TRAIN: optax.chain(*parts), FROZEN: optax.set_to_zero()}, labels)
    return tx, schedule


def apply_updates(params: Any, updates: Any, labels: Any) -> Any:
    """``p + u`` for trainable leaves (in the parameter's dtype); frozen leaves returned as is."""
    return jax.tree.map(lambda p, u, lab: p if lab == FROZEN else (p + u).astype(p.dtype), params, updates, labels)


def trainable_norm(tree: Any, labels: Any) -> jax.Array:
    """Global L2 norm over the trainable leaves."""
    leaves = [x for x, lab in zip(jax.tree.leaves(tree), jax.tree.leaves(labels)) if lab == TRAIN]
    return optax.tree.norm(leaves)


def trainable_report(params: Any, labels: Any, prefix: str, description: str) -> str:
    """A table of parameter groups (first two path levels) with trainable / frozen counts."""
    groups: dict[str, list[int]] = {}
    for path, x, lab in zip(jax.tree.leaves(path_tree(params, prefix)), jax.tree.leaves(params),
                            jax.tree.leaves(labels)):
        parts = path.split("/")
        key = "/".join(parts[:2])
        g = groups.setdefault(key, [0, 0])
        g[0 if lab == TRAIN else 1] += int(x.size)
    total_train = sum(g[0] for g in groups.values())
    total = sum(g[0] + g[1] for g in groups.values())
    width = max(len(k) for k in groups)
    lines = [f"trainable parameters ({description}):",
             f"  {'group':<{width}}  {'trainable':>15}  {'frozen':>15}"]
    for k in sorted(groups):
        t, f = groups[k]
        lines.append(f"  {k:<{width}}  {t:>15,}  {f:>15,}")
    lines.append(f"  {'total':<{width}}  {total_train:>15,}  {total - total_train:>15,}"
                 f"   ({100.0 * total_train / max(total, 1):.1f}% trainable)")
    return "\n".join(lines)
