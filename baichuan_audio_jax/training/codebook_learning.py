"""RVQ codebook learning for audio-tokenizer training (paper §3.1; spec §8).

Pure functions on arrays, used by the tokenizer task (``training/tokenizer_task.py``):

* **Quantisation during training** (:func:`quantize_residuals`): the 8-stage residual chain of
  the VQ bridge in float32. With ``temperature > 0`` each stage *samples* its code by the
  Gumbel-max trick over the logits ``−distance / temperature`` (Gumbel-softmax sampling with a
  hard sample, for exploration); with ``temperature = 0`` (evaluation) it takes the nearest code,
  as inference does. Gradients reach the encoder through the straight-through estimator
  (:func:`straight_through`): forward value = quantised vector, gradient = identity.
* **Layer-wise dropout** (:func:`layer_keep_mask`): per instance, with probability ``p``, the
  outputs of stages 2..8 are discarded, so stage 1 must carry the content on its own.
* **Progressive replacement** (:func:`replace_mask`, :func:`piecewise_linear`): per *instance*,
  with probability ``fraction(step)`` (a schedule, 10 % → 100 %), the decoder and the alignment
  LLM read the quantised vectors instead of the continuous bridge output; the commitment weight
  follows a schedule of its own.
* **EMA codebooks** (:func:`ema_update`): with decay α, ``cluster_size ← α·cluster_size +
  (1 − α)·counts`` and ``embed_avg ← α·embed_avg + (1 − α)·sums`` (sums of the vectors assigned
  to each code), Laplace-smoothed sizes ``n·(size + ε)/(n + C·ε)``, codebook
  ``c′ = embed_avg / size``, then the paper's L2-norm constraint ``c = (1 − β)·c′``.
* **Restart** (same function): a code unused for ``restart_after`` consecutive steps (a per-code
  counter kept in the model state) is moved to a random vector of the current batch
  (:func:`restart_candidates`): ``embed_avg = x``, ``cluster_size = 1``, counter 0.
* **Utilisation** (:func:`usage_metrics`): codes used in the batch, perplexity of the code
  distribution, dead codes (counter at or past ``restart_after``).

Assignment statistics are additive over microbatches; restart candidates are merged by priority
(:func:`merge_candidates`) so that accumulating microbatches draws each candidate uniformly from
the whole global batch (weighted reservoir sampling: priority ``u^(1/n)``).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------- schedules

def piecewise_linear(breakpoints: Sequence[Sequence[float]], step) -> jax.Array:
    """Linear interpolation of ``[[step_0, v_0], [step_1, v_1], …]`` (steps increasing) at
    ``step``; constant before the first and after the last breakpoint."""
    pts = np.asarray(breakpoints, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 1:
        raise ValueError(f"schedule {breakpoints!r}: expected [[step, value], ...]")
    if np.any(np.diff(pts[:, 0]) < 0):
        raise ValueError(f"schedule {breakpoints!r}: steps must not decrease")
    return jnp.interp(jnp.asarray(step, jnp.float32), jnp.asarray(pts[:, 0], jnp.float32),
                      jnp.asarray(pts[:, 1], jnp.float32))


# ----------------------------------------------------------------------------- quantisation

def sample_codes(distances: jax.Array, key: jax.Array | None, temperature: float) -> jax.Array:
    """int32 code per row of ``distances`` [..., C]: argmax of ``−d/τ + Gumbel noise`` when
    ``temperature > 0`` and a key is given, else the nearest code (lowest index on ties)."""
    if key is None or temperature <= 0:
        return jnp.argmin(distances, axis=-1).astype(jnp.int32)
    logits = -distances / temperature + jax.random.gumbel(key, distances.shape, jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def quantize_residuals(quantizers, z: jax.Array, key: jax.Array | None = None, temperature: float = 0.0
                       ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """The residual chain of ``quantizers`` (the bridge's ``VectorQuantizer`` stages) in float32.

    Returns (codes int32 [..., K], per-stage quantised vectors ``q_k`` [..., D] float32, per-stage
    inputs ``r_k`` [..., D] float32 (r_0 = z, r_{k+1} = r_k − q_k)). Nothing here carries a
    gradient: the chain is a codebook search."""
    r = jax.lax.stop_gradient(z.astype(jnp.float32))
    keys = [None] * len(quantizers) if key is None else list(jax.random.split(key, len(quantizers)))
    codes, vectors, inputs = [], [], []
    for vq, k in zip(quantizers, keys):
        idx = sample_codes(vq.distances(r), k, temperature)
        q = jax.lax.stop_gradient(vq.lookup(idx))
        codes.append(idx)
        vectors.append(q)
        inputs.append(r)
        r = r - q
    return jnp.stack(codes, axis=-1), vectors, inputs


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
    """``q`` in the forward pass, identity gradient to ``z``: z + stop_gradient(q − z)."""
    return z + jax.lax.stop_gradient(q.astype(z.dtype) - z)


def layer_keep_mask(key: jax.Array, batch: int, stages: int, drop_prob: float) -> jax.Array:
    """float32 [B, stages]: 1 for kept stages. Stage 1 is always kept; per instance, with
    probability ``drop_prob``, every later stage is dropped."""
    drop = jax.random.uniform(key, (batch,)) < drop_prob
    later = jnp.where(drop[:, None], 0.0, 1.0) * jnp.ones((batch, stages - 1), jnp.float32)
    return jnp.concatenate([jnp.ones((batch, 1), jnp.float32), later], axis=1)


def replace_mask(key: jax.Array, batch: int, fraction) -> jax.Array:
    """bool [B]: instances whose encoder output is replaced by the VQ output (probability
    ``fraction`` each; instance-level, as the paper found better than token-level)."""
    return jax.random.uniform(key, (batch,)) < fraction


# ----------------------------------------------------------------------------- statistics

def assignment_stats(inputs: jax.Array, codes: jax.Array, valid: jax.Array, codebook_size: int
                     ) -> tuple[jax.Array, jax.Array]:
    """(counts [C], sums [C, D]) of the valid rows of ``inputs`` [M, D] assigned to each code."""
    w = valid.astype(jnp.float32)
    idx = jnp.where(valid, codes, 0)
    counts = jax.ops.segment_sum(w, idx, num_segments=codebook_size)
    sums = jax.ops.segment_sum(inputs.astype(jnp.float32) * w[:, None], idx, num_segments=codebook_size)
    return counts, sums


def restart_candidates(key: jax.Array, inputs: jax.Array, valid: jax.Array, codebook_size: int
                       ) -> tuple[jax.Array, jax.Array]:
    """(candidates [C, D], priorities [C]): for every code a uniformly drawn valid row of
    ``inputs`` [M, D] and the priority ``u^(1/n)`` (n valid rows; −1 when there are none)."""
    m = inputs.shape[0]
    n = jnp.sum(valid.astype(jnp.int32))
    rows = jnp.nonzero(valid, size=m, fill_value=0)[0]
    k_pick, k_prio = jax.random.split(key)
    pick = jax.random.randint(k_pick, (codebook_size,), 0, jnp.maximum(n, 1))
    cand = jnp.take(inputs.astype(jnp.float32), rows[pick], axis=0)
    u = jax.random.uniform(k_prio, (codebook_size,), jnp.float32, minval=1e-12, maxval=1.0)
    prio = jnp.where(n > 0, u ** (1.0 / jnp.maximum(n, 1).astype(jnp.float32)), -1.0)
    return cand, prio


def merge_candidates(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]
                     ) -> tuple[jax.Array, jax.Array]:
    """Per code, the candidate of higher priority (ties: ``a``)."""
    take_b = b[1] > a[1]
    return jnp.where(take_b[:, None], b[0], a[0]), jnp.where(take_b, b[1], a[1])


def ema_update(embed_avg: jax.Array, cluster_size: jax.Array, unused_steps: jax.Array, counts: jax.Array,
               sums: jax.Array, candidates: jax.Array, priorities: jax.Array, *, decay: float, beta: float,
               eps: float, restart_after: int) -> dict[str, jax.Array]:
    """One codebook update from a step's assignment statistics.

    1. EMA: ``cluster_size ← α·cluster_size + (1 − α)·counts``, ``embed_avg ← α·embed_avg +
       (1 − α)·sums``.
    2. ``unused_steps`` ← 0 for codes with counts > 0, else + 1.
    3. Restart (``restart_after`` > 0): codes with ``unused_steps ≥ restart_after`` and a
       candidate (priority ≥ 0) get ``embed_avg = candidate``, ``cluster_size = 1``,
       ``unused_steps = 0``.
    4. ``embed = (1 − β) · embed_avg / smoothed`` with
       ``smoothed = n·(cluster_size + ε)/(n + C·ε)``, n = Σ cluster_size.

    Returns ``embed``, ``embed_avg``, ``cluster_size``, ``unused_steps`` (int32),
    ``unused_before_restart`` (the counters of step 2) and ``restarted`` (bool [C])."""
    c = cluster_size.shape[0]
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_avg = decay * embed_avg + (1.0 - decay) * sums
    unused = jnp.where(counts > 0, 0, unused_steps + 1).astype(jnp.int32)
    if restart_after > 0:
        restarted = (unused >= restart_after) & (priorities >= 0)
    else:
        restarted = jnp.zeros((c,), bool)
    embed_avg = jnp.where(restarted[:, None], candidates, embed_avg)
    cluster_size = jnp.where(restarted, 1.0, cluster_size)
    before = unused
    unused = jnp.where(restarted, 0, unused)
    n = jnp.sum(cluster_size)
    smoothed = (cluster_size + eps) / (n + c * eps) * n
    embed = (1.0 - beta) * embed_avg / smoothed[:, None]
    return dict(embed=embed, embed_avg=embed_avg, cluster_size=cluster_size, unused_steps=unused,
                unused_before_restart=before, restarted=restarted)


def usage_metrics(counts: jax.Array, unused_steps: jax.Array, restart_after: int) -> dict[str, jax.Array]:
    """``used`` (codes assigned at least once in the batch), ``perplexity`` (exp of the entropy of
    the batch's code distribution; = C when every code is equally used) and ``dead`` (codes
    unused for at least ``restart_after`` steps, or never used when restarts are off)."""
    total = jnp.maximum(jnp.sum(counts), 1.0)
    p = counts / total
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    limit = restart_after if restart_after > 0 else 1
    return dict(used=jnp.sum(counts > 0).astype(jnp.float32), perplexity=jnp.exp(entropy),
                dead=jnp.sum(unused_steps >= limit).astype(jnp.float32))
