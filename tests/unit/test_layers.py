"""Core layers against direct formulas (and PyTorch where the semantics are PyTorch's)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_torch
from flax import nnx

from baichuan_audio_jax.layers.attention import apply_rope, chunk_mask, dot_product_attention, rope_cos_sin
from baichuan_audio_jax.layers.conv import conv1d, conv_transpose1d
from baichuan_audio_jax.layers.norms import GroupNorm, RMSNorm
from baichuan_audio_jax.layers.sinusoids import sinusoid_table


def test_gqa_equals_attention_with_repeated_kv_heads():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
    k = rng.normal(size=(2, 7, 2, 8)).astype(np.float32)
    v = rng.normal(size=(2, 7, 2, 8)).astype(np.float32)
    mask = rng.random((2, 5, 7)) > 0.3
    mask[..., 0] = True
    out = np.asarray(dot_product_attention(q, k, v, mask, 0.3))
    kr, vr = np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2)  # head h uses kv head h // 3
    s = np.einsum("bqhd,bkhd->bhqk", q, kr) * 0.3
    s = np.where(mask[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", p, vr), atol=1e-5)


def test_rope_rotates_pairs_of_halves_and_is_relative():
    x = np.random.default_rng(1).normal(size=(1, 4, 2, 16)).astype(np.float32)
    pos = np.arange(4)[None]
    cos, sin = rope_cos_sin(jnp.asarray(pos), 16, 1e6)
    y = np.asarray(apply_rope(jnp.asarray(x), cos, sin))
    ang = pos[0, :, None] / (1e6 ** (np.arange(8) * 2 / 16))
    x1, x2 = x[..., :8], x[..., 8:]
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    np.testing.assert_allclose(y, np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1), atol=1e-5)
    # q·k depends only on the position difference
    cos5, sin5 = rope_cos_sin(jnp.asarray(pos + 5), 16, 1e6)
    y5 = np.asarray(apply_rope(jnp.asarray(x), cos5, sin5))
    np.testing.assert_allclose(np.einsum("d,d", y[0, 3, 0], y[0, 1, 1]), np.einsum("d,d", y5[0, 3, 0], y5[0, 1, 1]),
                               rtol=1e-4)


def test_chunk_mask_is_block_causal():
    m = np.asarray(chunk_mask(250, 100))[0]
    assert m[0, 99] and not m[0, 100] and m[150, 199] and not m[150, 200] and m[249, 249]


def test_group_norm_with_lengths_ignores_padding():
    gn = GroupNorm(1, 6, rngs=nnx.Rngs(0))
    x = np.random.default_rng(2).normal(size=(1, 10, 6)).astype(np.float32)
    alone = np.asarray(gn(jnp.asarray(x[:, :7]), jnp.array([7])))
    padded = np.concatenate([x[:, :7], 100 * np.ones((1, 3, 6), np.float32)], axis=1)
    np.testing.assert_allclose(np.asarray(gn(jnp.asarray(padded), jnp.array([7])))[:, :7], alone, atol=1e-6)
    ref = (x[:, :7] - x[:, :7].mean()) / np.sqrt(x[:, :7].var() + 1e-5)
    np.testing.assert_allclose(alone, ref, atol=1e-5)


def test_rms_norm_formula():
    norm = RMSNorm(4, eps=1e-6, rngs=nnx.Rngs(0))
    x = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)
    np.testing.assert_allclose(np.asarray(norm(x)), x / np.sqrt((x ** 2).mean() + 1e-6), rtol=1e-6)


def test_sinusoid_table_layout():
    t = sinusoid_table(10, 8)
    w = np.exp(-np.log(10000) / 3 * np.arange(4))
    np.testing.assert_allclose(t[7], np.concatenate([np.sin(7 * w), np.cos(7 * w)]), atol=1e-6)


@pytest.mark.parametrize("cin,cout,k,stride,pad,dil", [(5, 7, 3, 4, 0, 1), (6, 4, 16, 8, 4, 1), (4, 3, 11, 5, 3, 1),
                                                        (4, 4, 7, 1, 9, 3)])
def test_convolutions_follow_pytorch(cin, cout, k, stride, pad, dil):
    torch = requires_torch()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, cin, 13)).astype(np.float32)
    w = rng.normal(size=(cin, cout, k)).astype(np.float32)
    ref = torch.nn.functional.conv_transpose1d(torch.tensor(x), torch.tensor(w), stride=stride, padding=pad,
                                               dilation=dil).numpy()
    ours = conv_transpose1d(jnp.asarray(x.transpose(0, 2, 1)), jnp.asarray(w.transpose(2, 0, 1)), stride=stride,
                            padding=pad, dilation=dil)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1), ref, atol=1e-4)
    w2 = rng.normal(size=(cout, cin, k)).astype(np.float32)
    ref = torch.nn.functional.conv1d(torch.tensor(x), torch.tensor(w2), stride=stride, padding=pad,
                                     dilation=dil).numpy()
    ours = conv1d(jnp.asarray(x.transpose(0, 2, 1)), jnp.asarray(w2.transpose(2, 1, 0)), stride=stride, padding=pad,
                  dilation=dil)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1), ref, atol=1e-4)


def test_remat_policies_do_not_change_gradients():
    from baichuan_audio_jax.layers.remat import REMAT_POLICIES, remat

    f = lambda w, x: jnp.sum(jnp.tanh(x @ w) @ w)  # noqa: E731
    w = jnp.asarray(np.random.default_rng(4).normal(size=(4, 4)), jnp.float32)
    x = jnp.ones((3, 4))
    ref = jax.grad(f)(w, x)
    for name in REMAT_POLICIES:
        if name == "offload_dots":
            continue  # needs a host memory space (accelerators)
        np.testing.assert_allclose(np.asarray(jax.grad(remat(f, name))(w, x)), np.asarray(ref), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown remat_policy"):
        remat(f, "sometimes")
