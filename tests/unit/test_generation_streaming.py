"""Streaming speech out: chunks emitted as segments arrive join to exactly the reference's
offline concatenation (§6.7), and the output WAV is valid after every chunk."""
import numpy as np
import soundfile as sf

from baichuan_audio_jax.inference.streaming import AudioStream
from baichuan_audio_jax.inference.waveform import concat_segments


def wave_of(codes: np.ndarray, index: int) -> np.ndarray:
    """A deterministic stand-in waveform of the reference's length for N frames: 480·(4N − 1)."""
    n = 480 * (4 * len(codes) - 1)
    return (0.5 * np.sin(np.arange(n) * (0.01 + 0.003 * index))).astype(np.float32)


def test_streamed_chunks_equal_the_offline_join_and_the_file_grows_valid(tmp_path):
    path = tmp_path / "out.wav"
    segments = [np.zeros((n, 8), np.int32) for n in (3, 0, 5, 1)]  # an empty segment gives no audio
    seen = []

    def on_chunk(chunk):
        seen.append((len(chunk), sf.info(str(path)).frames))

    with AudioStream(wave_of, path=path, on_chunk=on_chunk) as stream:
        chunks = [stream.add(s) for s in segments]
    waves = [wave_of(s, i) for i, s in enumerate(s for s in segments if len(s))]
    assert chunks[1] is None
    np.testing.assert_array_equal(stream.waveform, concat_segments(waves))
    assert len(stream.waveform) == 480 * (11 + 19 + 3) + 2 * 240
    # After every chunk the file is a complete WAV holding everything emitted so far.
    assert [frames for _, frames in seen] == list(np.cumsum([n for n, _ in seen]))
    data, rate = sf.read(str(path), dtype="float32")
    assert rate == 24000
    np.testing.assert_allclose(data, stream.waveform, atol=1 / 32768 + 1e-7)
    assert stream.first_chunk_seconds is not None and stream.first_chunk_seconds == stream.chunk_times[0]
    assert stream.chunk_times == sorted(stream.chunk_times)
