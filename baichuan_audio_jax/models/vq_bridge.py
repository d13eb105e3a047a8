"""The VQ bridge: 50 Hz encoder states -> 12.5 Hz tokens of 8 residual codes, and back
(reference §3.4, §4.3–4.4, G7, G8).

Encode (``avg_pooler`` = 4 frames per token, width D -> 4D)::

    x padded with zero frames to a multiple of 4
    g, u = gate_proj(x), up_proj(x)          # Conv1d k4 stride 4, no bias
    xr   = x.reshape(B, T/4, 4D)             # frame-major: [x_4n; x_4n+1; x_4n+2; x_4n+3]
    z    = layer_norm(down_proj(silu(g)·u) + xr)
    codes = 8-stage residual VQ of z         # token n valid iff n < E // 4

Each RVQ stage works in float32: the residual is up-cast, the nearest codebook vector is the one
of smallest ``sqrt(max(0, |r|² + |e|² − 2 r·e))`` (lowest index on ties; the matmul is forced to
full float32 precision so TPUs search as exactly as CPUs), and the new residual
``f32(r) − f32(e)`` is cast back to the compute dtype before the next stage.

Decode: ``s = Σ_k e_k[c_k]`` summed in float32 from codebook 7 down to 0 (:meth:`recover`), cast
to the compute dtype, then ``proj_decoder`` (4D -> D, :meth:`decode`).

The codebooks (``embed`` [C_k, 4D]) and their EMA statistics (``cluster_size`` [C_k],
``embed_avg`` [C_k, 4D]) are :class:`Codebook` variables, not :class:`flax.nnx.Param`: training
updates them by exponential moving averages, never by gradients, and optimizers built over
``nnx.Param`` leave them alone. They are kept in float32 whatever ``param_dtype`` is (the
released checkpoint stores them in float32 too).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.config import NUM_CODEBOOKS, ModelConfig
from baichuan_audio_jax.layers.conv import Conv1d
from baichuan_audio_jax.layers.linear import Dense
from baichuan_audio_jax.layers.norms import LayerNorm
from baichuan_audio_jax.layers.transformer import zero_padding

PADDING_CODE = -1  # code value at positions past a sample's token count


class Codebook(nnx.Variable):
    """RVQ codebook state: vectors and EMA statistics, updated by moving averages (not gradients)."""


def codebook_variable(value: jax.Array, axes: tuple) -> Codebook:
    if len(axes) != value.ndim:
        raise ValueError(f"{len(axes)} axis names {axes} for a codebook array of shape {value.shape}")
    return Codebook(value, out_sharding=tuple(axes), eager_sharding=False)


class VectorQuantizer(nnx.Module):
    """One RVQ stage: a Euclidean codebook with nearest-neighbour search."""

    def __init__(self, codebook_size: int, dim: int, *, rngs: nnx.Rngs):
        embed = jax.random.normal(rngs.params(), (codebook_size, dim), jnp.float32)
        self.embed = codebook_variable(embed, ("audio_vocab", "codebook_dim"))
        self.cluster_size = codebook_variable(jnp.zeros((codebook_size,), jnp.float32), ("audio_vocab",))
        self.embed_avg = codebook_variable(embed, ("audio_vocab", "codebook_dim"))

    def distances(self, r: jax.Array) -> jax.Array:
        """[..., C] float32 Euclidean distances of r [..., dim] to every codebook vector."""
        r = r.astype(jnp.float32)
        e = self.embed[...].astype(jnp.float32)
        dot = jnp.einsum("...d,cd->...c", r, e, precision=jax.lax.Precision.HIGHEST)
        sq = jnp.sum(r * r, axis=-1, keepdims=True) - 2.0 * dot + jnp.sum(e * e, axis=-1)
        return jnp.sqrt(jnp.maximum(sq, 0.0))

    def nearest(self, r: jax.Array) -> jax.Array:
        """int32 [...] index of the nearest codebook vector (the first one on ties)."""
        return jnp.argmin(self.distances(r), axis=-1).astype(jnp.int32)

    def lookup(self, codes: jax.Array) -> jax.Array:
        """[..., dim] float32 codebook vectors (codes clipped into range)."""
        e = self.embed[...].astype(jnp.float32)
        return jnp.take(e, jnp.clip(codes, 0, e.shape[0] - 1), axis=0)


class VQBridge(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        c = cfg.vq_bridge
        if len(c.codebook_sizes) != NUM_CODEBOOKS:
            raise ValueError(f"the VQ bridge needs {NUM_CODEBOOKS} codebook sizes, got {c.codebook_sizes}")
        self.pooler = c.avg_pooler
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, wide = c.d_model, c.intermediate_dim
        conv = dict(stride=c.avg_pooler, use_bias=False, axes=("conv_kernel", "embed", "mlp"), **kw)
        self.gate_proj = Conv1d(d, wide, c.avg_pooler, **conv)
        self.up_proj = Conv1d(d, wide, c.avg_pooler, **conv)
        self.down_proj = Dense(wide, wide, in_axis="mlp", out_axes="codebook_dim", use_bias=False, **kw)
        self.layer_norm = LayerNorm(wide, eps=c.layer_norm_eps, **kw)
        self.proj_decoder = Dense(wide, d, in_axis="codebook_dim", out_axes="embed", use_bias=True, **kw)
        self.quantizers = nnx.List([VectorQuantizer(size, wide, rngs=rngs) for size in c.codebook_sizes])

    def token_lengths(self, encoder_lengths: jax.Array) -> jax.Array:
        """N = E // avg_pooler (a trailing partial group of frames is dropped)."""
        return encoder_lengths // self.pooler

    # ------------------------------------------------------------------ encode

    def pre_quantize(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        """z [B, ceil(T/4), 4D]: the LayerNorm output that the RVQ quantises (every group, valid
        or not), from encoder states x [B, T, D] with ``lengths`` E."""
        x = zero_padding(x.astype(self.dtype), lengths)
        b, t, d = x.shape
        extra = -t % self.pooler
        if extra:
            x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
        gated = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        residual = x.reshape(b, (t + extra) // self.pooler, d * self.pooler)
        return self.layer_norm(self.down_proj(gated) + residual)

    def quantize(self, z: jax.Array) -> jax.Array:
        """int32 [..., 8] residual codes of z [..., 4D]."""
        codes, r = [], z
        for vq in self.quantizers:
            idx = vq.nearest(r)
            codes.append(idx)
            r = (r.astype(jnp.float32) - vq.lookup(idx)).astype(z.dtype)
        return jnp.stack(codes, axis=-1)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Encoder states [B, T, D] with lengths E -> (codes int32 [B, ceil(T/4), 8], N [B]);
        codes past N_b are :data:`PADDING_CODE`."""
        lengths = jnp.asarray(lengths, jnp.int32)
        codes = self.quantize(self.pre_quantize(x, lengths))
        n = self.token_lengths(lengths)
        valid = (jnp.arange(codes.shape[1])[None, :] < n[:, None])[..., None]
        return jnp.where(valid, codes, PADDING_CODE), n

    # ------------------------------------------------------------------ decode

    def recover(self, codes: jax.Array) -> jax.Array:
        """[..., 4D] float32 sum of the codes' vectors, accumulated from codebook 7 down to 0."""
        s = jnp.zeros(codes.shape[:-1] + (self.quantizers[0].embed[...].shape[-1],), jnp.float32)
        for k in reversed(range(NUM_CODEBOOKS)):
            s = s + self.quantizers[k].lookup(codes[..., k])
        return s

    def decode(self, codes: jax.Array) -> jax.Array:
        """[..., D] audio-decoder input: proj_decoder(recover(codes)) in the compute dtype."""
        return self.proj_decoder(self.recover(codes).astype(self.dtype))
