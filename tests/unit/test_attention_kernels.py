"""The fused attention kernels equal the reference einsum path (float32, CPU).

``xla`` is ``jax.nn.dot_product_attention``; ``splash`` is the Pallas TPU kernel run in
interpret mode. Packed rows (segment ids, 0 = padding) with the causal mask; outputs and
gradients are compared on real (non-padding) query positions, where the kernels must agree to
2e-5 (float32, highest-precision matmuls): padding queries are ignored by every loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from baichuan_audio_jax.layers.attention import CausalSegments, attention, resolve_attention_impl
from baichuan_audio_jax.sharding import make_mesh

B, T, H, KV, D = 2, 128, 4, 2, 32
TOL = dict(rtol=2e-5, atol=2e-5)


def _inputs():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, T, n, D)).astype(np.float32) for n in (H, KV, KV))
    seg = np.zeros((B, T), np.int32)
    seg[0, :50], seg[0, 50:110] = 1, 2  # two packed segments, then padding
    seg[1, :] = 1
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg)


def _loss(impl):
    def f(q, k, v, seg):
        out = attention(q, k, v, CausalSegments(seg), D ** -0.5, impl)
        real = (seg > 0)[:, :, None, None]
        return jnp.sum(jnp.where(real, out, 0.0) * jnp.sin(jnp.arange(D, dtype=jnp.float32))), out
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_fused_attention_equals_einsum(impl):
    q, k, v, seg = _inputs()
    (ref_loss, ref_out), ref_grads = _loss("einsum")(q, k, v, seg)
    (loss, out), grads = _loss(impl)(q, k, v, seg)
    real = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref_out)[real], **TOL)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-5)
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), err_msg=f"d{name}", **TOL)


def test_splash_attention_sharded_equals_einsum():
    """Under a data 2 × fsdp 2 × tensor 2 mesh splash runs per device in a shard_map (rows on the
    batch axes, heads on tensor) and still equals the reference."""
    q, k, v, seg = _inputs()
    mesh = make_mesh(1, 2, 2, devices=jax.devices()[:4])
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    args = (put(q, P("fsdp", None, "tensor")), put(k, P("fsdp", None, "tensor")), put(v, P("fsdp", None, "tensor")),
            put(seg, P("fsdp")))
    (_, ref_out), _ = _loss("einsum")(q, k, v, seg)
    with jax.set_mesh(mesh):
        (_, out), grads = _loss("splash")(*args)
    real = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref_out)[real], **TOL)


def test_auto_is_einsum_on_cpu_and_unknown_names_fail():
    assert resolve_attention_impl("auto") == "einsum"
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        resolve_attention_impl("flash")
