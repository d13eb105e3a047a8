"""Generation prompts are the training layouts cut where the model starts writing, and text
that smuggles special tokens is refused."""
import numpy as np
import pytest
from data_pipeline_helpers import char_tokenizer_json, random_codes

from baichuan_audio_jax.inference.prompts import PromptBuilder, PromptError, check_text, split_tts_text, validate_chat
from baichuan_audio_jax.text.tokenizer import load_text_tokenizer
from data_pipelines.sequences import Prompts, SequenceBuilder


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_config):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    char_tokenizer_json(str(path), tiny_config)
    tok = load_text_tokenizer(str(path))
    return tiny_config, tok, PromptBuilder(tok, tiny_config.tokens)


def training_example(env, record, codes, system=""):
    cfg, tok, _ = env
    builder = SequenceBuilder(tok, cfg.tokens, cfg.codebook_sizes, seq_len=512, prompts=Prompts(system=system))
    return builder.build(record, codes)


def assert_prefix(prompt, example):
    ids, codes = prompt.arrays()
    np.testing.assert_array_equal(ids, example["input_ids"][:len(ids)])
    np.testing.assert_array_equal(codes, example["audio_codes"][:len(ids)])


def test_asr_prompt_is_the_training_prefix_before_the_transcript(env, tiny_config):
    cfg, tok, pb = env
    codes = random_codes(9, tiny_config, 0)
    example = training_example(env, {"audio": "a.wav", "text": "hello"}, [codes])
    prompt = pb.asr(codes)
    assert_prefix(prompt, example)
    # The model's first target after the prompt is the transcript's first token.
    assert example["input_ids"][len(prompt.ids)] == tok.encode("hello")[0]


def test_tts_prompt_is_the_training_prefix_before_the_speech(env, tiny_config):
    cfg, _, pb = env
    codes = random_codes(5, tiny_config, 1)
    example = training_example(env, {"task": "tts", "text": "你好世界", "audio": "a.wav"}, [codes])
    (prompt,) = pb.tts("你好世界")
    assert prompt.ids[-1] == cfg.tokens.audiogen_start_token_id
    assert_prefix(prompt, example)


def test_chat_prompt_is_the_training_prefix_of_the_answer(env, tiny_config):
    """History with a spoken assistant turn; the new answer is spoken (<audiotext_start> <C_A>) or
    written (<C_A>) — each matches a training record whose last assistant turn is of that kind."""
    cfg, _, pb = env
    t = cfg.tokens
    audio = {name: random_codes(n, tiny_config, i) for i, (name, n) in enumerate(
        [("q1.wav", 6), ("r1.wav", 4), ("q2.wav", 3), ("r2.wav", 5)])}
    history = [{"role": "user", "audio": "q1.wav"},
               {"role": "assistant", "segments": [{"text": "ok,", "audio": "r1.wav"}]},
               {"role": "user", "text": "and?", "audio": "q2.wav"}]
    for spoken in (True, False):
        answer = {"role": "assistant", "segments": [{"text": "yes", "audio": "r2.wav"}]} if spoken else \
            {"role": "assistant", "text": "yes"}
        record = {"task": "chat", "turns": history + [answer]}
        refs = ["q1.wav", "r1.wav", "q2.wav"] + (["r2.wav"] if spoken else [])
        example = training_example(env, record, [audio[r] for r in refs], system="be kind")
        prompt = pb.chat(history, audio.__getitem__, speech_output=spoken, system="be kind")
        assert_prefix(prompt, example)
        tail = [t.audiotext_start_token_id, t.assistant_token_id] if spoken else [t.assistant_token_id]
        assert prompt.ids[-len(tail):] == tail
        assert prompt.ids[0] == t.system_token_id


def test_tts_text_splits_like_the_reference_demo():
    assert split_tts_text("你好，今天天气不错。") == ["你好，今天天气不错。"]  # 10 characters: one piece
    assert split_tts_text("你好，今天天气不错。我们去公园吧！好的") == ["你好，今天天气不错。我们去公园吧！", "好的"]
    assert split_tts_text("a,b;c!d?e:f，g。h；i：j！k？l") == ["a,b;c!d?e:f，", "g。h；i：j！k？l"]
    assert split_tts_text("   ") == []


def test_special_tokens_written_in_text_are_refused(env):
    _, _, pb = env
    for text, kind in [("hi <C_Q> there", "a special token"), ("x<audiogen_start_baichuan>", "a special token"),
                       ("<|im_start|>", "a special token"), ("a <foo_baichuan> b", "an unknown special token"),
                       ("<|made_up|>", "an unknown special token")]:
        with pytest.raises(PromptError, match=kind):
            check_text(text, "TTS text")
    with pytest.raises(PromptError, match="TTS text contains '<C_A>'"):
        pb.tts("say <C_A> now")
    with pytest.raises(PromptError, match=r"chat turns\[0\] contains '<B_SYS>'"):
        pb.chat([{"role": "user", "text": "<B_SYS>"}], lambda p: None, speech_output=False)
    assert check_text("a < b and c > d, <html>") == "a < b and c > d, <html>"


def test_chat_structure_errors_name_the_turn():
    cases = [([], "non-empty list"), ([{"role": "assistant", "text": "x"}], "last turn must be the user's"),
             ([{"role": "user", "text": "a"}, {"role": "system", "text": "s"}, {"role": "user", "text": "b"}],
              r"turns\[1\]: a system turn may only come first"),
             ([{"role": "bot", "text": "x"}], r"turns\[0\]: role 'bot'"),
             ([{"role": "user"}], r"turns\[0\] has neither"),
             ([{"role": "assistant", "segments": []}, {"role": "user", "text": "x"}], "non-empty list")]
    for turns, msg in cases:
        with pytest.raises(PromptError, match=msg):
            validate_chat(turns)
    assert validate_chat({"turns": [{"role": "user", "text": "hi"}]})[0]["text"] == "hi"
