"""Codes / hidden states -> waveform: cross-fade, WAV writing, segment decoding, the whole codes ->
waveform path (``codes_to_wave``, ``detokenize --wav`` on a real recording), ``vocode`` CLI."""
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO
from flax import nnx

from baichuan_audio_jax.cli.main import main as cli
from baichuan_audio_jax.config import vocoder_config_from_reference
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.tables import flow_matching_table
from baichuan_audio_jax.conversion.vocoder import load_vocoder
from baichuan_audio_jax.inference.waveform import concat_segments, decode_segments
from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder


@pytest.fixture(scope="module")
def tiny_decoders(fixture_set):
    fm = fixture_set.component("flow_matching")
    cfg = fm.model_config
    decoder, _ = load_model(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(0)),
                            combine_tables(flow_matching_table(cfg)), fm.weights)
    voc = fixture_set.component("hift_vocoder")
    vocoder = load_vocoder(voc.weights, vocoder_config_from_reference(voc.spec["config"]))
    return decoder, vocoder, fm.arrays


def test_decode_segments_length_and_determinism(tiny_decoders):
    """Two segments of 20 frames: 480 samples per frame plus one 240-sample cross-fade."""
    import jax

    decoder, vocoder, a = tiny_decoders
    segments = [a["hidden_states"][0, :20], a["hidden_states"][1, :20]]
    wave = decode_segments(decoder, vocoder, segments, jax.random.key(0))
    assert wave.shape == (480 * 40 + 240,) and np.abs(wave).max() <= 0.99 and np.abs(wave).max() > 0.01
    np.testing.assert_array_equal(wave, decode_segments(decoder, vocoder, segments, jax.random.key(0)))
    with pytest.raises(ValueError, match="segment 1"):
        decode_segments(decoder, vocoder, [segments[0], np.zeros((0, 64))], jax.random.key(0))


def test_vocode_command_on_real_speech(speech_dir, parity_dir, tmp_path, capsys):
    """Resynthesis of a real recording with the fixture vocoder: a playable 24 kHz WAV of
    480 samples per mel frame."""
    out = tmp_path / "speech.wav"
    rc = cli(["vocode", "--audio", str(speech_dir / "zh_med_1889.wav"), "--vocoder",
              str(parity_dir / "hift_vocoder.safetensors"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    info = sf.info(str(out))
    n_24k = int(np.ceil(sf.info(str(speech_dir / "zh_med_1889.wav")).frames * 24000 / 48000))
    frames = n_24k // 480  # (n + 2·720 − 1920) // 480 + 1
    assert info.samplerate == 24000 and info.channels == 1 and info.frames == 480 * frames
    assert "mel frames" in capsys.readouterr().out

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 7), np.float32))
    rc = cli(["vocode", "--mel", str(bad), "--vocoder", str(parity_dir / "hift_vocoder.safetensors"),
              "--out", str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert rc == 2 and "expected a [frames, 80] mel" in err
    rc = cli(["vocode", "--audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "y.wav"),
              "--vocoder", str(parity_dir / "hift_vocoder.safetensors")])
    assert rc == 2 and "missing" in capsys.readouterr().err


TOKENIZER_AND_FLOW = ("audio_encoder", "vq_bridge", "audio_decoder", "flow_matching")


# The tiny config tokenizing in 2 s chunks (the real recording gives 25 + 25 + 6 tokens).
CHUNKS = ["--config", str(REPO / "configs" / "tiny.py"), "--config.model.audio_encoder.max_audio_seconds=2"]


@pytest.fixture(scope="module")
def speech(parity_dir):
    """Tokenizer, flow matching and vocoder from the fixture files (reference layout), built as
    ``detokenize`` builds them (same config: the compiled programs are shared with its test)."""
    from baichuan_audio_jax.config import ModelConfig, apply_overrides, load_config
    from baichuan_audio_jax.inference.waveform import SpeechDecoder

    cfg = load_config(CHUNKS[1])
    apply_overrides(cfg, [CHUNKS[2][len("--config."):]])
    weights = [str(parity_dir / f"{n}.safetensors") for n in TOKENIZER_AND_FLOW]
    return SpeechDecoder.from_parts(ModelConfig.from_config(cfg.model), weights=weights,
                                    vocoder=str(parity_dir / "hift_vocoder.safetensors"), batch_size=2)


def _codes(cfg, n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, n) for size in cfg.codebook_sizes], axis=1).astype(np.int32)


def test_codes_to_wave_length_and_segment_independence(speech):
    """Two 25-token segments: 480 samples per 4N − 1 mel frames each plus one 240-sample
    cross-fade; with the randomness injected per segment, each segment's audio is what it gives
    decoded alone (the batched audio decoder and the joins change nothing else)."""
    import jax

    from baichuan_audio_jax.inference.waveform import codes_to_wave, expected_samples

    a, b = _codes(speech.cfg, 25, 0), _codes(speech.cfg, 25, 1)
    wave = codes_to_wave(speech, [a, b], key=jax.random.key(0))
    assert wave.shape == (expected_samples([25, 25]),) == (480 * 99 * 2 + 240,)
    assert np.all(np.isfinite(wave)) and 0.01 < np.abs(wave).max() <= 0.99
    np.testing.assert_array_equal(wave, codes_to_wave(speech, [a, b], key=jax.random.key(0)))
    assert not np.array_equal(wave, codes_to_wave(speech, [a, b], key=jax.random.key(1)))

    rng = np.random.default_rng(2)
    noise = [rng.standard_normal((99, 80)).astype(np.float32) for _ in range(2)]
    source = [(rng.uniform(size=9).astype(np.float32), rng.standard_normal((480 * 99, 9)).astype(np.float32))
              for _ in range(2)]
    joint = codes_to_wave(speech, [a, b], noise=noise, source=source)
    alone = [codes_to_wave(speech, c, noise=[n], source=[s]) for c, n, s in zip((a, b), noise, source)]
    np.testing.assert_allclose(joint, concat_segments(alone), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="code 64 in codebook 0 is outside"):
        codes_to_wave(speech, [a, np.full((3, 8), 64, np.int32)], key=jax.random.key(0))
    with pytest.raises(ValueError, match="noise: 1 entries for 2 segments"):
        codes_to_wave(speech, [a, b], noise=noise[:1], key=jax.random.key(0))


def test_detokenize_wav_from_a_real_recording(speech_dir, parity_dir, tmp_path, capsys):
    """A real recording tokenized in 2 s chunks (25 + 25 + 6 tokens) comes back as a playable
    24 kHz WAV of 480·(99 + 99 + 23) + 2·240 samples."""
    import soundfile as sf
    from safetensors.numpy import save_file

    from baichuan_audio_jax.conversion.torch_io import read_tensors
    from baichuan_audio_jax.inference.waveform import expected_samples

    weights = tmp_path / "weights.safetensors"
    save_file(read_tensors([str(parity_dir / f"{n}.safetensors") for n in TOKENIZER_AND_FLOW]), str(weights))
    chunks = CHUNKS
    assert cli(["tokenize", *chunks, "--weights", str(weights), str(speech_dir / "zh_med_1889.wav"),
                "--out", str(tmp_path / "codes")]) == 0
    with np.load(tmp_path / "codes" / "zh_med_1889.npz") as d:
        tokens = d["chunk_tokens"].tolist()
    assert tokens == [25, 25, 6]
    hift = str(parity_dir / "hift_vocoder.safetensors")
    rc = cli(["detokenize", *chunks, "--weights", str(weights), "--vocoder", hift, "--wav",
              str(tmp_path / "codes" / "zh_med_1889.npz"), "--out", str(tmp_path / "out"), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "randomly initialised" not in captured.err and "zh_med_1889.wav" in captured.out
    wav, rate = sf.read(str(tmp_path / "out" / "zh_med_1889.wav"), dtype="float32")
    assert rate == 24000 and wav.ndim == 1 and sf.info(str(tmp_path / "out" / "zh_med_1889.wav")).subtype == "PCM_16"
    assert len(wav) == expected_samples(tokens) == 480 * (99 + 99 + 23) + 2 * 240
    assert 0.01 < np.abs(wav).max() <= 0.99 + 1 / 32768  # the vocoder's clamp, then 16-bit rounding
    assert (tmp_path / "out" / "zh_med_1889.mel.npz").exists()
    rc = cli(["detokenize", *chunks, "--vocoder", hift, str(tmp_path / "codes" / "zh_med_1889.npz"),
              "--out", str(tmp_path / "out2")])
    assert rc == 2 and "--vocoder is used only with --wav" in capsys.readouterr().err
