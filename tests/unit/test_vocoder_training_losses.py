"""Vocoder training pieces on a small random generator: discriminator outputs, the HiFi-GAN loss
terms, the gradient split between generator and discriminators, and the two optimisers.

Bounds: the period discriminator's fold equals per-column convolution to 1e-6 (float32 sums in
another order); each loss term is exact at its optimum (0); the generator's gradient of the
discriminator loss and the discriminators' gradient of the generator loss are exactly 0."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, default_run_config, load_config
from baichuan_audio_jax.models.discriminators import DiscriminatorConfig
from baichuan_audio_jax.training import vocoder_losses as vl
from baichuan_audio_jax.training.optimizer import TRAIN, trainable_labels
from baichuan_audio_jax.training.tasks import get_task

SMALL_VOCODER = dict(base_channels=8, f0_cond_channels=8, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
                     source_resblock_dilation_sizes=[[1], [1], [1]], f0_num_layers=1)


def _small_model_cfg() -> ModelConfig:
    cfg = load_config(REPO / "configs" / "tiny.py")
    cfg.model.vocoder.update(SMALL_VOCODER)
    return ModelConfig.from_config(cfg.model)


@pytest.fixture(scope="module")
def small():
    task = get_task("vocoder")
    cfg = _small_model_cfg()
    return task, cfg, task.make_model(cfg, nnx.Rngs(0), periods=(2, 3), resolutions=((512, 50, 240),))


def test_discriminator_widths_follow_the_generator():
    full = DiscriminatorConfig.for_generator(ModelConfig().vocoder)
    assert full.period_channels == (32, 128, 512, 1024, 1024) and full.spec_channels == 32
    tiny = DiscriminatorConfig.for_generator(_small_model_cfg().vocoder)
    assert tiny.period_channels == (4, 4, 8, 16, 16) and tiny.spec_channels == 8


def test_discriminator_outputs_and_period_fold(small):
    _, _, model = small
    disc = model.discriminator
    wave = jax.random.uniform(jax.random.key(0), (2, 3000), minval=-0.5, maxval=0.5)
    judged = disc(wave)
    assert disc.cfg.periods == (2, 3) and disc.cfg.resolutions == ((512, 50, 240),)
    n = len(disc.cfg.periods) + len(disc.cfg.resolutions)
    assert len(judged.scores) == len(judged.features) == n
    for s, f in zip(judged.scores, judged.features):
        assert s.shape[0] == 2 and s.ndim == 2 and len(f) == 6
    # period p: column j of the folded signal is wave[j::p]; each column is judged on its own
    period = disc.periods[1]
    p = period.period
    scores, _ = period(wave)
    for j in (0, p - 1):
        column = wave[:, j::p][:, : 3000 // p, None]
        x = column
        for conv in period.convs:
            x = jax.nn.leaky_relu(conv(x), period.slope)
        want = period.conv_post(x)[..., 0]
        got = scores.reshape(2, p, -1)[:, j]
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_loss_terms_vanish_at_their_optimum():
    real = [jnp.ones((2, 5)), jnp.ones((2, 3))]
    fake = [jnp.zeros((2, 5)), jnp.zeros((2, 3))]
    total, r, f = vl.discriminator_loss(real, fake)
    assert float(total) == float(r) == float(f) == 0.0
    assert float(vl.discriminator_loss(fake, real)[0]) == 4.0  # 1 per term, two sub-discriminators, both sides
    assert float(vl.generator_adversarial_loss(real)) == 0.0
    assert float(vl.generator_adversarial_loss(fake)) == 2.0
    feats = [[jnp.ones((2, 4)), jnp.full((2, 3), 2.0)]]
    assert float(vl.feature_matching(feats, feats)) == 0.0
    assert float(vl.feature_matching(feats, [[jnp.zeros((2, 4)), jnp.zeros((2, 3))]])) == pytest.approx(3.0)
    wave = jax.random.uniform(jax.random.key(0), (1, 4800), minval=-0.5, maxval=0.5)  # energy in every mel bin
    assert float(vl.mel_l1(wave, wave)) == 0.0
    assert float(vl.mel_l1(wave * 0.5, wave)) == pytest.approx(np.log(2.0), rel=1e-3)  # log-mel shifts by ln 2


def test_gradients_split_between_generator_and_discriminators(small):
    """The generator learns only from the generator loss, the discriminators only from theirs."""
    task, cfg, model = small
    train_cfg = default_run_config().train
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {"wave": jax.random.uniform(jax.random.key(1), (2, 8 * 480), minval=-0.3, maxval=0.3)}
    den = task.denominators(batch, cfg)

    @jax.jit
    def grads(params):
        def part(p, name):
            _, sums = task.loss(nnx.merge(graphdef, p, rest), batch, den, jax.random.key(2), train_cfg,
                                jnp.asarray(5, jnp.int32))
            return sums[name]
        return jax.grad(part)(params, "g_loss"), jax.grad(part)(params, "d_loss")

    g_grads, d_grads = grads(params)
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
    assert norm(g_grads["discriminator"]) == 0.0 and norm(g_grads["generator"]) > 0
    assert norm(d_grads["generator"]) == 0.0 and norm(d_grads["discriminator"]) > 0


def test_generator_and_discriminator_have_their_own_learning_rates(small):
    task, _, model = small
    train_cfg = ml_collections.ConfigDict(default_run_config().train.to_dict())
    train_cfg.warmup_steps, train_cfg.learning_rate, train_cfg.weight_decay = 0, 1e-3, 0.0
    train_cfg.vocoder.discriminator_learning_rate = 4e-3
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    labels = trainable_labels(params, get_task("vocoder").trainable(0), "voc")
    assert set(jax.tree.leaves(labels)) == {TRAIN}
    tx, _ = task.make_optimizer(train_cfg, labels, 100)
    updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)[0])(params)
    moved = lambda tree: np.concatenate([np.abs(np.asarray(x)).ravel() for x in jax.tree.leaves(tree)])
    # Adam's first step moves every element by the learning rate (the normalised gradient is 1)
    np.testing.assert_allclose(moved(updates["generator"]), 1e-3, rtol=1e-4)
    np.testing.assert_allclose(moved(updates["discriminator"]), 4e-3, rtol=1e-4)
