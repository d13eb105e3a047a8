"""The audio tokenizer model, its mapping tables and its runtime, on a randomly initialised tiny
model and (when the fixtures are present, marked ``parity``) on the fixture set's tiny model (the
reference's own random weights).

Bounds: a sample's outputs in a padded batch equal its outputs alone within 1e-5 (float32,
different padding changes only summation order); codes exactly. Table conversions are bit-exact.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baichuan_audio_jax.audio.lengths import decoder_frames, refined_mel_frames
from baichuan_audio_jax.config import ModelConfig, model_config_from_reference
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import (
    check_coverage,
    combine_tables,
    export_tensors,
    state_shapes,
)
from baichuan_audio_jax.conversion.tables import TABLES
from baichuan_audio_jax.conversion.tables.audio_tokenizer import audio_tokenizer_tables
from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.models.vq_bridge import Codebook

PARTS = ("audio_encoder", "vq_bridge", "audio_decoder")


@pytest.fixture(scope="module", params=["random", pytest.param("reference", marks=pytest.mark.parity)])
def weights(request, tiny_config):
    """(config, reference-layout tensors): the fixture set's, or those of a random tiny model."""
    if request.param == "reference":
        fixture_set = request.getfixturevalue("fixture_set")
        out = {}
        for part in PARTS:
            out.update(fixture_set.component(part).weights)
        return fixture_set.model_config, out
    random_model = AudioTokenizer(tiny_config, rngs=nnx.Rngs(3))
    concrete = combine_tables(*audio_tokenizer_tables(tiny_config))
    return tiny_config, dict(export_tensors(nnx.state(random_model), concrete))


@pytest.fixture(scope="module")
def cfg(weights):
    return weights[0]


@pytest.fixture(scope="module")
def tensors(weights):
    return weights[1]


@pytest.fixture(scope="module")
def model(cfg, tensors):
    m, unused = load_model(lambda: AudioTokenizer(cfg, rngs=nnx.Rngs(0)), combine_tables(*audio_tokenizer_tables(cfg)),
                           tensors)
    assert not unused
    return m


@pytest.fixture(scope="module")
def runtime(cfg, model):
    return AudioTokenizerRuntime(cfg, nnx.state(model), batch_size=4)


@pytest.fixture(scope="module")
def recordings(weights, runtime, request):
    speech_dir = request.getfixturevalue("speech_dir")
    return {name: runtime.load_waveform(speech_dir / f"{name}.wav") for name in ("zh_med_1889", "zh_med_1497")}


# ----------------------------------------------------------------------------- tables and state

def test_tables_round_trip_bit_exact(cfg, model, tensors):
    """Every fixture tensor (positional buffers, codebooks and their EMA statistics included) is
    mapped, and exporting the loaded model gives each back bit for bit."""
    concrete = combine_tables(*audio_tokenizer_tables(cfg))
    exported = dict(export_tensors(nnx.state(model), concrete))
    assert set(exported) == set(tensors)
    for name, ref in tensors.items():
        assert exported[name].shape == ref.shape, name
        np.testing.assert_array_equal(exported[name], ref, err_msg=name)
    assert {"audio_encoder", "vq_bridge", "audio_decoder"} <= set(TABLES)


def test_tables_cover_the_real_checkpoint(parity_dir):
    """Against the released model's key list and shapes: every audio-tokenizer key is mapped with
    the shape the 7B config gives, none is unknown or missing."""
    with open(parity_dir / "real_config_shapes.json") as f:
        spec = json.load(f)
    shapes = {k: tuple(v["shape"]) for k, v in spec["omni_state_dict"].items()
              if k.startswith(("audio_tokenizer.audio_model.", "audio_tokenizer.audio_bridge_model.",
                               "audio_tokenizer.audio_decoder."))}
    assert len(shapes) == 487 + 31 + 149
    real = ModelConfig.from_config(model_config_from_reference(spec["omni_config"]))
    state = nnx.state(nnx.eval_shape(lambda: AudioTokenizer(real, rngs=nnx.Rngs(0))))
    report = check_coverage(combine_tables(*audio_tokenizer_tables(real)), state_shapes(state), shapes)
    assert report.ok, (report.missing[:5], report.unknown[:5], report.mismatched[:5])
    assert len(report.mapped) == len(shapes)


def test_codebooks_are_not_trainable_params(model, cfg):
    params = nnx.state(model, nnx.Param)
    codebooks = nnx.state(model, Codebook)
    assert len(jax.tree.leaves(codebooks)) == 3 * len(cfg.codebook_sizes)
    flat = [tuple(p) for p, _ in nnx.to_flat_state(params)]
    assert not any("quantizers" in p for p in flat)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(codebooks))


# ----------------------------------------------------------------------------- batch independence

def test_encoder_is_batch_independent(model, cfg):
    """The padded rows of a batch (one of odd length) equal each row encoded alone."""
    rng = np.random.default_rng(0)
    lengths = np.array([120, 57, 80], np.int32)
    feats = rng.standard_normal((3, 120, cfg.audio_encoder.num_mel_bins)).astype(np.float32)
    fn, state = pure(model.audio_encoder)
    run = jax.jit(fn, static_argnames="mask_conv_padding")
    batched, e = run(state, jnp.asarray(feats), jnp.asarray(lengths))
    batched, e = np.asarray(batched), np.asarray(e)
    assert e.tolist() == [60, 29, 40]
    for b in (1, 2):
        alone, _ = run(state, jnp.asarray(feats[b:b + 1, :lengths[b]]), jnp.asarray(lengths[b:b + 1]))
        np.testing.assert_allclose(batched[b, :e[b]], np.asarray(alone)[0], atol=1e-5, rtol=0)
        assert not batched[b, e[b]:].any()
    # The reference's batched behaviour (conv2 reading conv1's response to padding) differs for
    # the odd-length row: the masking is what makes rows independent.
    ref_like, _ = run(state, jnp.asarray(feats), jnp.asarray(lengths), mask_conv_padding=False)
    assert np.abs(np.asarray(ref_like)[1, :e[1]] - batched[1, :e[1]]).max() > 1e-3


def test_decoder_is_batch_independent(model, cfg):
    rng = np.random.default_rng(1)
    n = np.array([9, 4, 7], np.int32)
    codes = np.stack([rng.integers(0, s, (3, 9)) for s in cfg.codebook_sizes], axis=-1).astype(np.int32)
    fn, state = pure(model, "decode")
    run = jax.jit(fn)
    o = jax.tree.map(np.asarray, run(state, jnp.asarray(codes), jnp.asarray(n)))
    assert o.hidden_lengths.tolist() == [int(decoder_frames(k)) for k in n]
    assert o.mel_lengths.tolist() == [refined_mel_frames(2 * int(decoder_frames(k))) for k in n]
    for b in (1, 2):  # the padded rows
        s = jax.tree.map(np.asarray, run(state, jnp.asarray(codes[b:b + 1, :n[b]]), jnp.asarray(n[b:b + 1])))
        t, m = o.hidden_lengths[b], o.mel_lengths[b]
        np.testing.assert_allclose(o.hidden_before_dconv2[b, :t], s.hidden_before_dconv2[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(o.refined_mel[b, :m], s.refined_mel[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(o.coarse_mel[b, :m], s.coarse_mel[0], atol=1e-5, rtol=0)
        assert not o.refined_mel[b, m:].any() and not o.hidden_before_dconv2[b, t:].any()


# ----------------------------------------------------------------------------- runtime on real speech

def test_real_recordings_encode_and_decode(runtime, recordings):
    """Token counts of the real recordings (8 s chunks in the tiny config: 56 = 56 and
    235 = 100 + 100 + 35), codes in range, and decoding each chunk's codes gives 4N − 1 hidden
    frames and the refined-mel length formula."""
    expected = {"zh_med_1889": [56], "zh_med_1497": [100, 100, 35]}
    for name, chunks in expected.items():
        wav = recordings[name]
        codes = runtime.encode_waveform(wav)
        assert codes.dtype == np.int32 and codes.shape == (sum(chunks), 8)
        assert runtime.chunk_tokens(wav.shape[0]) == chunks
        assert (codes >= 0).all() and (codes < np.asarray(runtime.codebook_sizes)).all()
        assert len(np.unique(codes[:, 0])) > 3  # real speech uses several first-level codes
        segments = np.split(codes, np.cumsum(chunks)[:-1])
        for seg, out in zip(segments, runtime.decode_batch(segments)):
            t = 4 * len(seg) - 1
            assert out["hidden_before_dconv2"].shape == (t, runtime.cfg.audio_decoder.d_model)
            assert out["refined_mel"].shape == out["coarse_mel"].shape == (refined_mel_frames(2 * t), 80)
            assert out["lengths"] == dict(tokens=len(seg), hidden=t, mel=refined_mel_frames(2 * t))
            assert np.isfinite(out["refined_mel"]).all()


def test_batching_keeps_codes_and_reuses_compilations(runtime, recordings):
    """A file's codes are the same alone or batched with others, and a batch of differently sized
    files compiles only bucket shapes (never one program per file length)."""
    w1, w2 = recordings["zh_med_1889"], recordings["zh_med_1497"]
    waves = [w1, w2, w1[:30000], w2[5000:70001]]
    alone = [runtime.encode_waveform(w) for w in waves]
    before = set(runtime.compiled_shapes)
    together = runtime.encode_batch(waves)
    for a, t in zip(alone, together):
        np.testing.assert_array_equal(a, t)
    assert runtime.compiled_shapes <= before | {("encode", runtime.batch_size, b) for b in runtime.frame_buckets}
    assert len({s for s in runtime.compiled_shapes if s[0] == "encode"}) <= len(runtime.frame_buckets)


def test_decode_rejects_bad_codes(runtime):
    sizes = runtime.codebook_sizes
    ok = np.zeros((5, 8), np.int32)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        runtime.decode_codes(ok[:, :7])
    eos = ok.copy()
    eos[2, 0] = sizes[0]
    with pytest.raises(ValueError, match="codebook 0"):
        runtime.decode_codes(eos)
    with pytest.raises(ValueError, match="maximum"):
        runtime.decode_codes(np.zeros((runtime.max_tokens + 1, 8), np.int32))
