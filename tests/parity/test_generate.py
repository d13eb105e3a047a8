"""The generation API on a tiny model (the fixture set's reference weights, untrained): speech
comes out as 24 kHz audio of the length the reference's pipeline gives (480·(4N − 1) samples per
segment of N frames), streaming hands out and writes the same audio, greedy decoding repeats,
and bad input fails with a message naming it. (Every mode end to end: test_generate_cli.py.)

Segment lengths are pinned with ``max_new_tokens`` so the waveform decoder compiles once."""
import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from generation_helpers import tiny_bundle

from baichuan_audio_jax.audio.io import AudioError
from baichuan_audio_jax.cli.generate import load_generator
from baichuan_audio_jax.inference.generator import Generator
from baichuan_audio_jax.inference.prompts import PromptError

FRAMES = 20  # audio frames per generated segment in these tests


@pytest.fixture(scope="module")
def gen(parity_dir):
    return load_generator(tiny_bundle(str(parity_dir)))


@pytest.fixture(scope="module")
def speech_file(speech_dir):
    return str(speech_dir / "zh_med_1889.wav")


def expected_samples(segments):
    lengths = [480 * (4 * len(s) - 1) for s in segments if len(s)]
    return sum(lengths) + 240 * sum(1 for a, b in zip(lengths[:-1], lengths[1:]) if a > 240 and b > 240)


def test_tts_streams_speech_of_the_reference_length(gen, tmp_path):
    out = tmp_path / "tts.wav"
    chunks = []
    r = gen.tts("你好，今天天气不错。", max_new_tokens=FRAMES, stream_to=out, on_chunk=chunks.append)
    assert r.finish_reason == "length" and "length limit" in r.status and r.stopped_at_limit
    assert [len(s) for s in r.segments] == [FRAMES] and r.text == ""
    assert len(r.waveform) == expected_samples(r.segments) == 480 * (4 * FRAMES - 1)
    data, rate = sf.read(str(out), dtype="float32")
    assert rate == 24000 and len(data) == len(r.waveform)
    np.testing.assert_allclose(data, r.waveform, atol=1 / 32768 + 1e-7)
    assert len(chunks) == 1 and 0 < r.timings["first_audio_chunk_seconds"] <= r.timings["total_seconds"]
    assert np.abs(r.waveform).max() <= 0.99 and np.abs(r.waveform).max() > 0
    # Greedy by default (the reference's TTS demo): the same again.
    again = gen.tts("你好，今天天气不错。", max_new_tokens=FRAMES)
    np.testing.assert_array_equal(again.segments[0], r.segments[0])


def test_bad_inputs_fail_naming_the_problem(gen, tmp_path, speech_file):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: empty"):
        gen.asr(str(empty))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(AudioError, match="corrupt.wav: corrupt"):
        gen.chat([{"role": "user", "audio": str(corrupt)}])
    with pytest.raises(AudioError, match="missing"):
        gen.asr(str(tmp_path / "nope.wav"))
    with pytest.raises(PromptError, match="<audiogen_start_baichuan>"):
        gen.tts("hello <audiogen_start_baichuan> world")
    with pytest.raises(ValueError, match="unknown mode"):
        gen.generate("translate", text="x")
    short = Generator(nnx.merge(gen.engine.graphdef, gen.engine.state), gen.tokenizer, speech=gen.speech,
                      max_context=32)
    with pytest.raises(ValueError, match="exceeds the model's context of 32"):
        short.asr(speech_file)


def test_asr_of_codes_equals_asr_of_their_audio(gen, speech_file):
    codes = gen.speech.tokenizer.encode_file(speech_file)
    from_file = gen.asr(speech_file, max_new_tokens=8)
    from_codes = gen.asr(codes, max_new_tokens=8)
    assert from_codes.text_tokens == from_file.text_tokens
    bad = codes.copy()
    bad[0, 3] = gen.cfg.codebook_sizes[3]  # an EOS class is not an input code
    with pytest.raises(ValueError, match="codebook 3"):
        gen.asr(bad)
