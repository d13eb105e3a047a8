"""The generation API end to end on a tiny model (the fixture set's reference weights, random
and untrained): every mode runs, speech comes out as 24 kHz audio of the length the reference's
pipeline gives (480·(4N − 1) samples per segment of N frames, plus 240 per cross-faded
boundary), streaming writes the same audio, and bad input fails with a message naming it.

Segment lengths are pinned with ``max_new_tokens`` so the waveform decoder compiles once."""
import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from generation_helpers import chat_config, llm, speech_parts, train_tokenizer

from baichuan_audio_jax.audio.io import AudioError
from baichuan_audio_jax.inference.generator import MODES, Generator, SpeechParts
from baichuan_audio_jax.inference.prompts import PromptError

FRAMES = 20  # audio frames per generated segment in these tests


@pytest.fixture(scope="module")
def gen(parity_dir, tmp_path_factory):
    cfg = chat_config(str(parity_dir))
    tok = train_tokenizer(tmp_path_factory.mktemp("tok") / "spm.model", cfg)
    return Generator(llm(str(parity_dir), cfg), tok, speech=SpeechParts(*speech_parts(str(parity_dir), cfg)))


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


def test_asr_transcribes_a_recording(gen, speech_file):
    r = gen.asr(speech_file, max_new_tokens=12)
    assert r.waveform is None and not r.segments
    assert 1 <= len(r.text_tokens) <= 12 and r.finish_reason in ("eos", "length")
    assert isinstance(r.text, str)
    assert all(0 <= t < gen.cfg.llm.vocab_size for t in r.text_tokens)


def test_spoken_chat_interleaves_text_and_speech(gen, speech_file, tmp_path):
    first = MODES["s2s"].protocol.first_text_max_tokens  # a first text segment at its limit, then speech
    r = gen.chat([{"role": "user", "audio": speech_file}], max_new_tokens=first + FRAMES, seed=3,
                 stream_to=tmp_path / "chat.wav")
    assert r.mode == "s2s" and r.finish_reason in ("length", "eos")
    assert r.segments and r.segment_text_ends[0] >= 1
    assert len(r.waveform) == expected_samples(r.segments)
    assert sf.info(str(tmp_path / "chat.wav")).frames == len(r.waveform)
    text_only = gen.chat([{"role": "user", "text": "你好"}], speech_output=False, max_new_tokens=10, seed=3)
    assert text_only.mode == "s2t" and text_only.waveform is None and not text_only.segments
    assert len(text_only.text_tokens) <= 10


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
