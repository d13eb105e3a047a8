"""The server's model-free pieces: upload checks, answer encodings, batch sizes, CLI settings."""
import argparse
import io

import numpy as np
import pytest
import soundfile as sf

from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.cli import serve as serve_cli
from baichuan_audio_jax.cli.main import CLIError
from baichuan_audio_jax.serve.audio import UploadError, encode, pcm16, read_upload, wav_header
from baichuan_audio_jax.serve.scheduler import batch_ladder


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def loader(path):
    return load_audio(path, 16000)


def test_upload_checks_name_the_upload():
    wave, seconds = read_upload(wav_bytes(1.5, 8000), "q.wav", max_seconds=2, loader=loader)
    assert seconds == pytest.approx(1.5) and wave.shape == (24000,)
    for data, status, message in ((b"", 400, "q.wav: empty file"),
                                  (b"RIFF....WAVEfmt nonsense" * 10, 400, "q.wav: not an audio file"),
                                  (wav_bytes(3), 413, "q.wav: 3.0 s of audio is above the limit of 2 s")):
        with pytest.raises(UploadError, match=message) as e:
            read_upload(data, "q.wav", max_seconds=2, loader=loader)
        assert e.value.status == status


def test_encodings_round_trip():
    wave = np.linspace(-1.2, 1.2, 2400, dtype=np.float32)
    clipped = np.clip(wave, -1, 1)
    for fmt in ("wav", "flac"):
        back, rate = sf.read(io.BytesIO(encode(wave, 24000, fmt)), dtype="float32")
        # half a step of rounding + one step from scaling by 32767 and reading back by 32768
        assert rate == 24000 and np.abs(back - clipped).max() <= 2.0 / 32767
    assert encode(wave, 24000, "pcm") == pcm16(wave) and len(pcm16(wave)) == 2 * len(wave)
    stream = wav_header(24000) + pcm16(wave)  # a streamed WAV: sizes unknown up front
    back, rate = sf.read(io.BytesIO(stream), dtype="float32")
    assert rate == 24000 and len(back) == len(wave)
    with pytest.raises(ValueError, match="unknown audio format 'mp3'"):
        encode(wave, 24000, "mp3")


def test_batch_sizes():
    assert batch_ladder(1) == (1,) and batch_ladder(16) == (1, 2, 4, 8, 16) and batch_ladder(6) == (1, 2, 4, 6)


def _args(**kw):
    p = argparse.ArgumentParser()
    serve_cli.add_arguments(p)
    argv = ["--checkpoint", "b"] + [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return p.parse_args(argv)


def test_cli_settings_are_checked():
    s = serve_cli.settings_from_args(_args(max_batch=4, batch_sizes="1,4", max_wait_ms=5), CLIError)
    assert s.max_batch == 4 and s.batch_sizes == (1, 4) and s.max_wait_ms == 5 and s.warm_up
    for kw, message in (({"batch_sizes": "1,x"}, "expected integers"), ({"max_batch": 8, "batch_sizes": "1,4"},
                                                                       "reach --max-batch 8"),
                        ({"max_queue": 0}, "--max-queue must be ≥ 1"), ({"timeout": 0}, "--timeout must be positive")):
        with pytest.raises(CLIError, match=message):
            serve_cli.settings_from_args(_args(**kw), CLIError)
