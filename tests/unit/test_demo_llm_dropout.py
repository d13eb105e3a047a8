"""Dropout of the audio LLM: off is bit-identical to the model without it, on is a seeded, inverted
dropout of the embeddings, residual branches and MLP activations that training can select."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from conftest import REPO
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, load_config
from baichuan_audio_jax.layers.mlp import dropout
from baichuan_audio_jax.models.audio_llm import AudioLLM, Dropout

SMALL = dict(hidden_size=64, intermediate_size=96, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32)


def _config():
    cfg = load_config(REPO / "configs" / "tiny.py")
    cfg.model.llm.update(SMALL)
    cfg.model.audio_head.head_dim = 32
    return cfg


def _model():
    mc = ModelConfig.from_config(_config().model)
    ids = jax.random.randint(jax.random.key(0), (2, 12), 3, 100)
    return AudioLLM(mc, rngs=nnx.Rngs(0)), ids


def test_inverted_dropout_rate_and_scale():
    x = jnp.ones((200, 500), jnp.float32)
    y = np.asarray(dropout(x, 0.25, jax.random.key(3)))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(dropout(x, 0.0, None)), np.asarray(x))


def test_off_is_identical_and_on_is_seeded():
    model, ids = _model()
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnums=2)
    def hidden(state, key, rates):
        m = nnx.merge(graphdef, state)
        return m(ids, dropout=None if rates is None else Dropout(key, *rates)).hidden

    base = np.asarray(hidden(state, jax.random.key(1), None))
    zero = np.asarray(hidden(state, jax.random.key(1), (0.0, 0.0, 0.0)))  # every rate 0: the same computation
    np.testing.assert_array_equal(zero, base)
    on = (0.1, 0.1, 0.1)
    a, b = np.asarray(hidden(state, jax.random.key(1), on)), np.asarray(hidden(state, jax.random.key(1), on))
    np.testing.assert_array_equal(a, b)  # a pure function of the key
    assert not np.allclose(a, np.asarray(hidden(state, jax.random.key(2), on)))
    assert not np.allclose(a, base)
    h = np.asarray(hidden(state, jax.random.key(1), (0.0, 0.2, 0.0)))  # one rate acts on its own
    assert np.all(np.isfinite(h)) and not np.allclose(h, base)


def test_swiglu_hidden_dropout():
    from baichuan_audio_jax.layers.mlp import SwiGLU

    mlp = SwiGLU(8, 32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 8))
    np.testing.assert_array_equal(np.asarray(mlp(x, dropout_rate=0.0, rng=None)), np.asarray(mlp(x)))
    hidden = jax.nn.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    want = mlp.down_proj(dropout(hidden, 0.5, jax.random.key(1)))
    np.testing.assert_allclose(np.asarray(mlp(x, dropout_rate=0.5, rng=jax.random.key(1))), np.asarray(want),
                               rtol=1e-6, atol=1e-6)


def test_the_training_loss_takes_its_rates_from_the_config():
    from baichuan_audio_jax.training.data_sources import SyntheticIterator
    from baichuan_audio_jax.training.tasks import get_task

    cfg = _config()
    cfg.data.batch_size, cfg.data.seq_len = 2, 32
    model = AudioLLM(ModelConfig.from_config(cfg.model), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in next(SyntheticIterator(cfg, process_index=0, process_count=1)).items()}
    task = get_task("audio_llm")
    den = task.denominators(batch, None)

    def losses(train, keys):
        f = jax.jit(lambda st, key: task.loss(nnx.merge(graphdef, st), batch, den, key, train, 0)[0])
        return [float(f(state, jax.random.key(k))) for k in keys]

    off = losses(cfg.train, (0, 1))
    assert off[0] == off[1]  # rates 0 by default: the key does not matter
    cfg.train.residual_dropout = 0.3
    on = losses(cfg.train, (0, 1))
    assert np.all(np.isfinite(on)) and on[0] != on[1] and on[0] != off[0]
