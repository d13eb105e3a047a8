"""The encoder's ASR pretraining task: SpecAugment properties, speed perturbation of the waveform,
the CTC loss falling on a tiny model, and a pipeline batch the task accepts."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO
from flax import nnx

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.config import ModelConfig, load_config
from baichuan_audio_jax.training.encoder_asr_task import ctc_loss, denominators, greedy_decode, make_model, spec_augment
from data_pipelines.audio_pipeline import RandomSpeed, speed_perturbed
from data_pipelines.demo_corpus import TRAIN_MANIFEST
from data_pipelines.demo_corpus.make_corpus import VOCABULARY

CFG = load_config(REPO / "configs" / "encoder_asr_tiny.py")
MODEL = ModelConfig.from_config(CFG.model)


def _features(seed=0, b=3, t=60, f=16):
    x = jax.random.normal(jax.random.key(seed), (b, t, f))
    lengths = jnp.array([60, 41, 17], jnp.int32)[:b]
    return x, lengths


def test_spec_augment_masks_bounded_spans_with_the_row_mean():
    x, lengths = _features()
    y = spec_augment(jax.random.key(1), x, lengths, freq_masks=2, freq_width=3, time_masks=2, time_width=0.1)
    x, y = np.asarray(x), np.asarray(y)
    assert y.shape == x.shape
    for b, n in enumerate(np.asarray(lengths).tolist()):
        np.testing.assert_array_equal(y[b, n:], x[b, n:])  # padding untouched
        changed = y[b, :n] != x[b, :n]
        mean = x[b, :n].mean()
        np.testing.assert_allclose(y[b, :n][changed], mean, rtol=1e-6)  # filled with the row mean
        rows = np.all(changed, axis=1)  # masked time frames (every bin)
        cols = np.all(changed, axis=0)  # masked bins (every frame)
        assert rows.sum() <= 2 * int(n * 0.1)
        assert cols.sum() <= 2 * 3
        # every changed element lies in a masked frame or a masked bin
        assert np.all(changed <= (rows[:, None] | cols[None, :]))
    # same key, same masks; masks off: the identity
    y2 = spec_augment(jax.random.key(1), jnp.asarray(x), lengths, freq_masks=2, freq_width=3, time_masks=2,
                      time_width=0.1)
    np.testing.assert_array_equal(np.asarray(y2), y)
    z = spec_augment(jax.random.key(1), jnp.asarray(x), lengths, freq_masks=0, freq_width=3, time_masks=0,
                     time_width=0.1)
    np.testing.assert_array_equal(np.asarray(z), x)


def test_spec_augment_masks_something_over_many_keys():
    x, lengths = _features()
    masked = [np.mean(np.asarray(spec_augment(jax.random.key(k), x, lengths, freq_masks=2, freq_width=3,
                                              time_masks=2, time_width=0.1)) != np.asarray(x)) for k in range(20)]
    assert 0.02 < np.mean(masked) < 0.5


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_tempo_and_pitch(factor):
    rate = 16000
    t = np.arange(rate) / rate
    wav = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    out = speed_perturbed(wav, rate, factor)
    new_rate = round(rate / factor / 400) * 400
    assert out.dtype == np.float32 and abs(len(out) - len(wav) * new_rate / rate) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak = np.argmax(spectrum) * rate / len(out)
    assert abs(peak - 440.0 * rate / new_rate) < 3.0  # the tone moves by the factor
    np.testing.assert_array_equal(speed_perturbed(wav, rate, 1.0), wav)


def test_random_speed_draws_every_factor_deterministically():
    seen = []

    class Recorder:
        def __call__(self, item, speed):
            seen.append(speed)
            return speed

    pick = RandomSpeed(Recorder(), [0.9, 1.0, 1.1])
    draws = [pick(None, np.random.default_rng([5, i])) for i in range(60)]
    again = [pick(None, np.random.default_rng([5, i])) for i in range(60)]
    assert draws == again and set(draws) == {0.9, 1.0, 1.1}


def _word_batch(n=4):
    """n corpus utterances with one label per word (ids 3..) and the model's features."""
    rows = []
    with open(TRAIN_MANIFEST) as f:
        records = [json.loads(next(f)) for _ in range(n)]
    for rec in records:
        wav = load_audio(str(REPO / "data_pipelines" / "demo_corpus" / rec["audio"]), 16000)
        ids = [3 + VOCABULARY.index(w) for w in rec["text"].split()] + [MODEL.tokens.eos_token_id]
        rows.append(audio_batch.asr_example(wav, MODEL, ids))
    shapes = audio_batch.asr_row_shapes(MODEL, 240, 8)
    return {k: jnp.asarray(v) for k, v in audio_batch.pad_rows(rows, shapes).items()}, records


def test_ctc_loss_falls_and_the_head_learns_the_words():
    batch, records = _word_batch()
    model = make_model(MODEL, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(3e-3)
    opt = tx.init(params)
    den = denominators(batch, MODEL)
    train_cfg = CFG.train

    @jax.jit
    def step(params, opt, key):
        def loss_fn(p):
            return ctc_loss(nnx.merge(graphdef, p, rest), batch, den, key, train_cfg, 0)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for i in range(150):
        params, opt, loss = step(params, opt, jax.random.key(i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    # memorised: the best path of each training utterance is its words
    decoded = greedy_decode(nnx.merge(graphdef, params, rest), batch["features"], batch["feature_lengths"])
    words = [[VOCABULARY[i - 3] for i in ids] for ids in decoded]
    assert sum(w == r["text"].split() for w, r in zip(words, records)) >= 3, words
