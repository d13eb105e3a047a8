"""HiFT vocoder: parity, exact phase accumulation, weight norm under both namings, mapping table.

Parity bound: |ours − ref| ≤ suggested_atol + 1e-4·|ref| (manifest: waveform 2e-4, f0 2e-3,
source_s 1e-4, conv_post_out 4e-6). The harmonic phase must equal the float64-accumulated
reference cumsum bit for bit; weight-norm folds agree with PyTorch to 1e-6 relative.
"""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from baichuan_audio_jax.config import VocoderConfig, vocoder_config_from_reference
from baichuan_audio_jax.conversion.mapping import MappingError, check_coverage, combine_tables, state_shapes
from baichuan_audio_jax.conversion.tables import vocoder_table
from baichuan_audio_jax.conversion.vocoder import export_vocoder, load_vocoder, vocoder_config_from_tensors
from baichuan_audio_jax.inference.waveform import mel_to_wave
from baichuan_audio_jax.models.hift import HiFTGenerator
from baichuan_audio_jax.parity.runner import run_component


@pytest.fixture(scope="module")
def comp(fixture_set):
    return fixture_set.component("hift_vocoder")


@pytest.fixture(scope="module")
def vocoder(comp):
    return load_vocoder(comp.weights, vocoder_config_from_reference(comp.spec["config"]))


def _parametrization_names(tensors):
    return {k.replace(".weight_g", ".parametrizations.weight.original0")
             .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in tensors.items()}


def test_parity_hift_vocoder(fixture_set):
    results = run_component(fixture_set, "hift_vocoder")
    failures = [r.line() for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    assert {"waveform", "f0", "source_s", "conv_post_out"} <= {r.array for r in results}


def test_weight_norm_fold_per_input_channel_for_transposed_conv(vocoder, comp):
    w = comp.weights
    g, v = w["ups.0.weight_g"], w["ups.0.weight_v"]  # [in, 1, 1], [in, out, k]
    per_input = v * (g / np.sqrt((v.astype(np.float64) ** 2).sum(axis=(1, 2), keepdims=True)))
    ours = np.asarray(vocoder.ups[0].kernel()).transpose(1, 2, 0)  # [k, in, out] -> [in, out, k]
    np.testing.assert_allclose(ours, per_input, rtol=1e-6, atol=1e-7)
    # The defining property: each input channel's slice has norm g (the output axis is not normalised).
    np.testing.assert_allclose(np.sqrt((ours.astype(np.float64) ** 2).sum(axis=(1, 2))), g.ravel(), rtol=1e-5)
    gc, vc = w["conv_pre.weight_g"], w["conv_pre.weight_v"]  # [out, 1, 1], [out, in, k]
    conv = vc * (gc / np.sqrt((vc.astype(np.float64) ** 2).sum(axis=(1, 2), keepdims=True)))
    np.testing.assert_allclose(np.asarray(vocoder.conv_pre.kernel()).transpose(2, 1, 0), conv, rtol=1e-6, atol=1e-7)


def test_both_weight_norm_namings_load_and_round_trip_exactly(vocoder, comp):
    param_names = _parametrization_names(comp.weights)
    other = load_vocoder(param_names, vocoder.cfg)
    a, b = nnx.state(vocoder), nnx.state(other)
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))
    legacy = dict(export_vocoder(vocoder))
    assert set(legacy) == set(comp.weights)
    for k, ref in comp.weights.items():
        np.testing.assert_array_equal(legacy[k], ref, err_msg=k)
    exported = dict(export_vocoder(other, weight_norm="parametrizations"))
    assert set(exported) == set(param_names)
    for k, ref in param_names.items():
        np.testing.assert_array_equal(exported[k], ref, err_msg=k)


def test_bad_vocoder_checkpoints_are_named(comp):
    mixed = dict(comp.weights)
    mixed["conv_post.parametrizations.weight.original0"] = mixed.pop("conv_post.weight_g")
    with pytest.raises(ValueError, match="mixes"):
        load_vocoder(mixed)
    missing = {k: v for k, v in comp.weights.items() if k != "resblocks.4.convs2.1.weight_v"}
    with pytest.raises(MappingError, match=r"resblocks\.4\.convs2\.1\.weight_v"):
        load_vocoder(missing)
    assert vocoder_config_from_tensors(comp.weights) == vocoder_config_from_reference(comp.spec["config"])


def test_table_covers_real_vocoder_shapes(parity_dir):
    real = json.loads((parity_dir / "real_config_shapes.json").read_text())
    cfg = VocoderConfig()
    shapes = state_shapes(nnx.state(nnx.eval_shape(lambda: HiFTGenerator(cfg, rngs=nnx.Rngs(0)))))
    source = {k: tuple(v["shape"]) for k, v in real["vocoder_state_dict"].items()}
    report = check_coverage(combine_tables(vocoder_table(cfg)), shapes, source)
    assert report.ok, (report.missing[:5], report.unknown[:5], report.mismatched[:5])
    assert len(report.mapped) == real["vocoder_num_keys"] == 328


def test_mel_to_wave_length_and_randomness(vocoder, comp):
    """480 samples per mel frame; same key -> same waveform; injected randomness = reference."""
    a = comp.arrays
    mel = a["mel"]
    hop = vocoder.cfg.hop_length
    wave, f0 = mel_to_wave(vocoder, mel, phase_u01=a["rand_phase_u01"][..., 0],
                           noise=np.swapaxes(a["randn_sine_noise"], 1, 2))
    assert hop == 480 and wave.shape == (mel.shape[0], hop * mel.shape[1]) and f0.shape == mel.shape[:2]
    spec = comp.array_spec("waveform")
    assert np.all(np.abs(np.asarray(wave) - a["waveform"]) <= spec["suggested_atol"] + 1e-4 * np.abs(a["waveform"]))
    w1 = np.asarray(mel_to_wave(vocoder, mel, key=jax.random.key(0))[0])
    w2 = np.asarray(mel_to_wave(vocoder, mel, key=jax.random.key(0))[0])
    w3 = np.asarray(mel_to_wave(vocoder, mel, key=jax.random.key(1))[0])
    np.testing.assert_array_equal(w1, w2)
    assert np.abs(w1 - w3).max() > 1e-3 and np.abs(w1).max() <= vocoder.cfg.audio_limit
