"""Building blocks for the data pipeline tests: a character-level tokenizer, audio files, code
matrices of the right length and tokenized shards.

The audio tokenizer is not under test here: ``codes_for`` gives random codes whose count N follows
the reference's length formulas (spec §4.12) for the file's duration, derived from the path so a
file always gets the same codes.
"""
from __future__ import annotations

import json
import os
import zlib

import numpy as np
import soundfile as sf

from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.records import encode_tokenized
from baichuan_audio_jax.text.tokenizer import SPECIAL_TOKEN_STRINGS
from data_pipelines.audio_codes import min_samples_for_one_token, num_audio_tokens

ALPHABET = (" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'-<>|_{}"
            "将语音转录为文本翻译英你好世界我的鼻子只是隔几天就出一次血，单孔。")


def char_tokenizer_json(path: str, model: ModelConfig) -> dict[str, int]:
    """Writes a character-level ``tokenizer.json`` (``<pad>`` 0, ``<unk>`` 1, ``<|endoftext|>`` 2,
    characters from 3, special tokens at the config's ids); returns the character → id table."""
    tokens = model.tokens
    chars = {c: 3 + i for i, c in enumerate(dict.fromkeys(ALPHABET))}
    vocab = {"<pad>": tokens.pad_token_id, "<unk>": 1, **chars}
    specials = {s: getattr(tokens, f) for f, s in SPECIAL_TOKEN_STRINGS.items()}
    assert max(chars.values()) < min(v for k, v in specials.items() if k != "<|endoftext|>")
    vocab.update(specials)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(specials.items(), key=lambda x: x[1])]
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    return chars


def write_audio(path: str, seconds: float, sample_rate: int = 16000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    wav = (0.1 * rng.standard_normal(int(round(seconds * sample_rate)))).astype(np.float32)
    sf.write(path, wav, sample_rate, subtype="PCM_16")
    return path


def random_codes(n: int, model: ModelConfig, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, c, n) for c in model.codebook_sizes], axis=-1).astype(np.int32)


def make_codes_for(model: ModelConfig):
    """``codes_for(path)``: decodes the file (so bad files raise AudioError as the real tokenizer
    does) and returns random codes of the reference's length for its duration."""
    enc, bridge = model.audio_encoder, model.vq_bridge
    min_samples = min_samples_for_one_token(enc, bridge)

    def codes_for(path: str) -> np.ndarray:
        wav = load_audio(path, enc.sampling_rate, min_samples=min_samples, max_seconds=60)
        return random_codes(num_audio_tokens(len(wav), enc, bridge), model, zlib.crc32(path.encode()))

    return codes_for


def write_manifest(path: str, records: list) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
            f.write("\n")
    return path


def write_shards(directory: str, items: list[tuple[dict, list[np.ndarray]]], num_shards: int = 2) -> list[str]:
    """Tokenized records (:mod:`baichuan_audio_jax.records`) split round-robin over shards."""
    from array_record.python.array_record_module import ArrayRecordWriter

    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"part-{i:05d}.array_record") for i in range(num_shards)]
    writers = [ArrayRecordWriter(p, "group_size:1") for p in paths]
    for i, (record, codes) in enumerate(items):
        writers[i % num_shards].write(encode_tokenized(record, codes, f"synthetic:{i + 1}"))
    for w in writers:
        w.close()
    return paths
