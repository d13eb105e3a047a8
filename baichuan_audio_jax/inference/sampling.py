"""Next-token selection with the reference's logits processors (spec §6.4).

The processors and their order are those of Hugging Face transformers 4.45, which the reference
demos use:

1. repetition penalty over a history of ids: a score s of an id in the history becomes s·p if
   s < 0, else s/p (each id once, however often it occurs);
2. temperature: s/T;
3. top-k: keep every score ≥ the k-th largest (ties at the boundary are kept);
4. top-p: sort ascending, remove the entries whose cumulative probability is ≤ 1 − p, always
   keeping the most probable one;

then a draw from the softmax. Greedy selection applies only the repetition penalty and takes the
arg-max (first index on ties). ``top_k = 0`` and ``top_p = 1`` switch those steps off.

Everything is jit-friendly: parameters are per-row arrays (:class:`SamplingArrays`), so rows with
different settings share one compiled program, and histories are fixed-size id buffers with a
validity mask. Draws use one PRNG key per row, so a row's tokens do not depend on the rows it is
batched with. Scores are processed in float32.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one generation phase picks tokens (the reference's ``generate`` arguments)."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def replace(self, **changes) -> "SamplingParams":
        """A copy with the given fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


class SamplingArrays(NamedTuple):
    """Per-row sampling parameters as device arrays (shape [B] each)."""

    do_sample: jax.Array  # bool
    temperature: jax.Array  # float32
    top_k: jax.Array  # int32
    top_p: jax.Array  # float32
    repetition_penalty: jax.Array  # float32

    @staticmethod
    def stack(params: Sequence[SamplingParams]) -> "SamplingArrays":
        return SamplingArrays(
            np.asarray([p.do_sample for p in params], bool),
            np.asarray([p.temperature if p.do_sample else 1.0 for p in params], np.float32),
            np.asarray([p.top_k for p in params], np.int32),
            np.asarray([p.top_p for p in params], np.float32),
            np.asarray([p.repetition_penalty for p in params], np.float32))


def history_mask(history: jax.Array, valid: jax.Array, vocab: int) -> jax.Array:
    """[B, V] bool: which ids occur (where ``valid``) in ``history`` [B, H]; ids outside [0, V)
    are ignored."""
    rows = jnp.broadcast_to(jnp.arange(history.shape[0])[:, None], history.shape)
    inside = valid & (history >= 0) & (history < vocab)
    seen = jnp.zeros((history.shape[0], vocab), bool)
    return seen.at[rows, jnp.where(inside, history, 0)].max(inside)


def apply_repetition_penalty(scores: jax.Array, history: jax.Array, valid: jax.Array,
                             penalty: jax.Array) -> jax.Array:
    """scores [B, V]; history [B, H] ids with ``valid`` [B, H]; penalty [B]."""
    seen = history_mask(history, valid, scores.shape[-1])
    p = penalty[:, None].astype(scores.dtype)
    return jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)


# Top-k bound of the fast filtering path: rows asking for fewer classes than this are filtered
# from a partial sort (``lax.top_k``) instead of a full sort of the vocabulary (50x cheaper on a
# CPU at 8,193 classes).
TOP_K_FAST = 64


def apply_top_k_top_p(scores: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-k then top-p filtering of scores [B, V] (removed entries become −inf); top_k [B]
    (0 = off), top_p [B] (1 = off).

    Entries tied with the k-th largest are kept; top-p accumulates probabilities in ascending
    order (ties by index). When every row has ``0 < top_k < TOP_K_FAST`` and no entry outside the
    ``TOP_K_FAST`` largest ties with its k-th, only those are sorted (the same result); otherwise
    one full ascending sort serves both filters."""
    kk = min(TOP_K_FAST, scores.shape[-1])
    if kk == scores.shape[-1]:
        return _filter_sorted(scores, top_k, top_p)
    # descending; the barrier keeps XLA from folding later slices into the top-k's own slice,
    # which would turn it back into a full sort (the CPU backend only matches sort + leading slice)
    vals, idx = jax.lax.optimization_barrier(jax.lax.top_k(scores, kk))
    kth = jnp.take_along_axis(vals, jnp.clip(top_k - 1, 0, kk - 1)[:, None], axis=-1)[:, 0]
    few = ((top_k > 0) & (top_k < kk) & (vals[:, -1] < kth)).all()
    return jax.lax.cond(few, lambda: _filter_few(scores, kth, top_p, vals, idx),
                        lambda: _filter_sorted(scores, top_k, top_p))


def _top_p_remove(ascending: jax.Array, keep: jax.Array, top_p: jax.Array) -> jax.Array:
    """Which of the kept entries (ascending scores) top-p removes, plus the ones not kept."""
    cumulative = jnp.cumsum(jax.nn.softmax(jnp.where(keep, ascending, _NEG_INF), axis=-1), axis=-1)
    remove = (cumulative <= (1.0 - top_p)[:, None]) | ~keep
    return remove.at[:, -1].set(False)  # the largest always stays


def _filter_few(scores, kth, top_p, vals, idx):
    ascending, order = jax.lax.sort((vals, idx), num_keys=2)  # by score, ties by index
    remove = _top_p_remove(ascending, ascending >= kth[:, None], top_p)
    keep = jnp.zeros(scores.shape, bool).at[jnp.arange(scores.shape[0])[:, None], order].set(~remove)
    return jnp.where(keep, scores, _NEG_INF)


def _filter_sorted(scores, top_k, top_p):
    v = scores.shape[-1]
    order = jnp.argsort(scores, axis=-1, stable=True)
    ascending = jnp.take_along_axis(scores, order, axis=-1)
    k = jnp.clip(top_k, 1, v)
    kth = jnp.take_along_axis(ascending, (v - k)[:, None], axis=-1)  # k-th largest
    keep = ~(top_k > 0)[:, None] | (ascending >= kth)
    remove = _top_p_remove(ascending, keep, top_p)
    remove = jnp.zeros_like(remove).at[jnp.arange(scores.shape[0])[:, None], order].set(remove)
    return jnp.where(remove, _NEG_INF, scores)


def process_logits(logits: jax.Array, params: SamplingArrays, history: jax.Array | None = None,
                   valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(greedy scores, sampling scores) of logits [B, V]: the penalised scores, and the penalised,
    temperature-scaled, top-k/top-p filtered scores."""
    scores = logits.astype(jnp.float32)
    if history is not None:
        scores = apply_repetition_penalty(scores, history, valid, params.repetition_penalty)
    warped = scores / jnp.where(params.do_sample, params.temperature, 1.0)[:, None].astype(jnp.float32)
    return scores, apply_top_k_top_p(warped, params.top_k, params.top_p)


def select_tokens(keys: jax.Array, logits: jax.Array, params: SamplingArrays, history: jax.Array | None = None,
                  valid: jax.Array | None = None) -> jax.Array:
    """One id per row of logits [B, V] (int32 [B]): arg-max of the penalised scores for greedy
    rows, a draw from the processed distribution (one key per row, ``keys`` [B]) otherwise. The
    warping and the draw are skipped at run time when no row samples."""
    scores = logits.astype(jnp.float32)
    if history is not None:
        scores = apply_repetition_penalty(scores, history, valid, params.repetition_penalty)
    greedy = jnp.argmax(scores, axis=-1).astype(jnp.int32)

    def draw(scores):
        warped = scores / jnp.where(params.do_sample, params.temperature, 1.0)[:, None].astype(jnp.float32)
        warped = apply_top_k_top_p(warped, params.top_k, params.top_p)
        return jax.vmap(jax.random.categorical)(keys, warped).astype(jnp.int32)

    drawn = jax.lax.cond(params.do_sample.any(), draw, lambda s: greedy, scores)
    return jnp.where(params.do_sample, drawn, greedy)
