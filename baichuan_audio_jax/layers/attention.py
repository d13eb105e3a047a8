"""Attention: masks, rotary embeddings, the softmax kernel, and the two attention modules.

* :func:`attention`: the one entry point choosing the kernel (reference einsum,
  ``jax.nn.dot_product_attention``, Pallas splash attention on TPU).
* :class:`GQAttention`: the LLM's grouped-query attention (separate q/k/v projections with
  optional bias, RoPE, KV cache for decoding, packed segments).
* :class:`MultiHeadAttention`: Whisper-style attention of the audio stack (per-projection bias
  switches, no RoPE, padding/causal/chunk masks).

Masks are boolean ``[B, T_q, T_k]`` (True = may attend), built by the ``*_mask`` helpers and
combined with ``&``. Masked scores get the most negative finite value of float32, as the
reference's additive masks do; a query row with no visible key therefore attends uniformly
(finite), and callers zero such rows afterwards where the reference does.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from baichuan_audio_jax.layers.linear import Dense, DenseIn
from baichuan_audio_jax.sharding import constrain, logical_to_mesh_spec

_NEG = float(jnp.finfo(jnp.float32).min)


# ----------------------------------------------------------------------------- masks

def causal_mask(t_q: int, t_k: int | None = None, q_offset: jax.Array | int = 0) -> jax.Array:
    """[1, T_q, T_k]: query i (at absolute position q_offset + i) sees keys j ≤ q_offset + i."""
    t_k = t_q if t_k is None else t_k
    qi = jnp.arange(t_q)[:, None] + q_offset
    kj = jnp.arange(t_k)[None, :]
    return (kj <= qi)[None]


def key_padding_mask(key_valid: jax.Array, t_q: int) -> jax.Array:
    """[B, T_q, T_k] from a [B, T_k] validity array."""
    return jnp.broadcast_to(key_valid[:, None, :].astype(bool), (key_valid.shape[0], t_q, key_valid.shape[1]))


def length_mask(lengths: jax.Array, t: int) -> jax.Array:
    """[B, T] True on the first ``lengths[b]`` frames."""
    return jnp.arange(t)[None, :] < lengths[:, None]


def segment_mask(q_segment_ids: jax.Array, k_segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, T_q, T_k]: attend only within the same segment; segment id 0 marks padding."""
    k_segment_ids = q_segment_ids if k_segment_ids is None else k_segment_ids
    same = q_segment_ids[:, :, None] == k_segment_ids[:, None, :]
    return same & (k_segment_ids[:, None, :] != 0)


def chunk_mask(t: int, chunk_size: int) -> jax.Array:
    """[1, T, T] static block-chunk mask: key j visible to query i iff j < (i // c + 1)·c."""
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    return (j < (i // chunk_size + 1) * chunk_size)[None]


# ----------------------------------------------------------------------------- rotary

def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, head_dim] in float32, halves duplicated (NeoX layout)."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, D]; rotation in float32, result cast back to x's dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- kernel

def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          scale: float) -> jax.Array:
    """Softmax attention with grouped KV heads.

    q [B, Tq, H, D], k/v [B, Tk, KV, D] with H a multiple of KV (query head h uses KV head
    h // (H/KV)); mask broadcastable to [B, Tq, Tk]. Scores and softmax in float32.
    """
    b, tq, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    qg = q.reshape(b, tq, kv, g, d)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(b, tq, h, v.shape[-1])


# ----------------------------------------------------------------------------- fused kernels

ATTENTION_IMPLS = ("auto", "einsum", "xla", "splash")


class CausalSegments(NamedTuple):
    """A structured training mask: causal, and (if ``segment_ids`` [B, T] is given) within equal
    non-zero segment ids. Fused kernels take this instead of a materialised [B, T, T] mask."""

    segment_ids: jax.Array | None = None

    def dense(self, t: int) -> jax.Array:
        mask = causal_mask(t)
        return mask if self.segment_ids is None else mask & segment_mask(self.segment_ids)


def resolve_attention_impl(impl: str) -> str:
    """``auto`` -> splash on TPU, xla on GPU, einsum elsewhere; unknown names are an error."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.llm.attention_impl={impl!r}: expected one of {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    return {"tpu": "splash", "gpu": "xla", "cuda": "xla", "rocm": "xla"}.get(_platform(), "einsum")


def _platform() -> str:
    """The platform code is traced for: the current mesh's devices (which may be a TPU slice
    compiled ahead of time from a CPU machine), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty and getattr(mesh, "abstract_device", None) is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


def _xla_attention(q, k, v, mask: CausalSegments, scale: float) -> jax.Array:
    dense = None if mask.segment_ids is None else segment_mask(mask.segment_ids)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=dense, scale=scale, is_causal=True).astype(q.dtype)


def _splash_block(t: int) -> int:
    for b in (512, 256, 128):
        if t % b == 0:
            return b
    return t


def _splash_local(q, k, v, segment_ids, scale: float, interpret: bool) -> jax.Array:
    """Splash attention on one device's shard: q [b, T, H, D], k/v [b, T, KV, D]."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa  # lazy: TPU-only kernel module

    b, t, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    blk = _splash_block(t)
    sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                          block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    kernel = sa.make_splash_mqa(sa.MultiHeadMask([sa.CausalMask((t, t))] * g), block_sizes=sizes,
                                head_shards=1, q_seq_shards=1, interpret=interpret)
    qs = jnp.transpose((q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, g, d), (0, 2, 3, 1, 4))  # [b,KV,g,T,D]
    ks = jnp.transpose(k, (0, 2, 1, 3))  # [b, KV, T, D]
    vs = jnp.transpose(v, (0, 2, 1, 3))

    def one_row(qr, kr, vr, seg):
        ids = None if seg is None else sa.SegmentIds(q=seg, kv=seg)
        return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(qr, kr, vr)

    if segment_ids is None:
        out = jax.vmap(lambda qr, kr, vr: one_row(qr, kr, vr, None))(qs, ks, vs)
    else:
        out = jax.vmap(one_row)(qs, ks, vs, segment_ids.astype(jnp.int32))
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h, v.shape[-1]).astype(q.dtype)


def _splash_attention(q, k, v, mask: CausalSegments, scale: float) -> jax.Array:
    """Splash attention under the current mesh: a ``shard_map`` with rows on the batch axes and
    heads on ``tensor`` (when both q and KV heads divide), the kernel per device."""
    interpret = _platform() != "tpu"
    mesh = jax.sharding.get_abstract_mesh()
    seg = mask.segment_ids
    if mesh is None or mesh.empty:
        return _splash_local(q, k, v, seg, scale, interpret)
    spec_q = logical_to_mesh_spec(("activation_batch", "activation_length", "activation_heads", None), q.shape, mesh)
    spec_k = logical_to_mesh_spec(("activation_batch", "activation_length", "activation_kv_heads", None),
                                  k.shape, mesh)
    if spec_q[2] != spec_k[2]:  # heads split but KV heads not (or the reverse): keep heads whole
        spec_q = P(spec_q[0], None, None, None)
        spec_k = P(spec_k[0], None, None, None)
    spec_seg = P(spec_q[0], None)
    fn = lambda q_, k_, v_, s_: _splash_local(q_, k_, v_, s_, scale, interpret)
    if seg is None:
        fn1 = lambda q_, k_, v_: _splash_local(q_, k_, v_, None, scale, interpret)
        return jax.shard_map(fn1, in_specs=(spec_q, spec_k, spec_k), out_specs=spec_q, check_vma=False)(q, k, v)
    return jax.shard_map(fn, in_specs=(spec_q, spec_k, spec_k, spec_seg), out_specs=spec_q,
                         check_vma=False)(q, k, v, seg)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | CausalSegments | None, scale: float,
              impl: str = "einsum") -> jax.Array:
    """The one attention entry point: q [B, Tq, H, D], k/v [B, Tk, KV, D] -> [B, Tq, H, D].

    ``mask`` is a boolean [B, Tq, Tk] array (always the reference einsum path) or a
    :class:`CausalSegments` (self-attention over equal lengths), which ``impl`` may run with a
    fused kernel: ``xla`` (``jax.nn.dot_product_attention``), ``splash`` (Pallas, TPU; interpret
    mode on other platforms), ``einsum`` (reference), ``auto`` (by platform). Fused kernels give
    padding queries (segment id 0) outputs of their own; callers ignore those positions.
    """
    impl = resolve_attention_impl(impl)
    if isinstance(mask, CausalSegments):
        if impl == "xla":
            return _xla_attention(q, k, v, mask, scale)
        if impl == "splash":
            return _splash_attention(q, k, v, mask, scale)
        mask = mask.dense(q.shape[1])
    return dot_product_attention(q, k, v, mask, scale)


# ----------------------------------------------------------------------------- KV cache

class KVCache(NamedTuple):
    """Per-layer cache: k/v [B, S_max, KV, D]; the layer stack holds them with a leading L axis."""

    k: jax.Array
    v: jax.Array

    @staticmethod
    def zeros(batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype) -> "KVCache":
        shape = (batch, max_len, num_kv_heads, head_dim)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def write(self, k: jax.Array, v: jax.Array, index: jax.Array) -> "KVCache":
        """The cache with k/v [B, T, KV, D] stored at slots ``index .. index+T−1``."""
        return KVCache(jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), (0, index, 0, 0)),
                       jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), (0, index, 0, 0)))

    def read(self) -> tuple[jax.Array, jax.Array]:
        return self.k, self.v


class StackedKVCache(NamedTuple):
    """The whole stack's cache k/v [L, B, S_max, KV, D] as seen by layer ``layer`` (traced).

    Decoding carries the stacked cache through the layer loop and each layer writes only its new
    tokens into it, in place; handing each layer its own slice instead (a per-layer scan input
    and output) copies every layer's whole cache on every step, which at batch > 1 costs more
    than the step's matmuls."""

    k: jax.Array
    v: jax.Array
    layer: jax.Array

    def write(self, k: jax.Array, v: jax.Array, index: jax.Array) -> "StackedKVCache":
        start = (self.layer, 0, index, 0, 0)
        return self._replace(k=jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), start),
                             v=jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), start))

    def read(self) -> tuple[jax.Array, jax.Array]:
        return (jax.lax.dynamic_index_in_dim(self.k, self.layer, keepdims=False),
                jax.lax.dynamic_index_in_dim(self.v, self.layer, keepdims=False))


# ----------------------------------------------------------------------------- modules

class GQAttention(nnx.Module):
    """Grouped-query attention with RoPE (the LLM's self-attention)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope_theta: float, qkv_bias: bool = True, attention_impl: str = "einsum", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta = rope_theta
        self.attention_impl = attention_impl
        self.dtype = dtype
        kw = dict(in_axis="embed", use_bias=qkv_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Dense(hidden_size, (num_heads, head_dim), out_axes=("heads", "head_dim"), **kw)
        self.k_proj = Dense(hidden_size, (num_kv_heads, head_dim), out_axes=("kv_heads", "head_dim"), **kw)
        self.v_proj = Dense(hidden_size, (num_kv_heads, head_dim), out_axes=("kv_heads", "head_dim"), **kw)
        self.o_proj = DenseIn((num_heads, head_dim), hidden_size, in_axes=("heads", "head_dim"),
                              out_axis="embed", use_bias=False, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | CausalSegments | None,
                 cache: KVCache | StackedKVCache | None = None, cache_index: jax.Array | int | None = None
                 ) -> tuple[jax.Array, KVCache | StackedKVCache | None]:
        """x [B, T, E]; positions [B, T] (RoPE positions); mask [B, T, T_k] over the keys attended,
        or :class:`CausalSegments` (no cache) for a fused kernel (``attention_impl``).

        With a cache, the T new keys/values are written at ``cache_index`` and attention runs over
        the whole cache (T_k = S_max); the mask must then cover S_max keys.
        """
        q = constrain(self.q_proj(x), ("activation_batch", "activation_length", "activation_heads", None))
        k = constrain(self.k_proj(x), ("activation_batch", "activation_length", "activation_kv_heads", None))
        v = constrain(self.v_proj(x), ("activation_batch", "activation_length", "activation_kv_heads", None))
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        new_cache = None
        if cache is not None:
            new_cache = cache.write(k, v, jnp.asarray(cache_index, jnp.int32))
            ck, cv = new_cache.read()
            k, v = ck.astype(self.dtype), cv.astype(self.dtype)
        out = attention(q, k, v, mask, self.head_dim ** -0.5, self.attention_impl)
        out = constrain(out, ("activation_batch", "activation_length", "activation_heads", None))
        return self.o_proj(out), new_cache


class MultiHeadAttention(nnx.Module):
    """Whisper-style attention: q/k/v/out projections with per-projection bias switches.

    ``inner_dim = num_heads × head_dim`` may differ from the model width (the U-Net's blocks).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, *, q_bias: bool = True,
                 k_bias: bool = False, v_bias: bool = True, out_bias: bool = True, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        head_dim = head_dim or dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        kw = dict(in_axis="embed", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Dense(dim, (num_heads, head_dim), out_axes=("heads", "head_dim"), use_bias=q_bias, **kw)
        self.k_proj = Dense(dim, (num_heads, head_dim), out_axes=("heads", "head_dim"), use_bias=k_bias, **kw)
        self.v_proj = Dense(dim, (num_heads, head_dim), out_axes=("heads", "head_dim"), use_bias=v_bias, **kw)
        self.out_proj = DenseIn((num_heads, head_dim), dim, in_axes=("heads", "head_dim"), out_axis="embed",
                                use_bias=out_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x [B, T, dim] -> [B, T, dim]; q/k/v/output keep rows split by ``activation_batch``."""
        heads = ("activation_batch", "activation_length", "activation_heads", None)
        q, k, v = (constrain(p(x), heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = constrain(dot_product_attention(q, k, v, mask, self.head_dim ** -0.5), heads)
        return constrain(self.out_proj(out), ("activation_batch", "activation_length", "activation_embed"))
