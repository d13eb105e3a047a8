"""Text tokenizers: one interface over tokenizer.json and sentencepiece, special ids checked
against the model config."""
import dataclasses

import pytest
from data_pipeline_helpers import char_tokenizer_json

from baichuan_audio_jax.text.tokenizer import (
    SPECIAL_TOKEN_STRINGS,
    TokenizerError,
    check_special_tokens,
    load_text_tokenizer,
    train_sentencepiece,
)

CORPUS = ["the quick brown fox jumps over the lazy dog", "将语音转录为文本:", "我的鼻子隔几天就出一次血，单孔。"] * 4


@pytest.fixture(scope="module")
def spm(tiny_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "t.model"
    return train_sentencepiece(CORPUS, path, tiny_config.tokens, vocab_size=tiny_config.llm.vocab_size)


def test_sentencepiece_special_ids_follow_config(spm, tiny_config):
    t = tiny_config.tokens
    for field, text in SPECIAL_TOKEN_STRINGS.items():
        assert spm.token_to_id(text) == getattr(t, field), text
    assert spm.vocab_size == tiny_config.llm.vocab_size
    assert spm.decode(spm.encode("the lazy dog")) == "the lazy dog"
    assert spm.decode(spm.encode("出血，单孔。")) == "出血，单孔。"  # no normalisation of full-width marks
    assert spm.decode([*spm.encode("fox"), t.audio_pad_token_id, t.eos_token_id]) == \
        "fox<audio_pad_baichuan><|endoftext|>"


@pytest.mark.parametrize("kind", ["spm", "hf"])
def test_text_cannot_produce_special_ids(kind, spm, tiny_config, tmp_path):
    if kind == "hf":
        path = str(tmp_path / "tokenizer.json")
        char_tokenizer_json(path, tiny_config)
        tok = load_text_tokenizer(tmp_path)  # a directory holding tokenizer.json
    else:
        tok = spm
    specials = {getattr(tiny_config.tokens, f) for f in SPECIAL_TOKEN_STRINGS}
    ids = tok.encode("fox <C_Q> <audio_pad_baichuan> <|endoftext|>")
    assert not specials & set(ids)


def test_mismatch_with_config_is_reported(tiny_config, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    char_tokenizer_json(path, tiny_config)
    tok = load_text_tokenizer(path)
    check_special_tokens(tok, tiny_config.tokens, tiny_config.llm.vocab_size)
    moved = dataclasses.replace(tiny_config.tokens, audio_pad_token_id=tiny_config.tokens.audio_pad_token_id + 1)
    with pytest.raises(TokenizerError, match=r"<audio_pad_baichuan> \(audio_pad_token_id\): tokenizer id 482, "
                                             r"config id 483"):
        check_special_tokens(tok, moved)
    with pytest.raises(TokenizerError, match="the model's vocabulary only 400"):
        check_special_tokens(tok, tiny_config.tokens, 400)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="no text tokenizer configured"):
        load_text_tokenizer("")
    with pytest.raises(TokenizerError, match="not found"):
        load_text_tokenizer(tmp_path / "nope.model")
