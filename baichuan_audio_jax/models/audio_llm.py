"""The audio LLM: a Qwen2.5-style decoder with summed audio embeddings and the audio head.

Reference §3.1–3.2, §4.10, §6.2. Per layer: ``h += o_proj(attn(RMSNorm(h)))`` with grouped
query attention (q/k/v with bias, RoPE θ in float32, no o_proj bias), then
``h += down(silu(gate(m)) ⊙ up(m))`` with ``m = RMSNorm(h)``; a final RMSNorm gives the hidden
state that feeds both the (untied) ``lm_head`` and the audio head.

Audio positions hold the ``audio_pad`` token; their input embedding is the sum of the 8 code
embeddings of the frame (tables of size ``C_k + 1``, the last row being EOS). Codes are given
*aligned* with the sequence, ``audio_codes [B, S, 8]`` (ignored where the token is not
``audio_pad``), which keeps every shape static under ``jax.jit``;
:func:`place_audio_codes` builds that layout from the reference's packed ``[M, 8]`` matrix.

Attention masking covers three layouts: padded batches (``attention_mask`` = key validity, the
reference's left-padded generation), packed training rows (``segment_ids``, 0 = padding,
attention stays inside a segment) and KV-cached decoding (``cache`` + ``cache_index``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.layers.attention import (
    CausalSegments,
    GQAttention,
    KVCache,
    StackedKVCache,
    causal_mask,
    key_padding_mask,
    resolve_attention_impl,
    segment_mask,
)
from baichuan_audio_jax.layers.embed import Embed
from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.layers.mlp import SwiGLU
from baichuan_audio_jax.layers.mlp import dropout as apply_dropout
from baichuan_audio_jax.layers.norms import RMSNorm
from baichuan_audio_jax.layers.stack import run_stack, stacked
from baichuan_audio_jax.models.audio_head import NUM_CODEBOOKS, AudioHead
from baichuan_audio_jax.sharding import constrain

_ACT = ("activation_batch", "activation_length", "activation_embed")


def _rows(ndim: int) -> tuple[str, ...]:
    """Logical names of a [batch, positions..., H] activation of rank ``ndim`` + 1."""
    return ("activation_batch",) + ("activation_length",) * (ndim - 1) + ("activation_embed",)


class LMOutput(NamedTuple):
    logits: jax.Array | None  # [B, S, vocab] (None when not asked for)
    hidden: jax.Array  # [B, S, H] final-normed hidden states
    cache: KVCache | None  # stacked [L, B, S_max, KV, D] when decoding with a cache


class Dropout(NamedTuple):
    """Training-time dropout of the decoder (rates 0: off). ``embed``: on the input embeddings;
    ``residual``: on each attention and MLP output before it joins the residual stream; ``mlp``: on
    the MLP's hidden activations. Attention probabilities are not dropped."""

    rng: jax.Array
    embed: float = 0.0
    residual: float = 0.0
    mlp: float = 0.0

    @property
    def active(self) -> bool:
        return max(self.embed, self.residual, self.mlp) > 0.0


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        c = cfg.llm
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.input_norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, **kw)
        self.attn = GQAttention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                                rope_theta=c.rope_theta, qkv_bias=c.qkv_bias, attention_impl=c.attention_impl, **kw)
        self.post_attn_norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, **kw)
        self.mlp = SwiGLU(c.hidden_size, c.intermediate_size, **kw)

    def __call__(self, h, positions, mask, cache=None, cache_index=None, drop: Dropout | None = None):
        a, new_cache = self.attn(self.input_norm(h), positions, mask, cache, cache_index)
        if drop is None:
            h = constrain(h + a, _ACT)
            h = constrain(h + self.mlp(self.post_attn_norm(h)), _ACT)
            return h, new_cache
        k_attn, k_hidden, k_out = jax.random.split(drop.rng, 3)
        h = constrain(h + apply_dropout(a, drop.residual, k_attn), _ACT)
        m = self.mlp(self.post_attn_norm(h), dropout_rate=drop.mlp, rng=k_hidden)
        h = constrain(h + apply_dropout(m, drop.residual, k_out), _ACT)
        return h, new_cache


class AudioLLM(nnx.Module):
    """Text + audio decoder with its audio head (the reference's OmniForCausalLM minus the
    audio tokenizer)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        c = cfg.llm
        self.cfg = cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, axes=("vocab", "embed"), stddev=0.02, **kw)
        self.audio_embed = nnx.List([
            Embed(size + 1, c.hidden_size, axes=("audio_vocab", "embed"), stddev=0.02, **kw)
            for size in cfg.codebook_sizes])
        self.layers = stacked(lambda r: DecoderLayer(cfg, rngs=r), c.num_layers, rngs)
        self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, **kw)
        self.lm_head = None if c.tie_word_embeddings else Dense(
            c.hidden_size, c.vocab_size, in_axis="embed", out_axes="vocab", use_bias=False, **kw)
        self.audio_head = AudioHead(cfg, rngs=rngs)

    # ------------------------------------------------------------------ pieces

    def audio_frame_embedding(self, codes: jax.Array) -> jax.Array:
        """[..., 8] codes -> [..., H]: emb_0(c_0) + ... + emb_7(c_7), accumulated left to right."""
        out = None
        for k in range(NUM_CODEBOOKS):
            ids = jnp.clip(codes[..., k], 0, self.cfg.codebook_sizes[k])
            e = constrain(self.audio_embed[k](ids), _rows(ids.ndim))
            out = e if out is None else out + e
        return out

    def embed(self, input_ids: jax.Array, audio_codes: jax.Array | None = None,
              audio_embeds: jax.Array | None = None) -> jax.Array:
        """Text embeddings with ``audio_pad`` positions replaced by their frames' summed codes, or
        by ``audio_embeds`` [B, S, H] (continuous audio features aligned with the sequence, e.g.
        the audio tokenizer's quantised vectors during its LLM-alignment training)."""
        if audio_codes is not None and audio_embeds is not None:
            raise ValueError("give audio_codes or audio_embeds, not both")
        ids = jnp.clip(input_ids, 0, self.cfg.llm.vocab_size - 1)
        x = constrain(self.embed_tokens(ids), _rows(ids.ndim))
        is_audio = (input_ids == self.cfg.tokens.audio_pad_token_id)[..., None]
        if audio_codes is not None:
            x = jnp.where(is_audio, self.audio_frame_embedding(audio_codes), x)
        if audio_embeds is not None:
            x = jnp.where(is_audio, audio_embeds.astype(x.dtype), x)
        return constrain(x, _ACT)

    def gathered_output_weight(self) -> jax.Array | None:
        """The untied LM head's kernel [H, vocab] in the compute dtype, whole on the fsdp axes
        (vocab stays split by ``activation_vocab``): computed once and passed to :meth:`logits`
        for every loss chunk. None for tied embeddings."""
        if self.lm_head is None:
            return None
        # Cast on each device's shard (held in the parameter's own layout), then gather: the
        # gather moves and stores compute-dtype bytes, not float32 master weights.
        shard = constrain(self.lm_head.kernel[...].astype(self.dtype), ("embed", "vocab"))
        return constrain(shard, ("activation_embed", "activation_vocab"))

    def logits(self, hidden: jax.Array, gathered: jax.Array | None = None) -> jax.Array:
        if self.lm_head is None:
            out = self.embed_tokens.attend(hidden)
        elif gathered is not None:  # the same product as Dense.__call__ (the LM head has no bias)
            out = jax.lax.dot_general(hidden.astype(self.dtype), gathered, (((hidden.ndim - 1,), (0,)), ((), ())))
        else:
            out = self.lm_head(hidden)
        return constrain(out, ("activation_batch", "activation_length", "activation_vocab"))

    def audio_logits(self, hidden: jax.Array, codes: jax.Array) -> list[jax.Array]:
        """Teacher-forced audio-head logits: hidden [..., H] with the codes [..., 8] it predicts."""
        return self.audio_head(hidden, codes, self.audio_embed)

    def audio_logits_grouped(self, hidden: jax.Array, codes: jax.Array) -> list[tuple[tuple[int, ...], jax.Array]]:
        """:meth:`audio_logits` grouped by equal codebook size: [(codebooks, logits [G, ..., C+1])]."""
        return self.audio_head.grouped_logits(hidden, codes, self.audio_embed)

    # ------------------------------------------------------------------ forward

    def __call__(self, input_ids: jax.Array, audio_codes: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, cache: KVCache | None = None,
                 cache_index: jax.Array | int | None = None, compute_logits: bool = True,
                 audio_embeds: jax.Array | None = None, dropout: Dropout | None = None) -> LMOutput:
        """Forward over [B, S] ids.

        * ``positions`` [B, S]: RoPE positions (default 0..S−1, or 0..S−1 after ``cache_index``).
        * ``segment_ids`` [B, S]: packed rows; attention stays within equal non-zero ids.
        * ``attention_mask`` [B, S] (or [B, S_max] with a cache): 1 on real keys, 0 on padding.
        * ``cache`` / ``cache_index``: stacked KV cache [L, B, S_max, KV, D]; the S new tokens
          are written at slots ``cache_index .. cache_index+S−1`` and attend to every earlier slot
          allowed by ``attention_mask``.
        * ``audio_embeds`` [B, S, H]: continuous inputs at ``audio_pad`` positions instead of
          code embeddings (see :meth:`embed`).
        * ``dropout``: training-time :class:`Dropout` (None or all rates 0: deterministic).
        """
        b, s = input_ids.shape
        offset = 0 if cache is None else cache_index
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(s)[None, :] + offset, (b, s))
        t_k = s if cache is None else cache.k.shape[2]
        if cache is None and attention_mask is None and resolve_attention_impl(self.cfg.llm.attention_impl) != "einsum":
            # Training layout: a fused kernel builds the causal/segment mask itself.
            return self._forward(input_ids, audio_codes, audio_embeds, positions, CausalSegments(segment_ids),
                                 cache, cache_index, compute_logits, dropout)
        mask = causal_mask(s, t_k, offset)
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed rows) cannot be combined with a KV cache")
            mask = mask & segment_mask(segment_ids)
        if attention_mask is not None:
            if attention_mask.shape[-1] != t_k:
                raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} keys, expected {t_k}")
            mask = mask & key_padding_mask(attention_mask, s)
        mask = jnp.broadcast_to(mask, (b, s, t_k))
        return self._forward(input_ids, audio_codes, audio_embeds, positions, mask, cache, cache_index,
                             compute_logits, dropout)

    def _forward(self, input_ids, audio_codes, audio_embeds, positions, mask, cache, cache_index,
                 compute_logits, dropout: Dropout | None = None) -> LMOutput:
        with jax.named_scope("embeddings"):
            h = self.embed(input_ids, audio_codes, audio_embeds)

        num_layers = self.cfg.llm.num_layers
        drop = dropout if dropout is not None and dropout.active else None
        keys = None
        if drop is not None:
            keys = jax.random.split(drop.rng, num_layers + 1)
            h = apply_dropout(h, drop.embed, keys[-1])
            keys = keys[:-1]

        # The stacked cache rides in the carry and each layer writes its new tokens into it in
        # place (see StackedKVCache); the layer index and dropout key are the per-layer inputs.
        def body(layer, carry, xs):
            h, stack = carry
            i, key = xs
            layer_cache = None if stack is None else StackedKVCache(stack.k, stack.v, i)
            h, new = layer(h, positions, mask, layer_cache, cache_index,
                           None if key is None else drop._replace(rng=key))
            return (h, None if new is None else KVCache(new.k, new.v)), None

        with jax.named_scope("llm_layers"):
            (h, new_cache), _ = run_stack(self.layers, (h, cache), body, xs=(jnp.arange(num_layers), keys),
                                          scan=self.cfg.scan_layers, remat_policy=self.cfg.remat_policy)
            h = constrain(self.norm(h), _ACT)
        return LMOutput(self.logits(h) if compute_logits else None, h, new_cache)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        c = self.cfg.llm
        shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
        dt = self.dtype if dtype is None else dtype
        return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt))


def place_audio_codes(input_ids: np.ndarray, codes: np.ndarray, audio_pad_id: int) -> np.ndarray:
    """Scatters a packed code matrix [M, 8] (rows in row-major order of the ``audio_pad``
    positions, the reference's layout) into the aligned [B, S, 8] layout (zeros elsewhere)."""
    input_ids = np.asarray(input_ids)
    codes = np.asarray(codes)
    pads = np.argwhere(input_ids == audio_pad_id)
    if len(pads) != len(codes):
        raise ValueError(f"{len(codes)} audio code rows for {len(pads)} audio_pad positions (id {audio_pad_id})")
    out = np.zeros(input_ids.shape + (codes.shape[-1],), dtype=np.int32)
    out[pads[:, 0], pads[:, 1]] = codes
    return out


def segment_ids_from_seqlens(seqlens: np.ndarray, length: int) -> np.ndarray:
    """Reference packed layout -> segment ids: each row of ``seqlens`` holds cumulative in-row
    segment boundaries, zero padded (entries outside (0, S) are ignored); segments are numbered
    from 1 in every row."""
    seqlens = np.asarray(seqlens)
    out = np.zeros((seqlens.shape[0], length), np.int32)
    for r, row in enumerate(seqlens):
        bounds = sorted({int(v) for v in row if 0 < int(v) < length})
        edges = [0, *bounds, length]
        for i in range(len(edges) - 1):
            out[r, edges[i]:edges[i + 1]] = i + 1
    return out
