"""``baichuan-audio generate`` end to end in every mode, on a complete tiny bundle (the fixture
set's reference weights for the LLM, audio tokenizer, flow matching and vocoder, and a small
sentencepiece tokenizer): it prints the text, writes valid 24 kHz WAVs of the length the
reference's pipeline gives (480·(4N − 1) samples per segment of N frames, plus 240 per
cross-faded boundary), streams, continues chats, and refuses bad input naming it.

The commands run in-process and share one loaded bundle (and so its compiled programs) with
each other and with test_generate.py."""
import json

import numpy as np
import pytest
import soundfile as sf
from generation_helpers import tiny_bundle

from baichuan_audio_jax.cli.main import main

FRAMES = 20


@pytest.fixture(scope="module")
def bundle(parity_dir):
    return tiny_bundle(str(parity_dir))


@pytest.fixture(scope="module")
def speech_file(speech_dir):
    return str(speech_dir / "zh_med_1889.wav")


def generate(bundle, *args):
    return main(["generate", "--checkpoint", bundle, *map(str, args)])


def samples(segments):
    lengths = [480 * (4 * len(s) - 1) for s in segments if len(s)]
    return sum(lengths) + 240 * sum(1 for a, b in zip(lengths[:-1], lengths[1:]) if a > 240 and b > 240)


def test_tts_streams_a_valid_wav(bundle, tmp_path, capsys):
    out, summary = tmp_path / "tts.wav", tmp_path / "tts.json"
    assert generate(bundle, "--mode", "tts", "--text", "你好，今天天气不错。", "--out", out, "--stream",
                    "--max-new-tokens", FRAMES, "--json", summary) == 0
    err = capsys.readouterr().err
    s = json.loads(summary.read_text())
    data, rate = sf.read(str(out), dtype="float32")
    assert rate == 24000 and len(data) == samples(s["segments"]) == 480 * (4 * FRAMES - 1)
    assert "first audio chunk after" in err and "[stream] audio chunk 1" in err
    assert "length limit" in err and s["finish_reason"] == "length"  # stopped at --max-new-tokens, and said so


def test_asr_prints_the_transcript(bundle, speech_file, capsys, tmp_path):
    summary = tmp_path / "asr.json"
    assert generate(bundle, "--mode", "asr", "--audio", speech_file, "--max-new-tokens", 12, "--json", summary) == 0
    out, err = capsys.readouterr()
    s = json.loads(summary.read_text())
    assert out.strip() == s["text"].strip() and 1 <= len(s["text_tokens"]) <= 12
    assert "generate:" in err and s["segments"] == []


def test_spoken_chat_continues_a_history_and_writes_the_next_turn(bundle, speech_file, tmp_path, capsys):
    import shutil

    shutil.copy(speech_file, tmp_path / "q.wav")
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"turns": [{"role": "user", "audio": "q.wav"}]}))
    out, nxt = tmp_path / "answer.wav", tmp_path / "chat2.json"
    assert generate(bundle, "--mode", "s2s", "--chat", chat, "--out", out, "--chat-out", nxt, "--seed", 3,
                    "--max-new-tokens", 50 + FRAMES, "--json", tmp_path / "s.json") == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["segments"] and len(sf.read(str(out))[0]) == samples(s["segments"])
    assert s["segment_text_ends"][0] >= 1  # text first, then speech
    turns = json.loads(nxt.read_text())["turns"]
    assert turns[0] == {"role": "user", "audio": "q.wav"} and turns[1]["role"] == "assistant"
    assert turns[1]["audio"] == "answer.wav"
    # The written chat is the next turn's history (its spoken answer re-encoded from answer.wav).
    turns.append({"role": "user", "text": "再说一遍"})
    chat.write_text(json.dumps(turns))
    assert generate(bundle, "--mode", "s2t", "--chat", chat, "--max-new-tokens", 8) == 0
    assert "generate:" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--mode", "tts", "--text", "hi"], "give --out"),
    (["--mode", "asr", "--text", "hi"], "--mode asr takes --audio"),
    (["--mode", "s2s", "--out", "x.wav"], "--mode s2s takes --chat"),
    (["--mode", "tts", "--text", "say <C_Q> now", "--out", "x.wav"], "--text contains '<C_Q>', a special token"),
    (["--mode", "asr", "--audio", "EMPTY"], "empty.wav: empty"),
    (["--mode", "s2t", "--chat", "BADCHAT"], "bad.json: not a JSON file"),
    (["--mode", "s2t", "--chat", "NOUSER"], "nouser.json: chat: the last turn must be the user's"),
    (["--mode", "s2t", "--chat", "BADTURN"], "badturn.json: chat turns[0] contains '<C_A>'"),
    (["--mode", "s2s", "--audio", "MISSING", "--out", "x.wav"], "nope.wav: missing"),
])
def test_bad_input_is_refused_naming_it(bundle, tmp_path, capsys, args, message):
    """Refused before the model is loaded."""
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "nouser.json").write_text(json.dumps([{"role": "assistant", "text": "hi"}]))
    (tmp_path / "badturn.json").write_text(json.dumps([{"role": "user", "text": "<C_A> hi"}]))
    subst = {"EMPTY": tmp_path / "empty.wav", "BADCHAT": tmp_path / "bad.json", "NOUSER": tmp_path / "nouser.json",
             "BADTURN": tmp_path / "badturn.json", "MISSING": tmp_path / "nope.wav", "x.wav": tmp_path / "x.wav"}
    assert generate(bundle, *[subst.get(a, a) for a in args]) == 2
    assert message in capsys.readouterr().err


def test_missing_bundle_is_refused(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "none"), "--mode", "tts", "--text", "x",
                 "--out", str(tmp_path / "x.wav")]) == 2
    assert "not a directory" in capsys.readouterr().err
    np.testing.assert_equal((tmp_path / "x.wav").exists(), False)
