"""The ``audio_tokenizer`` training task (paper §3.1; spec §8): encoder → bridge → RVQ → decoder.

One training step on a batch of :mod:`baichuan_audio_jax.audio_batch` rows:

1. encoder and bridge give the continuous vectors z [B, N', 4D] (valid for n < N_b);
2. the RVQ chain assigns codes (Gumbel sampling at ``train.tokenizer.gumbel_temperature``; see
   :mod:`~baichuan_audio_jax.training.codebook_learning`); the quantised vector is the sum of
   the kept stages (layer-wise dropout of stages 2..8 per instance) and reaches z's gradient
   through the straight-through estimator;
3. progressive replacement: per instance, with probability ``replace_schedule(step)``, the
   decoder and the LLM read the quantised vectors, otherwise z itself;
4. losses, each a mean over valid frames (or tokens) of the global batch:

   * reconstruction (paper eq. 1): L1 + L2 of the coarse mel (100 Hz, ``dconv2``) against the
     100 Hz target and of the refined mel (62.5 Hz, post-net) against the 62.5 Hz target
     (:mod:`~baichuan_audio_jax.audio_batch` explains the targets);
   * multi-scale mel loss: each output also measured at the other hop/window size — the coarse
     mel nearest-resized to 62.5 Hz (the decoder's own resize) against the hop-256/n_fft-1024
     target and the refined mel nearest-resized to 100 Hz against the hop-160/n_fft-400 target
     (L1), so both outputs are held to both time-frequency resolutions;
   * commitment (paper eq. 2): ‖z − sg(q)‖² per element, q the full 8-stage quantisation;
   * LLM alignment: a frozen text LLM (``model.llm``; :class:`AudioLLM`) reads
     ``[audio_start, adapter(x_1..x_N), audio_end, transcript, EOS]`` — x the (possibly
     quantised) vectors through a trainable linear adapter to the LLM width — and the loss is
     its cross-entropy on the transcript and EOS;

   total = ``recon_weight``·reconstruction + ``multiscale_weight``·multi-scale +
   ``llm_weight``·LLM + ``commit_weight_schedule(step)``·commitment (paper eq. 3);
5. after the optimizer step, :func:`update_codebooks` moves the codebooks by EMA with the L2-norm
   constraint and restarts dead codes (the non-gradient state update of the engine).

Model state (checkpointed and sharded like parameters, never touched by the optimizer): the
codebooks and their EMA statistics (``Codebook`` variables of the bridge) and per-code counters
of steps since last use (:class:`CodebookUsage`). A fresh run starts every code's EMA count at 1
(so the first update keeps unused codes where they are, instead of dividing by ~0).

Metrics: the loss terms, ``mel_mae`` (mean |refined − target|, paper Table 1's metric; in
training it mixes continuous and quantised instances until the replacement reaches 100 %), and
per codebook k: ``vq{k}_used`` (codes assigned in the batch), ``vq{k}_perplexity``,
``vq{k}_dead`` (unused for ``restart_after`` steps before this step's restarts),
``vq{k}_restarts``; ``codes_used_fraction`` over all codebooks; the schedule values.
:func:`evaluate` measures the inference path (nearest-neighbour codes, full quantisation).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.audio.lengths import audio_tokens, encoder_frames
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.layers.transformer import zero_padding
from baichuan_audio_jax.models.audio_decoder import nearest_resize
from baichuan_audio_jax.models.audio_llm import AudioLLM
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.models.vq_bridge import NUM_CODEBOOKS
from baichuan_audio_jax.training import codebook_learning as cl
from baichuan_audio_jax.training.losses import text_ce_sum
from baichuan_audio_jax.training.tasks import Task, Trainable, register

PREFIX = "tok"


class CodebookUsage(nnx.Variable):
    """Training-only codebook state (steps since each code was last used); not part of the
    reference checkpoint."""


class TokenizerTraining(nnx.Module):
    """The audio tokenizer with what its training needs: the frozen alignment LLM, the adapter
    from quantised vectors to the LLM width, and the per-code usage counters."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.tokenizer = AudioTokenizer(cfg, rngs=rngs)
        for vq in self.tokenizer.vq_bridge.quantizers:
            vq.cluster_size.set_value(jnp.ones_like(vq.cluster_size.get_value()))
        self.llm = AudioLLM(cfg, rngs=rngs)
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.llm_adapter = Dense(cfg.vq_bridge.intermediate_dim, cfg.llm.hidden_size, in_axis="codebook_dim",
                                 out_axes="embed", use_bias=True, **kw)
        self.unused_steps = nnx.List([
            CodebookUsage(jnp.zeros((size,), jnp.int32), out_sharding=("audio_vocab",), eager_sharding=False)
            for size in cfg.codebook_sizes])


def make_model(model_cfg: ModelConfig, rngs: nnx.Rngs) -> TokenizerTraining:
    return TokenizerTraining(model_cfg, rngs=rngs)


# ----------------------------------------------------------------------------- pieces

def length_mask(lengths: jax.Array, size: int) -> jax.Array:
    return jnp.arange(size)[None, :] < lengths[:, None]


def alignment_sequence(model_cfg: ModelConfig, tokens_per_row: jax.Array, slots: int, text_ids: jax.Array,
                       text_lengths: jax.Array) -> dict[str, jax.Array]:
    """The LLM-alignment rows ``[audio_start, audio_pad × slots, audio_end, text_ids]`` with only
    each row's first N audio slots and first K text ids valid (segment 1; others segment 0),
    positions counting valid tokens, and next-token targets/weights on the transcript (the
    position before each transcript id predicts it)."""
    t = model_cfg.tokens
    b, k = text_ids.shape
    col = lambda v: jnp.full((b, 1), v, jnp.int32)
    ids = jnp.concatenate([col(t.audio_start_token_id), jnp.full((b, slots), t.audio_pad_token_id, jnp.int32),
                           col(t.audio_end_token_id), text_ids.astype(jnp.int32)], axis=1)
    valid = jnp.concatenate([jnp.ones((b, 1), bool), length_mask(tokens_per_row, slots), jnp.ones((b, 1), bool),
                             length_mask(text_lengths, k)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    nxt_valid = jnp.concatenate([valid[:, 1:], jnp.zeros((b, 1), bool)], axis=1)
    is_text_next = jnp.arange(ids.shape[1] + 1)[1:] >= slots + 2
    weights = (valid & nxt_valid & is_text_next[None, :]).astype(jnp.float32)
    targets = jnp.concatenate([ids[:, 1:], jnp.zeros((b, 1), jnp.int32)], axis=1) * (weights > 0)
    return dict(input_ids=ids, positions=positions, segment_ids=valid.astype(jnp.int32), targets=targets,
                weights=weights)


def _masked_sums(pred: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Σ|p − t|, Σ(p − t)²) over the valid frames [B, T] of [B, T, bins] arrays, in float32."""
    d = (pred.astype(jnp.float32) - target.astype(jnp.float32)) * mask[..., None]
    return jnp.sum(jnp.abs(d)), jnp.sum(jnp.square(d))


def _settings(train_cfg) -> Any:
    tc = train_cfg.get("tokenizer") if hasattr(train_cfg, "get") else None
    if tc is None:
        raise ValueError("task 'audio_tokenizer' needs the config section train.tokenizer "
                         "(see configs/tokenizer_tiny.py)")
    return tc


# ----------------------------------------------------------------------------- loss

def denominators(batch: Mapping[str, jax.Array], model_cfg: ModelConfig) -> dict[str, jax.Array]:
    """Valid elements of the global batch per loss term (at least 1)."""
    bins = model_cfg.audio_decoder.num_mel_bins
    enc = model_cfg.audio_encoder

    n = audio_tokens(encoder_frames(batch["feature_lengths"], enc.kernel_size, enc.stride_size),
                     model_cfg.vq_bridge.avg_pooler)
    f32 = lambda x: jnp.maximum(jnp.sum(x).astype(jnp.float32), 1.0)
    return dict(coarse=f32(batch["coarse_lengths"]) * bins, refined=f32(batch["refined_lengths"]) * bins,
                tokens=f32(n) * model_cfg.vq_bridge.intermediate_dim, text=f32(batch["text_lengths"]))


def tokenizer_loss(model: TokenizerTraining, batch: Mapping[str, jax.Array], den: Mapping[str, jax.Array],
                   rng: jax.Array, train_cfg, step) -> tuple[jax.Array, dict[str, jax.Array]]:
    tc = _settings(train_cfg)
    tok = model.tokenizer
    bridge = tok.vq_bridge
    cfg = model.llm.cfg
    hidden, enc_lengths = tok.audio_encoder(batch["features"], batch["feature_lengths"])
    z = bridge.pre_quantize(hidden, enc_lengths)
    b, slots, width = z.shape
    n = bridge.token_lengths(enc_lengths)
    valid = length_mask(n, slots)
    k_q, k_drop, k_rep, k_cand = jax.random.split(rng, 4)

    codes, vectors, inputs = cl.quantize_residuals(bridge.quantizers, z, k_q, float(tc.gumbel_temperature))
    keep = cl.layer_keep_mask(k_drop, b, NUM_CODEBOOKS, float(tc.layer_dropout))
    q_kept = sum(keep[:, k, None, None] * vectors[k] for k in range(NUM_CODEBOOKS))
    q_full = sum(vectors)
    fraction = cl.piecewise_linear(tc.replace_schedule, step)
    replaced = cl.replace_mask(k_rep, b, fraction)
    z32 = z.astype(jnp.float32)
    x = jnp.where(replaced[:, None, None], cl.straight_through(z32, q_kept), z32)
    x = zero_padding(x, n)

    # Reconstruction through the decoder.
    out = tok.audio_decoder(bridge.proj_decoder(x.astype(bridge.dtype)), n)
    c_mask = length_mask(out.dconv2_lengths, out.dconv2_out.shape[1])
    m_mask = length_mask(out.mel_lengths, out.refined_mel.shape[1])
    c_l1, c_l2 = _masked_sums(out.dconv2_out, batch["coarse_mel"], c_mask)
    r_l1, r_l2 = _masked_sums(out.refined_mel, batch["refined_mel"], m_mask)
    coarse_at_b, _ = _masked_sums(out.coarse_mel, batch["refined_mel"], m_mask)
    refined_at_a = nearest_resize(out.refined_mel, out.mel_lengths, out.dconv2_lengths, out.dconv2_out.shape[1])
    refined_at_a, _ = _masked_sums(refined_at_a, batch["coarse_mel"], c_mask)
    sums = dict(mel_coarse_l1=c_l1 / den["coarse"], mel_coarse_l2=c_l2 / den["coarse"],
                mel_refined_l1=r_l1 / den["refined"], mel_refined_l2=r_l2 / den["refined"])
    recon = sum(sums.values())
    multiscale = coarse_at_b / den["refined"] + refined_at_a / den["coarse"]

    # Commitment to the full quantisation.
    commit = jnp.sum(jnp.square(z32 - jax.lax.stop_gradient(q_full)) * valid[..., None]) / den["tokens"]

    # LLM alignment on the transcript.
    llm_loss = jnp.zeros((), jnp.float32)
    if float(tc.llm_weight) > 0:

        seq = alignment_sequence(cfg, n, slots, batch["text_ids"], batch["text_lengths"])
        emb = model.llm_adapter(x.astype(model.llm.dtype))
        s_len = seq["input_ids"].shape[1]
        audio_embeds = jnp.zeros((b, s_len, emb.shape[-1]), emb.dtype).at[:, 1:1 + slots].set(emb)
        lm = model.llm(seq["input_ids"], positions=seq["positions"], segment_ids=seq["segment_ids"],
                       audio_embeds=audio_embeds, compute_logits=False)
        llm_loss = text_ce_sum(model.llm, lm.hidden, seq["targets"], seq["weights"]) / den["text"]

    commit_weight = cl.piecewise_linear(tc.commit_weight_schedule, step)
    loss = (float(tc.recon_weight) * recon + float(tc.multiscale_weight) * multiscale
            + float(tc.llm_weight) * llm_loss + commit_weight * commit)
    sums.update(reconstruction=recon, multiscale_mel=multiscale, commit_loss=commit, llm_loss=llm_loss,
                mel_mae=sums["mel_refined_l1"])

    # Assignment statistics and restart candidates for the codebook update.
    flat_valid = valid.reshape(-1)
    for k, vq in enumerate(bridge.quantizers):
        size = vq.embed.get_value().shape[0]
        r = inputs[k].reshape(-1, width)
        counts, vec_sums = cl.assignment_stats(r, codes[..., k].reshape(-1), flat_valid, size)
        cand, prio = cl.restart_candidates(jax.random.fold_in(k_cand, k), r, flat_valid, size)
        sums.update({f"vq{k}_counts": counts, f"vq{k}_sums": vec_sums, f"vq{k}_candidates": cand,
                     f"vq{k}_priority": prio})
    return loss, sums


def merge_sums(a: dict, b: dict) -> dict:
    """Microbatch outputs: restart candidates by priority, everything else added."""
    out = {}
    for key in a:
        if key.endswith("_candidates"):
            continue
        if key.endswith("_priority"):
            stem = key[: -len("_priority")]
            cand, prio = cl.merge_candidates((a[stem + "_candidates"], a[key]), (b[stem + "_candidates"], b[key]))
            out[stem + "_candidates"], out[key] = cand, prio
        else:
            out[key] = a[key] + b[key]
    return out


def update_codebooks(model_state: dict, params: dict, batch: Mapping[str, jax.Array], sums: Mapping[str, jax.Array],
                     rng: jax.Array, step, train_cfg) -> tuple[dict, dict[str, jax.Array]]:
    """EMA codebooks with the L2-norm constraint and restarts (the engine's state update)."""
    del params, batch, rng
    tc = _settings(train_cfg)
    restart_after = int(tc.restart_after)
    quantizers = model_state["tokenizer"]["vq_bridge"]["quantizers"]
    new_q, new_unused, metrics = {}, {}, {}
    used_total, size_total = 0.0, 0
    for k in sorted(quantizers):
        q = quantizers[k]
        r = cl.ema_update(q["embed_avg"], q["cluster_size"], model_state["unused_steps"][k], sums[f"vq{k}_counts"],
                          sums[f"vq{k}_sums"], sums[f"vq{k}_candidates"], sums[f"vq{k}_priority"],
                          decay=float(tc.ema_decay), beta=float(tc.l2_beta), eps=float(tc.laplace_eps),
                          restart_after=restart_after)
        new_q[k] = dict(q, embed=r["embed"].astype(q["embed"].dtype), embed_avg=r["embed_avg"],
                        cluster_size=r["cluster_size"])
        new_unused[k] = r["unused_steps"]
        usage = cl.usage_metrics(sums[f"vq{k}_counts"], r["unused_before_restart"], restart_after)
        metrics.update({f"vq{k}_used": usage["used"], f"vq{k}_perplexity": usage["perplexity"],
                        f"vq{k}_dead": usage["dead"], f"vq{k}_restarts": jnp.sum(r["restarted"]).astype(jnp.float32)})
        used_total = used_total + usage["used"]
        size_total += q["cluster_size"].shape[0]
    metrics["codes_used_fraction"] = used_total / size_total
    metrics["replace_fraction"] = cl.piecewise_linear(tc.replace_schedule, step)
    metrics["commit_weight"] = cl.piecewise_linear(tc.commit_weight_schedule, step)
    state = dict(model_state)
    state["tokenizer"] = dict(model_state["tokenizer"])
    state["tokenizer"]["vq_bridge"] = dict(model_state["tokenizer"]["vq_bridge"], quantizers=new_q)
    state["unused_steps"] = new_unused
    return state, metrics


# ----------------------------------------------------------------------------- evaluation

def evaluate(tokenizer: AudioTokenizer, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over a batch on the *inference* path (nearest-neighbour codes, all 8 stages):
    ``abs_refined``/``abs_coarse`` (Σ|mel − target|), ``frames_refined``/``frames_coarse`` (valid
    elements) and per-codebook code counts ``vq{k}_counts``."""
    codes, n = tokenizer.encode(batch["features"], batch["feature_lengths"])
    out = tokenizer.decode(codes, n)
    c_mask = length_mask(out.dconv2_lengths, out.dconv2_out.shape[1])
    m_mask = length_mask(out.mel_lengths, out.refined_mel.shape[1])
    bins = out.refined_mel.shape[-1]
    res = dict(abs_coarse=_masked_sums(out.dconv2_out, batch["coarse_mel"], c_mask)[0],
               abs_refined=_masked_sums(out.refined_mel, batch["refined_mel"], m_mask)[0],
               frames_coarse=jnp.sum(c_mask).astype(jnp.float32) * bins,
               frames_refined=jnp.sum(m_mask).astype(jnp.float32) * bins)
    valid = length_mask(n, codes.shape[1]).reshape(-1)
    for k, vq in enumerate(tokenizer.vq_bridge.quantizers):
        size = vq.embed.get_value().shape[0]
        res[f"vq{k}_counts"] = jax.ops.segment_sum(valid.astype(jnp.float32),
                                                   jnp.where(valid, codes[..., k].reshape(-1), 0), num_segments=size)
    return res


# ----------------------------------------------------------------------------- task

def row_shapes(config) -> dict:
    model = ModelConfig.from_config(config.model)
    return audio_batch.tokenizer_row_shapes(model, int(config.data.seq_len), int(config.data.get("text_len", 0) or 1))


def validate(batch: Mapping[str, np.ndarray], model_cfg: ModelConfig) -> None:
    """Lengths consistent with the model's frame formulas; transcript ids inside the vocabulary."""
    for i, length in enumerate(np.asarray(batch["feature_lengths"]).tolist()):
        if length == 0:
            continue
        g = audio_batch.AudioGeometry.of(model_cfg, length, padded=False)
        for field, want in (("coarse_lengths", g.coarse_frames), ("refined_lengths", g.refined_frames)):
            got = int(batch[field][i])
            if got != want:
                raise ValueError(f"field {field!r} row {i}: {got} frames, the decoder gives {want} for "
                                 f"{length} log-mel frames")
    ids = np.asarray(batch["text_ids"])
    if ids.size and (ids.min() < 0 or ids.max() >= model_cfg.llm.vocab_size):
        raise ValueError(f"field 'text_ids': ids outside [0, {model_cfg.llm.vocab_size})")


def _stack_flops(layers: int, d: int, ffn: int, frames: float) -> float:
    return 2.0 * frames * layers * (4 * d * d + 2 * d * ffn) + 2.0 * layers * frames * frames * d * 2


def flops_per_step(model_cfg: ModelConfig, batch_size: int, seq_len: int, train_cfg=None) -> float:
    """Model FLOPs of one step (forward + backward ≈ 3 × forward) for full rows: encoder, bridge,
    codebook search, decoder and the LLM-alignment pass over the audio positions (the frozen LLM
    is still differentiated through for its input)."""
    g = audio_batch.AudioGeometry.of(model_cfg, seq_len, padded=True)
    enc, dec, br, llm = model_cfg.audio_encoder, model_cfg.audio_decoder, model_cfg.vq_bridge, model_cfg.llm
    wide = br.intermediate_dim
    fwd = 2.0 * seq_len * 3 * enc.num_mel_bins * enc.d_model + 2.0 * g.encoder_frames * 3 * enc.d_model ** 2
    fwd += _stack_flops(enc.num_layers, enc.d_model, enc.ffn_dim, g.encoder_frames)
    fwd += 2.0 * g.groups * (2 * wide * wide + wide * wide + wide * br.d_model)
    fwd += 2.0 * g.groups * wide * sum(model_cfg.codebook_sizes)
    fwd += 2.0 * g.decoder_frames * 3 * dec.d_model ** 2 + _stack_flops(dec.num_layers, dec.d_model, dec.ffn_dim,
                                                                        g.decoder_frames)
    s = g.groups + 2  # audio positions of the alignment rows (transcript positions not counted)
    per_tok = (llm.hidden_size * llm.num_heads * llm.head_dim * 2 + 2 * llm.hidden_size * llm.num_kv_heads
               * llm.head_dim + 3 * llm.hidden_size * llm.intermediate_size)
    fwd += 2.0 * s * (llm.num_layers * per_tok + llm.hidden_size * llm.vocab_size)
    fwd += 2.0 * g.groups * wide * llm.hidden_size
    return 3.0 * batch_size * fwd


def _tokens(batch: Mapping[str, np.ndarray]) -> int:
    return int(np.sum(batch["feature_lengths"]))


AUDIO_TOKENIZER = register(Task(
    name="audio_tokenizer",
    prefix=PREFIX,
    make_model=make_model,
    batch_fields={},
    denominators=denominators,
    loss=tokenizer_loss,
    stages={
        # The alignment LLM stays frozen (paper §3.1); everything else of the tokenizer learns.
        0: Trainable(exclude=(f"{PREFIX}/llm/*",), description="tokenizer + LLM adapter (LLM frozen)"),
        # Keep the pretrained encoder too: bridge, decoder and adapter only.
        1: Trainable(exclude=(f"{PREFIX}/llm/*", f"{PREFIX}/tokenizer/audio_encoder/*"),
                     description="bridge + decoder + LLM adapter (encoder and LLM frozen)"),
    },
    flops_per_step=flops_per_step,
    tokens=_tokens,
    update_state=update_codebooks,
    validate=validate,
    row_shapes=row_shapes,
    merge_sums=merge_sums,
))
