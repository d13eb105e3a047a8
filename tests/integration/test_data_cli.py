"""``baichuan-audio data check / preview / train-tokenizer`` and the audio-token count."""
import json
import os

import numpy as np
import pytest
from conftest import REPO as _REPO  # noqa: E402
from data_pipeline_helpers import char_tokenizer_json, random_codes, write_audio, write_manifest, write_shards

from baichuan_audio_jax.cli.main import main
from data_pipelines.audio_codes import frame_count_codes, num_audio_tokens

REPO = str(_REPO)
TINY = os.path.join(REPO, "configs", "tiny.py")


def test_num_audio_tokens_follows_the_reference_lengths():
    """Spec §4.12: 1 s → 12 tokens, 30 s → 375; 30 s chunks add up; < n_fft samples give nothing."""
    assert num_audio_tokens(16000) == 12
    assert num_audio_tokens(480000) == 375
    assert num_audio_tokens(480000 + 16000) == 375 + 12
    assert num_audio_tokens(480000 + 399) == 375
    assert num_audio_tokens(959) == 0 and num_audio_tokens(960) == 1


def test_real_speech_token_counts(speech_dir):
    """The shared 48 kHz clips resampled to 16 kHz give N = 56 and 235 (spec §4.12)."""
    codes_for = frame_count_codes()
    assert codes_for(str(speech_dir / "zh_med_1889.wav")).shape == (56, 8)
    assert codes_for(str(speech_dir / "zh_med_1497.wav")).shape == (235, 8)


def test_check_real_manifest(speech_dir, capsys):
    assert main(["data", "check", "--manifest", str(speech_dir / "manifest.jsonl"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"total": 2, "ok": 2, "skipped": {}}
    assert "resampled" in out.err  # both clips are 48 kHz


def test_check_counts_every_reason(tmp_path, capsys):
    """Good files, a wrong-rate file (resampled: ok) and one bad record per reason."""
    d = tmp_path
    write_audio(str(d / "good.wav"), 0.5)
    write_audio(str(d / "rate.wav"), 0.5, sample_rate=22050)
    write_audio(str(d / "short.wav"), 0.03)
    write_audio(str(d / "long.wav"), 2.5)
    (d / "empty.wav").write_bytes(b"")
    (d / "corrupt.wav").write_bytes(b"this is not audio" * 20)
    whole = (d / "good.wav").read_bytes()
    (d / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    stereo = np.zeros((8000, 3), np.float32)
    import soundfile as sf

    sf.write(str(d / "surround.wav"), stereo, 16000)
    manifest = write_manifest(str(d / "m.jsonl"), [
        {"audio": "good.wav", "text": "a"},
        {"task": "tts", "text": "b", "audio": "rate.wav"},
        {"task": "itts", "segments": [{"text": "c", "audio": "good.wav"}, {"text": "d", "audio": "gone.wav"}]},
        {"audio": "empty.wav", "text": "e"},
        {"audio": "corrupt.wav", "text": "f"},
        {"audio": "truncated.wav", "text": "g"},
        {"audio": "short.wav", "text": "h"},
        {"audio": "long.wav", "text": "i"},
        {"audio": "surround.wav", "text": "j"},
        "{\"audio\": \"good.wav\", ",
        {"task": "ocr", "image": "x.png"},
        {"task": "aqa", "audio": "good.wav"},
        "",
    ])
    assert main(["data", "check", "--manifest", manifest, "--max-audio-seconds", "2", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"total": 12, "ok": 2, "skipped": {
        "bad_json": 1, "corrupt": 2, "empty": 1, "invalid_record": 1, "missing": 1, "too_long": 1,
        "too_many_channels": 1, "too_short": 1, "unknown_task": 1}}


def test_check_unreadable_manifest_fails(tmp_path, capsys):
    assert main(["data", "check", "--manifest", str(tmp_path / "absent.jsonl")]) != 0
    assert "absent.jsonl" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shards(tiny_config, tmp_path_factory):
    d = tmp_path_factory.mktemp("preview")
    tok = str(d / "tokenizer.json")
    char_tokenizer_json(tok, tiny_config)
    items = [({"task": "tts", "text": "hello", "audio": "a.wav"}, [random_codes(5, tiny_config, 0)]),
             ({"task": "asr", "audio": "b.wav", "text": "world"}, [random_codes(3, tiny_config, 1)])]
    write_shards(str(d / "shards"), items, num_shards=1)
    return d, tok


def test_preview_shows_tokens_audio_runs_and_loss(shards, capsys):
    d, tok = shards
    rc = main(["data", "preview", "--config", TINY, "--n", "2", f"--config.data.tokenizer={tok}",
               f"--config.data.sources=[\"{d / 'shards'}\"]", "--config.data.shuffle=false"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "hello <audiogen_start_baichuan> <audio×5 loss +EOS> <audiogen_end_baichuan> <|endoftext|>" in out
    assert "将语音转录为文本: <audio_start_baichuan> <audio×3> <audio_end_baichuan> ⟦world <|endoftext|>⟧" in out
    assert "shown 2" in out


def test_preview_jsonl_without_audio_tokenizer(shards, tmp_path, capsys):
    _, tok = shards
    write_audio(str(tmp_path / "a.wav"), 1.0)
    manifest = write_manifest(str(tmp_path / "m.jsonl"), [{"audio": "a.wav", "text": "x"}])
    rc = main(["data", "preview", "--config", TINY, "--n", "1", f"--config.data.tokenizer={tok}",
               f"--config.data.sources=[\"{manifest}\"]"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "frame count only" in out and "<audio×12>" in out


def test_train_tokenizer_matches_config(tiny_config, tmp_path, capsys):
    from baichuan_audio_jax.text.tokenizer import check_special_tokens, load_text_tokenizer

    manifest = write_manifest(str(tmp_path / "m.jsonl"), [
        {"audio": "a.wav", "text": "the cat sat on the mat"},
        {"task": "chat", "turns": [{"role": "user", "text": "hello there"}, {"role": "assistant", "text": "hi"}]},
    ])
    out = str(tmp_path / "spm.model")
    assert main(["data", "train-tokenizer", "--config", TINY, "--manifest", manifest, "--out", out]) == 0
    tok = load_text_tokenizer(out)
    check_special_tokens(tok, tiny_config.tokens, tiny_config.llm.vocab_size)
    assert tok.decode(tok.encode("the cat")) == "the cat"


def test_tokenizer_texts_skip_metadata_fields():
    """Only text fields become tokenizer text: speaker/voice labels and ids are metadata."""
    from data_pipelines.manifest import record_texts

    assert record_texts({"uttid": "u1", "audio": "a.ogg", "text": "open the door", "voice": "en-gb+f2",
                         "template": "command", "speed": 150, "language": "en"}) == ["open the door"]
    itts = {"task": "itts", "voice": "x", "segments": [{"text": "one", "audio": "1.wav", "id": "s1"},
                                                      {"text": "two", "audio": "2.wav"}]}
    assert record_texts(itts) == ["one", "two"]
    assert record_texts({"task": "s2tt", "audio": "a.wav", "translation": "hi", "target_language": "English",
                         "prompt": "p"}) == ["hi", "English", "p"]
    assert record_texts({"task": "chat", "turns": [{"role": "system", "text": "s"},
                                                   {"role": "assistant", "segments": [{"text": "t"}]}]}) == ["s", "t"]
