"""Losses of the audio LLM: weighted text CE and 8-codebook audio CE (batch layout: ``batch.py``).

Both are ``Σ w·CE / Σ w``. The step computes the denominators over the whole global batch first
(:func:`loss_denominators`) and every microbatch contributes ``Σ_mb w·CE / Σ_global w``, so the
loss and its gradient do not depend on how the batch is split for gradient accumulation.

* Text: the LM head's logits are computed in chunks of positions (``train.loss_chunk_size``)
  under ``jax.checkpoint``, so at most one chunk of ``[B, chunk, vocab]`` logits is alive in the
  forward and backward passes (the full 152k-vocabulary logits of a long row would dominate
  memory).
* Audio: the audio head runs teacher-forced only at positions that carry audio weight, gathered
  up to a static per-row maximum (``train.max_audio_positions``), so its cost scales with audio
  frames, not with the sequence. Weighted positions beyond the maximum are left out and counted
  (``audio_positions_dropped``).

Logits are upcast to float32 before the log-softmax whatever the compute dtype.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from baichuan_audio_jax.sharding import constrain


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """−log softmax(logits)[target] in float32; logits [..., V], targets [...]."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return logz - picked


def loss_denominators(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Σ weights of the (global) batch for each loss; at least 1 so an empty loss is 0."""
    return {"text": jnp.maximum(jnp.sum(batch["text_weights"]), 1.0),
            "audio": jnp.maximum(jnp.sum(batch["audio_weights"]), 1.0)}


def text_ce_sum(model, hidden: jax.Array, targets: jax.Array, weights: jax.Array, chunk: int = 0) -> jax.Array:
    """Σ w·CE of the LM head over [B, S] positions, logits built ``chunk`` positions at a time."""
    with jax.named_scope("lm_head_loss"):
        return _text_ce_sum(model, hidden, targets, weights, chunk)


def _text_ce_sum(model, hidden, targets, weights, chunk):
    b, s, h = hidden.shape
    if not chunk or chunk >= s:
        return jnp.sum(cross_entropy(model.logits(hidden), targets) * weights)
    if s % chunk:
        raise ValueError(f"train.loss_chunk_size={chunk} does not divide data.seq_len={s}")
    n = s // chunk

    def split(x):  # [B, S, ...] -> [n, B, chunk, ...]
        return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

    # The LM head's weight is gathered (fsdp) once, outside the checkpointed chunk body, so the
    # chunks and their recomputation in the backward pass reuse it instead of gathering it again.
    gathered = model.gathered_output_weight() if hasattr(model, "gathered_output_weight") else None
    logits_of = model.logits if gathered is None else (lambda hc: model.logits(hc, gathered))

    @jax.checkpoint
    def one(carry, xs):
        hc, tc, wc = xs
        return carry + jnp.sum(cross_entropy(logits_of(hc), tc) * wc), None

    total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), (split(hidden), split(targets), split(weights)))
    return total


def gather_audio_positions(weights: jax.Array, max_positions: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Indices [B, K] of the positions with any audio weight (in order), a validity mask [B, K],
    and the number of weighted positions that did not fit in K (scalar)."""
    has = jnp.any(weights > 0, axis=-1)  # [B, S]
    idx = jax.vmap(lambda row: jnp.nonzero(row, size=max_positions, fill_value=0)[0])(has)
    count = jnp.sum(has, axis=-1)
    valid = jnp.arange(max_positions)[None, :] < count[:, None]
    dropped = jnp.sum(jnp.maximum(count - max_positions, 0))
    return idx, valid, dropped


def audio_ce_sum(model, hidden: jax.Array, targets: jax.Array, weights: jax.Array,
                 max_positions: int) -> tuple[jax.Array, jax.Array]:
    """Σ w·CE over (position, codebook) of the teacher-forced audio head; returns (sum, dropped)."""
    k = min(max_positions or hidden.shape[1], hidden.shape[1])
    with jax.named_scope("audio_head"):
        idx, valid, dropped = gather_audio_positions(weights, k)
        take = lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
        h = constrain(take(hidden), ("activation_batch", "activation_length", "activation_embed"))
        t = constrain(take(targets), ("activation_batch", "activation_length", "activation_codebooks"))
        w = take(weights) * valid[..., None]
        total = jnp.zeros((), jnp.float32)
        for ks, lg in model.audio_logits_grouped(h, t):  # one CE per group of equal-sized codebooks
            idx_k = list(ks)  # logits [G, B, K, C]: the group's codebooks first
            total = total + jnp.sum(cross_entropy(lg, jnp.moveaxis(t[..., idx_k], -1, 0))
                                    * jnp.moveaxis(w[..., idx_k], -1, 0))
    return total, dropped


def audio_llm_loss(model, batch: Mapping[str, jax.Array], denominators: Mapping[str, jax.Array], *,
                   audio_loss_weight: float = 1.0, max_audio_positions: int = 0,
                   loss_chunk_size: int = 0, dropout=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, sums) of one (micro)batch; ``loss`` = text CE + audio_loss_weight · audio CE with
    the global ``denominators``. ``sums`` are additive over microbatches. ``dropout``: the
    decoder's training-time dropout (``models.audio_llm.Dropout``) or None."""
    out = model(batch["input_ids"], batch["audio_codes"], positions=batch["positions"],
                segment_ids=batch["segment_ids"], compute_logits=False, dropout=dropout)
    text = text_ce_sum(model, out.hidden, batch["text_targets"], batch["text_weights"], loss_chunk_size)
    audio, dropped = audio_ce_sum(model, out.hidden, batch["audio_targets"], batch["audio_weights"],
                                  max_audio_positions)
    text_loss = text / denominators["text"]
    audio_loss = audio / denominators["audio"]
    loss = text_loss + audio_loss_weight * audio_loss
    return loss, {"text_loss": text_loss, "audio_loss": audio_loss,
                  "audio_positions_dropped": dropped.astype(jnp.float32)}
