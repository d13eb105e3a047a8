"""Golden tests of the sequence builders: exact token layout, audio alignment and loss weights of
every task (paper §3.3, spec §5.2/§6), on the tiny config's special ids with a character-level
tokenizer so every expected id is spelled out. Exact equality (integers and 0/1 weights)."""
import numpy as np
import pytest
from data_pipeline_helpers import char_tokenizer_json, random_codes

from baichuan_audio_jax.text.tokenizer import load_text_tokenizer
from data_pipelines.sequences import Prompts, SequenceBuilder
from data_pipelines.skips import RecordError


@pytest.fixture(scope="module")
def env(tiny_config, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    chars = char_tokenizer_json(path, tiny_config)
    tok = load_text_tokenizer(path)
    builder = SequenceBuilder(tok, tiny_config.tokens, tiny_config.codebook_sizes, seq_len=256)
    return tiny_config, chars, builder


def ids(chars, text):
    return [chars[c] for c in text]


def codes(model, n, seed):
    return random_codes(n, model, seed)


def expected(model, tokens, text_loss, frames):
    """The documented target alignment: position t predicts token t+1 (text) and frame t+1 (audio);
    ``frames`` = [(start, codes, loss, generated)]; a generated run's last frame predicts the EOS
    frame with weight on codebook 0 only."""
    n = len(tokens)
    ids_ = np.asarray(tokens, np.int32)
    c = np.zeros((n, 8), np.int32)
    fw = np.zeros((n, 8), np.float32)
    for s, cc, loss, _ in frames:
        c[s:s + len(cc)] = cc
        fw[s:s + len(cc)] = loss
    out = dict(input_ids=ids_, audio_codes=c,
               text_targets=np.append(ids_[1:], 0).astype(np.int32),
               text_weights=np.append(np.asarray(text_loss, np.float32)[1:], 0).astype(np.float32),
               audio_targets=np.concatenate([c[1:], np.zeros((1, 8), np.int32)]),
               audio_weights=np.concatenate([fw[1:], np.zeros((1, 8), np.float32)]))
    for s, cc, loss, generated in frames:
        if generated:
            last = s + len(cc) - 1
            out["audio_targets"][last] = model.codebook_sizes
            out["audio_weights"][last] = [float(loss)] + [0.0] * 7
    return out


def assert_example(got, want):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert got[k].dtype == want[k].dtype, k


def test_asr_literal(env):
    """ASR spelled out: prompt + input audio (no loss) + transcript and EOS (loss)."""
    model, chars, _ = env
    t = model.tokens
    builder = SequenceBuilder(env[2].tok, t, model.codebook_sizes, seq_len=64, prompts=Prompts(asr="p:"))
    c = np.array([[1, 2, 3, 4, 5, 6, 7, 0], [9, 8, 7, 6, 5, 4, 3, 2]], np.int32)
    got = builder.build({"audio": "x.wav", "text": "hi"}, [c])
    p, colon, h, i = chars["p"], chars[":"], chars["h"], chars["i"]
    S, P, E, EOS = t.audio_start_token_id, t.audio_pad_token_id, t.audio_end_token_id, t.eos_token_id
    assert got["input_ids"].tolist() == [p, colon, S, P, P, E, h, i, EOS]
    assert got["text_targets"].tolist() == [colon, S, P, P, E, h, i, EOS, 0]
    assert got["text_weights"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    np.testing.assert_array_equal(got["audio_codes"][3:5], c)
    assert not got["audio_codes"][[0, 1, 2, 5, 6, 7, 8]].any()
    np.testing.assert_array_equal(got["audio_targets"][2:4], c)  # start predicts frame 1, frame 1 frame 2
    assert not got["audio_weights"].any()  # input audio carries no loss, and has no EOS frame
    assert not got["audio_targets"][[0, 1, 4, 5, 6, 7, 8]].any()


def test_tts_literal(env):
    """TTS spelled out: text (no loss), generated audio with loss on every frame and on the EOS frame
    (codebook 0 only), nothing on the tags or the final EOS."""
    model, chars, builder = env
    t = model.tokens
    c = np.array([[1, 2, 3, 4, 5, 6, 7, 0], [9, 8, 7, 6, 5, 4, 3, 2]], np.int32)
    got = builder.build({"task": "tts", "text": "ab", "audio": "y.wav"}, [c])
    G, P, GE, EOS = t.audiogen_start_token_id, t.audio_pad_token_id, t.audiogen_end_token_id, t.eos_token_id
    assert got["input_ids"].tolist() == [chars["a"], chars["b"], G, P, P, GE, EOS]
    assert got["text_weights"].tolist() == [0] * 7
    eos = list(model.codebook_sizes)
    assert got["audio_targets"].tolist() == [[0] * 8, [0] * 8, c[0].tolist(), c[1].tolist(), eos, [0] * 8, [0] * 8]
    assert got["audio_weights"].tolist() == [[0] * 8, [0] * 8, [1] * 8, [1] * 8, [1] + [0] * 7, [0] * 8, [0] * 8]


def test_asr_default_prompt_and_plain_record(env):
    """A record with audio + text and no task is ASR with the configured prompt (spec §6.3)."""
    model, chars, builder = env
    t = model.tokens
    c = codes(model, 5, 1)
    got = builder.build({"uttid": "u1", "audio": "a.wav", "text": "我的鼻子", "sample_rate": 48000}, [c])
    toks = [*ids(chars, "将语音转录为文本:"), t.audio_start_token_id, *[t.audio_pad_token_id] * 5,
            t.audio_end_token_id, *ids(chars, "我的鼻子"), t.eos_token_id]
    loss = [0] * 9 + [0] * 7 + [1] * 4 + [1]
    assert_example(got, expected(model, toks, loss, [(10, c, False, False)]))


def test_aqa(env):
    model, chars, builder = env
    t = model.tokens
    c = codes(model, 3, 2)
    got = builder.build({"task": "aqa", "prompt": "Q:", "audio": "q.wav", "response": "yes"}, [c])
    toks = [*ids(chars, "Q:"), t.audio_start_token_id, *[t.audio_pad_token_id] * 3, t.audio_end_token_id,
            *ids(chars, "yes"), t.eos_token_id]
    loss = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert_example(got, expected(model, toks, loss, [(3, c, False, False)]))
    # without a prompt (default "" for AQA) the audio comes first
    got = builder.build({"task": "aqa", "audio": "q.wav", "response": "yes"}, [c])
    assert got["input_ids"][0] == t.audio_start_token_id


def test_s2tt_prompt_template(env):
    model, chars, builder = env
    t = model.tokens
    c = codes(model, 2, 3)
    got = builder.build({"task": "s2tt", "audio": "s.wav", "translation": "hello", "target_language": "英文"}, [c])
    prompt = ids(chars, "将语音翻译为英文:")
    toks = [*prompt, t.audio_start_token_id, *[t.audio_pad_token_id] * 2, t.audio_end_token_id,
            *ids(chars, "hello"), t.eos_token_id]
    loss = [0] * (len(prompt) + 4) + [1] * 6
    assert_example(got, expected(model, toks, loss, [(len(prompt) + 1, c, False, False)]))
    with pytest.raises(RecordError) as e:
        builder.build({"task": "s2tt", "audio": "s.wav", "translation": "hello"}, [c])
    assert e.value.reason == "invalid_record" and "target_language" in str(e.value)


def test_intlv_no_loss_on_audio(env):
    """INTLV: text segments carry loss, audio segments (input audio) none (paper §3.3.1)."""
    model, chars, builder = env
    t = model.tokens
    c1, c3 = codes(model, 3, 4), codes(model, 2, 5)
    rec = {"task": "intlv", "segments": [{"audio": "1.wav"}, {"text": "ab"}, {"audio": "3.wav"}, {"text": "cd"}]}
    got = builder.build(rec, [c1, c3])
    S, P, E = t.audio_start_token_id, t.audio_pad_token_id, t.audio_end_token_id
    toks = [S, P, P, P, E, *ids(chars, "ab"), S, P, P, E, *ids(chars, "cd"), t.eos_token_id]
    loss = [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    assert_example(got, expected(model, toks, loss, [(1, c1, False, False), (8, c3, False, False)]))
    assert not got["audio_weights"].any()
    # ending with audio: the closing EOS carries no loss
    got = builder.build({"task": "intlv", "segments": [{"text": "ab"}, {"audio": "1.wav"}]}, [c1])
    assert got["text_weights"][-2] == 0 and got["input_ids"][-1] == t.eos_token_id


def test_itts_loss_except_first_text(env):
    """ITTS: loss on every segment except the first text segment, audio with EOS frames."""
    model, chars, builder = env
    t = model.tokens
    c1, c2, c3 = codes(model, 2, 6), codes(model, 3, 7), codes(model, 1, 8)
    rec = {"task": "itts", "segments": [{"text": "ab", "audio": "1.wav"}, {"text": "c", "audio": "2.wav"},
                                         {"text": "de", "audio": "3.wav"}]}
    got = builder.build(rec, [c1, c2, c3])
    G, P, GE = t.audiogen_start_token_id, t.audio_pad_token_id, t.audiogen_end_token_id
    toks = [*ids(chars, "ab"), G, P, P, GE, *ids(chars, "c"), G, P, P, P, GE, *ids(chars, "de"), G, P, GE,
            t.eos_token_id]
    loss = [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    frames = [(3, c1, True, True), (8, c2, True, True), (15, c3, True, True)]
    assert_example(got, expected(model, toks, loss, frames))
    # all 6 frames carry loss on the 8 codebooks, and each of the 3 EOS frames on codebook 0
    assert got["audio_weights"][:, 1:].sum() == 7 * 6 and got["audio_weights"][:, 0].sum() == 6 + 3


def test_pure_audio(env):
    model, _, builder = env
    t = model.tokens
    c = codes(model, 4, 9)
    got = builder.build({"task": "audio", "audio": "a.wav"}, [c])
    toks = [t.audiogen_start_token_id, *[t.audio_pad_token_id] * 4, t.audiogen_end_token_id, t.eos_token_id]
    assert_example(got, expected(model, toks, [0] * 7, [(1, c, True, True)]))


def test_pure_text(env):
    model, chars, builder = env
    got = builder.build({"task": "text", "text": "ab"}, [])
    toks = [*ids(chars, "ab"), model.tokens.eos_token_id]
    assert_example(got, expected(model, toks, [1, 1, 1], []))


def test_chat_loss_on_assistant_turns_only(env):
    """Chat SFT: system/user turns and role prefixes carry no loss; assistant text, audiogen tags,
    frames, EOS frames and the end-of-turn EOS do; previous assistant turns train too."""
    model, chars, builder = env
    t = model.tokens
    u1, a1, u2 = codes(model, 2, 10), codes(model, 3, 11), codes(model, 2, 12)
    rec = {"task": "chat", "turns": [
        {"role": "system", "text": "s"},
        {"role": "user", "audio": "u1.wav"},
        {"role": "assistant", "segments": [{"text": "ab", "audio": "a1.wav"}, {"text": "c"}]},
        {"role": "user", "text": "q", "audio": "u2.wav"},
        {"role": "assistant", "text": "d"},
    ]}
    got = builder.build(rec, [u1, a1, u2])
    S, P, E = t.audio_start_token_id, t.audio_pad_token_id, t.audio_end_token_id
    G, GE, EOS = t.audiogen_start_token_id, t.audiogen_end_token_id, t.eos_token_id
    toks = [t.system_token_id, *ids(chars, "s"),                                    # 0-1
            t.user_token_id, S, P, P, E,                                            # 2-6
            t.audiotext_start_token_id, t.assistant_token_id,                       # 7-8
            *ids(chars, "ab"), G, P, P, P, GE, *ids(chars, "c"), EOS,                # 9-17
            t.user_token_id, *ids(chars, "q"), S, P, P, E,                          # 18-23
            t.assistant_token_id, *ids(chars, "d"), EOS]                            # 24-26
    loss = [0] * 9 + [1, 1, 1, 0, 0, 0, 0, 1, 1] + [0] * 7 + [1, 1]
    frames = [(4, u1, False, False), (12, a1, True, True), (21, u2, False, False)]
    assert_example(got, expected(model, toks, loss, frames))


def test_chat_default_system_prompt(env):
    model, chars, _ = env
    b = SequenceBuilder(env[2].tok, model.tokens, model.codebook_sizes, seq_len=64, prompts=Prompts(system="x"))
    got = b.build({"task": "chat", "turns": [{"role": "user", "text": "q"}, {"role": "assistant", "text": "a"}]}, [])
    t = model.tokens
    assert got["input_ids"].tolist() == [t.system_token_id, chars["x"], t.user_token_id, chars["q"],
                                         t.assistant_token_id, chars["a"], t.eos_token_id]
    assert got["text_weights"].tolist() == [0, 0, 0, 0, 1, 1, 0]


@pytest.mark.parametrize("record, n_codes, reason", [
    ({"task": "nope", "audio": "a"}, 1, "unknown_task"),
    ({"audio": "a"}, 1, "unknown_task"),
    ({"task": "asr", "audio": "a", "text": ""}, 1, "invalid_record"),
    ({"task": "tts", "text": "x"}, 0, "invalid_record"),
    ({"task": "intlv", "segments": [{"text": "a"}, {"text": "b"}]}, 0, "invalid_record"),
    ({"task": "itts", "segments": [{"text": "a"}]}, 0, "invalid_record"),
    ({"task": "chat", "turns": [{"role": "user", "text": "q"}]}, 0, "invalid_record"),
    ({"task": "chat", "turns": [{"role": "bot", "text": "q"}]}, 0, "invalid_record"),
    ({"task": "asr", "audio": "a", "text": "x"}, 2, "invalid_codes"),
    ({"task": "text", "text": ""}, 0, "invalid_record"),
    ({"task": "text", "text": "x", "audio": "a"}, 1, "invalid_record"),
])
def test_rejected_records(env, record, n_codes, reason):
    model, _, builder = env
    with pytest.raises(RecordError) as e:
        builder.build(record, [codes(model, 2, 0)] * n_codes)
    assert e.value.reason == reason


def test_codes_outside_codebooks_and_too_long(env):
    model, _, builder = env
    bad = codes(model, 2, 0)
    bad[1, 3] = model.codebook_sizes[3]  # the EOS class is not an input code
    with pytest.raises(RecordError) as e:
        builder.build({"audio": "a", "text": "x"}, [bad])
    assert e.value.reason == "invalid_codes" and "codebook 3" in str(e.value)
    with pytest.raises(RecordError) as e:
        builder.build({"audio": "a", "text": "x"}, [codes(model, 300, 0)])
    assert e.value.reason == "sequence_too_long"
