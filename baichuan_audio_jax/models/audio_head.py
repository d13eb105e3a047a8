"""The audio head: a depth transformer over the 8 RVQ codebooks of one audio frame (§4.11).

Input: the LLM's final-normed hidden state ``x`` at the position before the frame, and the
frame's codes. The depth sequence has 8 positions: position 0 is ``x``; position j ≥ 1 is the
running sum of the code embeddings of codebooks 0..j−1 (the LLM's audio embedding tables) —
it does **not** include ``x``. Each layer: causal MHA on RMSNorm(y); ``r = RMSNorm(y + attn)``
replaces the residual stream; ``y = r + FFN_j(r)`` with position-specific FFN weights and no
bias. A final RMSNorm feeds one classifier per codebook with ``C_k + 1`` classes (EOS last).

Two forms give the same logits:

* :meth:`AudioHead.__call__` runs all 8 positions at once (training, teacher forcing), with the
  depth axis first (``[8, N, H]``): the position-specific FFN is then a plain batched matmul
  over contiguous blocks, where a ``[N, 8, H]`` layout made XLA transpose its inputs and
  outputs to and from that order on every layer, forward and backward;
* :meth:`AudioHead.decode_step` runs one position against a small depth KV cache (generation:
  codebook i's input needs the code sampled for codebook i−1).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.config import NUM_CODEBOOKS, ModelConfig
from baichuan_audio_jax.layers.attention import KVCache, MultiHeadAttention, causal_mask, dot_product_attention
from baichuan_audio_jax.layers.embed import Embed
from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.layers.mlp import gelu
from baichuan_audio_jax.layers.norms import RMSNorm
from baichuan_audio_jax.layers.params import fan_in_normal, param
from baichuan_audio_jax.layers.stack import run_stack, stacked
from baichuan_audio_jax.sharding import constrain

# Logical names of the head's activations: rows (B·K audio positions) split like the batch,
# never laid out by the fsdp-sharded weights (see baichuan_audio_jax.sharding).
_ROWS = ("activation_batch", "activation_embed")
_DEPTH = ("activation_depth", "activation_batch", "activation_embed")  # depth-major [8, N, H]
_DEPTH_MLP = ("activation_depth", "activation_batch", "activation_mlp")
_LOGITS = ("activation_batch", "activation_audio_vocab")


class DepthFFN(nnx.Module):
    """Per-depth-position FFN: f_l = W2_l · GELU(W1_l · r_l), no bias."""

    def __init__(self, dim: int, hidden: int, depth: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.w1 = param(rngs, fan_in_normal(in_axis=1), (depth, dim, hidden), ("depth", "embed", "mlp"), param_dtype)
        self.w2 = param(rngs, fan_in_normal(in_axis=1), (depth, hidden, dim), ("depth", "mlp", "embed"), param_dtype)

    def __call__(self, r: jax.Array, position: int | jax.Array | None = None) -> jax.Array:
        """r [D, N, dim] over all depth positions (depth first), or [N, dim] at one (static or
        traced) ``position``."""
        if isinstance(self.w1, nnx.List):  # split by position (split_positions)
            return self._call_split(r, position)
        w1, w2 = self.w1[...].astype(self.dtype), self.w2[...].astype(self.dtype)
        if position is None:
            h = constrain(gelu(jnp.einsum("lnd,ldt->lnt", r, w1)), _DEPTH_MLP)
            return constrain(jnp.einsum("lnt,ltd->lnd", h, w2), _DEPTH)
        h = gelu(r @ w1[position])
        return h @ w2[position]

    def split_positions(self) -> None:
        """Gives every depth position its own weight arrays (decoding on CPU: a traced position's
        slice of the stacked weights is copied out on every call; see ``layers/stack.unstack``)."""
        if isinstance(self.w1, nnx.List):
            return
        for name in ("w1", "w2"):
            var = getattr(self, name)
            names = tuple(var.get_metadata().get("out_sharding") or ())[1:]
            setattr(self, name, nnx.List([var.replace(var.get_value()[i], out_sharding=names or None)
                                          for i in range(var.shape[0])]))

    def _call_split(self, r: jax.Array, position: int | jax.Array | None) -> jax.Array:
        def at(i: int, r: jax.Array) -> jax.Array:
            return gelu(r @ self.w1[i][...].astype(self.dtype)) @ self.w2[i][...].astype(self.dtype)

        if position is None:
            return jnp.stack([at(i, r[i]) for i in range(len(self.w1))])
        if isinstance(position, int):
            return at(position, r)
        return jax.lax.switch(position, [lambda r, i=i: at(i, r) for i in range(len(self.w1))], r)


class DepthLayer(nnx.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, eps: float, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = RMSNorm(dim, eps=eps, **kw)
        self.attn = MultiHeadAttention(dim, num_heads, head_dim, q_bias=True, k_bias=True, v_bias=True,
                                       out_bias=True, **kw)
        self.norm2 = RMSNorm(dim, eps=eps, **kw)
        self.ffn = DepthFFN(dim, 2 * dim, NUM_CODEBOOKS, **kw)

    def __call__(self, y: jax.Array) -> jax.Array:
        """y [D, N, dim] (depth first) -> [D, N, dim]."""
        with jax.named_scope("depth_attention"):
            a = self._attend(self.norm1(y))
        r = constrain(self.norm2(y + a), _DEPTH)
        with jax.named_scope("depth_ffn"):
            return constrain(r + self.ffn(r), _DEPTH)

    def _attend(self, x: jax.Array) -> jax.Array:
        """Causal self-attention over the depth axis of x [D, N, dim] (the module's projections;
        the kernel sees rows first, [N, D, heads, head_dim])."""
        attn = self.attn
        heads = ("activation_depth", "activation_batch", "activation_heads", None)
        q, k, v = (jnp.swapaxes(constrain(p(x), heads), 0, 1) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        out = dot_product_attention(q, k, v, causal_mask(x.shape[0]), attn.head_dim ** -0.5)
        return constrain(attn.out_proj(constrain(jnp.swapaxes(out, 0, 1), heads)), _DEPTH)

    def step(self, y: jax.Array, position: int | jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """y [B, dim] at depth ``position`` (static or traced); cache k/v [B, 8, heads, head_dim]."""
        n = self.norm1(y)[:, None, :]
        attn = self.attn
        q, k, v = attn.q_proj(n), attn.k_proj(n), attn.v_proj(n)
        ck = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, position, 0, 0))
        cv = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, position, 0, 0))
        mask = (jnp.arange(ck.shape[1]) <= position)[None, None, :]
        a = attn.out_proj(dot_product_attention(q, ck.astype(q.dtype), cv.astype(q.dtype), mask,
                                                attn.head_dim ** -0.5))[:, 0]
        r = self.norm2(y + a)
        return r + self.ffn(r, position), KVCache(ck, cv)


class AudioHead(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h = cfg.llm.hidden_size
        hc = cfg.audio_head
        if h % hc.head_dim:
            raise ValueError(f"audio head: hidden_size {h} is not a multiple of head_dim {hc.head_dim}")
        self.num_heads, self.head_dim = h // hc.head_dim, hc.head_dim
        self.scan = cfg.scan_layers
        self.remat_policy = cfg.remat_policy
        self.codebook_sizes = tuple(cfg.codebook_sizes)
        if len(self.codebook_sizes) != NUM_CODEBOOKS:
            raise ValueError(f"the audio head needs {NUM_CODEBOOKS} codebooks, got {self.codebook_sizes}")
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.layers = stacked(
            lambda r: DepthLayer(h, self.num_heads, self.head_dim, hc.rms_norm_eps, rngs=r, **kw),
            hc.num_layers, rngs)
        self.headnorm = RMSNorm(h, eps=hc.rms_norm_eps, rngs=rngs, **kw)
        self.heads = nnx.List([
            Dense(h, c + 1, in_axis="embed", out_axes="audio_vocab", use_bias=True, rngs=rngs, **kw)
            for c in self.codebook_sizes])

    # ------------------------------------------------------------------ full form

    def depth_inputs(self, x: jax.Array, codes: jax.Array, audio_embed: Sequence[Embed]) -> jax.Array:
        """[8, N, H] (depth first): x [N, H], then cumulative sums of the embeddings of codes 0..6."""
        embs = [constrain(audio_embed[k](codes[:, k]), _ROWS) for k in range(NUM_CODEBOOKS - 1)]
        cum = jnp.cumsum(constrain(jnp.stack(embs), _DEPTH), axis=0)
        return constrain(jnp.concatenate([x[None].astype(self.dtype), cum.astype(self.dtype)]), _DEPTH)

    def __call__(self, x: jax.Array, codes: jax.Array, audio_embed: Sequence[Embed]) -> list[jax.Array]:
        """x [B, H], codes [B, 8] (column i in [0, C_i]) -> 8 logits [B, C_i + 1].

        Leading batch dimensions may be more than one (e.g. [B, S, H] and [B, S, 8]).
        """
        out: list[jax.Array | None] = [None] * NUM_CODEBOOKS
        for ks, lg in self.grouped_logits(x, codes, audio_embed):
            for j, k in enumerate(ks):
                out[k] = lg[j]
        return out

    def grouped_logits(self, x: jax.Array, codes: jax.Array, audio_embed: Sequence[Embed]
                       ) -> list[tuple[tuple[int, ...], jax.Array]]:
        """As :meth:`__call__`, grouped by equal codebook size, group axis first:
        [(codebooks, logits [G, ..., C+1])]."""
        lead = x.shape[:-1]
        with jax.named_scope("audio_head"):
            x2 = constrain(x.reshape(-1, x.shape[-1]), _ROWS)
            c2 = constrain(codes.reshape(-1, codes.shape[-1]), ("activation_batch", "activation_codebooks"))
            y = self.depth_inputs(x2, c2, audio_embed)
            y, _ = run_stack(self.layers, y, lambda layer, c, _: (layer(c), None), scan=self.scan,
                             remat_policy=self.remat_policy)
            y = constrain(self.headnorm(y), _DEPTH)
            return [(ks, lg.reshape(lg.shape[0], *lead, lg.shape[-1])) for ks, lg in self.classify(y)]

    def codebook_groups(self) -> list[tuple[int, ...]]:
        """Codebooks with equal class counts, in order (real sizes: (0,), (1,), (2,), (3..7))."""
        groups: dict[int, list[int]] = {}
        for k, c in enumerate(self.codebook_sizes):
            groups.setdefault(c, []).append(k)
        return [tuple(v) for v in groups.values()]

    def classify(self, y: jax.Array) -> list[tuple[tuple[int, ...], jax.Array]]:
        """The 8 classifiers on the normed depth outputs y [8, N, H], one batched product per
        group of equal-sized codebooks: [(codebooks, logits [len(codebooks), N, C + 1]), ...]."""
        out = []
        for ks in self.codebook_groups():
            w = jnp.stack([self.heads[k].kernel[...] for k in ks]).astype(self.dtype)  # [G, H, C]
            b = jnp.stack([self.heads[k].bias[...] for k in ks]).astype(self.dtype)  # [G, C]
            yk = y[ks[0]:ks[-1] + 1] if ks == tuple(range(ks[0], ks[-1] + 1)) else y[list(ks)]
            lg = jnp.einsum("gnh,ghc->gnc", yk.astype(self.dtype), w) + b[:, None, :]
            out.append((ks, constrain(lg, ("activation_depth", "activation_batch", "activation_audio_vocab"))))
        return out

    # ------------------------------------------------------------------ incremental form

    def init_cache(self, batch: int) -> KVCache:
        n = len(self.codebook_sizes)
        num_layers = len(self.layers) if isinstance(self.layers, nnx.List) else (
            jax.tree.leaves(nnx.state(self.layers))[0].shape[0])
        shape = (num_layers, batch, n, self.num_heads, self.head_dim)
        return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))

    def decode_trunk(self, inp: jax.Array, position: int | jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """The depth transformer's output [B, H] at ``position`` (static or traced) given that
        position's depth input [B, H]; the classifier is applied by :meth:`decode_step`."""
        def body(layer, y, layer_cache):
            y, new = layer.step(y, position, layer_cache)
            return y, new

        return run_stack(self.layers, inp.astype(self.dtype), body, xs=cache, scan=self.scan)

    def decode_step(self, inp: jax.Array, position: int, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Logits of codebook ``position`` (static) given that position's depth input [B, H].

        ``inp`` is x for position 0, else the running sum of code embeddings 0..position−1.
        """
        y, new_cache = self.decode_trunk(inp, position, cache)
        return self.heads[position](self.headnorm(y)), new_cache
