"""Shared pieces of the generation tests: tiny models filled with the fixture set's reference
weights (loading them is fast; random initialisation of the vocoder and the flow-matching
decoder compiles for tens of seconds), built once per session and reused, so compiled programs
(keyed by the models' structure and shapes) are shared across test modules."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.tables import audio_embed_table, audio_head_table, llm_table


def synthetic_token_strings(vocab: int) -> list[str]:
    """A vocabulary dense in stop-string material: a third of the tokens end with '.', a third
    start with a space (so '. ' completes across two tokens), some hold '，' or are '?'."""
    out = []
    for i in range(vocab):
        if i % 3 == 0:
            out.append(f"a{i}.")
        elif i % 3 == 1:
            out.append(f" b{i}")
        elif i % 20 == 2:
            out.append(f"c{i}，d")
        elif i % 20 == 5:
            out.append("?")
        else:
            out.append(f"e{i}")
    return out


@functools.lru_cache(maxsize=None)
def _weights(parity_dir: str) -> dict:
    from baichuan_audio_jax.parity.fixtures import FixtureSet

    fs = FixtureSet(parity_dir)
    out = {}
    for name in ("omni_lm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching"):
        out.update(fs.component(name).weights)
    return out


def fixture_config(parity_dir: str) -> ModelConfig:
    from baichuan_audio_jax.parity.fixtures import FixtureSet

    return FixtureSet(parity_dir).model_config


def chat_config(parity_dir: str) -> ModelConfig:
    """The fixture set's model with every special id inside its vocabulary, so chats can be built.

    The fixture config keeps the real ids of the role prefixes (<C_Q>, <C_A>, ...), which a small
    vocabulary cannot hold; the manifest's ``special_tokens.offset_from_real_id`` (the shift its
    audio ids got) places them the same way. The vocoder is the fixture's ``hift_vocoder``."""
    from baichuan_audio_jax.config import REAL_TOKEN_IDS, vocoder_config_from_reference
    from baichuan_audio_jax.parity.fixtures import FixtureSet

    fs = FixtureSet(parity_dir)
    fx = fs.model_config
    offset = fs.manifest.get("special_tokens", {}).get("offset_from_real_id")
    if offset is None:
        import pytest

        pytest.skip("the fixture manifest gives no special_tokens.offset_from_real_id")
    vocab = fx.llm.vocab_size
    moved = {k: v + offset for k, v in REAL_TOKEN_IDS.items()
             if getattr(fx.tokens, k) >= vocab and 0 <= v + offset < vocab}
    tokens = dataclasses.replace(fx.tokens, **moved)
    vocoder = vocoder_config_from_reference(fs.component("hift_vocoder").spec["config"])
    return dataclasses.replace(fx, tokens=tokens, vocoder=vocoder)


@functools.lru_cache(maxsize=None)
def llm(parity_dir: str, cfg: ModelConfig):
    from baichuan_audio_jax.models.audio_llm import AudioLLM

    tables = combine_tables(llm_table(cfg), audio_embed_table(cfg), audio_head_table(cfg))
    weights = {k: v for k, v in _weights(parity_dir).items() if k.startswith(("model.", "lm_head.", "audio_head."))}
    model, _ = load_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)), tables, weights)
    return model


@functools.lru_cache(maxsize=None)
def speech_parts(parity_dir: str, cfg: ModelConfig):
    """The speech decoder (audio tokenizer runtime, flow-matching decoder, vocoder) with the
    fixture weights."""
    from baichuan_audio_jax.config import vocoder_config_from_reference
    from baichuan_audio_jax.conversion.tables.flow_matching import flow_matching_table
    from baichuan_audio_jax.conversion.vocoder import load_vocoder
    from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
    from baichuan_audio_jax.inference.waveform import SpeechDecoder
    from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder
    from baichuan_audio_jax.parity.fixtures import FixtureSet

    weights = _weights(parity_dir)
    runtime = AudioTokenizerRuntime.from_reference(cfg, weights, batch_size=1)
    fm_weights = {k: v for k, v in weights.items() if k.startswith("audio_tokenizer.audio_flow_matching_decoder.")}
    flow, _ = load_model(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(0)), combine_tables(flow_matching_table(cfg)),
                         fm_weights)
    voc = FixtureSet(parity_dir).component("hift_vocoder")
    vocoder = load_vocoder(voc.weights, vocoder_config_from_reference(voc.spec["config"]))
    return SpeechDecoder(runtime, flow, vocoder)


def train_tokenizer(path, cfg: ModelConfig):
    """A sentencepiece model with the config's special tokens at their ids."""
    from baichuan_audio_jax.text.tokenizer import train_sentencepiece

    texts = ["hello world, this is a test.", "今天天气不错，我们去公园吧。",
             "the quick brown fox jumps over the lazy dog!", "你好吗？我很好。", "将语音转录为文本:",
             "请用【邻家女声】这个声音回答问题。"] * 8
    return train_sentencepiece(texts, path, cfg.tokens, vocab_size=cfg.llm.vocab_size)


def frames_of(n: int, seed: int = 0, sizes=(64, 32, 16, 16, 8, 8, 8, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1).astype(np.int32)


def model_config_dict_of(cfg: ModelConfig):
    """The ``model`` ConfigDict of a ModelConfig (what bundles store)."""
    from baichuan_audio_jax.config import model_config_dict

    sections = ("llm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching", "vocoder",
                "tokens")
    return model_config_dict(**{s: dataclasses.asdict(getattr(cfg, s)) for s in sections}, dtype=cfg.dtype,
                             param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy)


def save_tiny_bundle(path, parity_dir: str, cfg: ModelConfig, tokenizer_path) -> str:
    """A complete bundle (LLM, audio tokenizer, flow matching, vocoder, text tokenizer) holding the
    fixture weights."""
    from baichuan_audio_jax.conversion.bundle import save_bundle
    from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
    from baichuan_audio_jax.models.baichuan_audio import BaichuanAudio

    speech = speech_parts(parity_dir, cfg)
    model = nnx.eval_shape(lambda: BaichuanAudio(cfg, rngs=nnx.Rngs(0),
                                                 components=["llm", "audio_tokenizer", "flow_matching"]))
    model.llm = llm(parity_dir, cfg)
    tok_graph = nnx.split(nnx.eval_shape(lambda: AudioTokenizer(cfg, rngs=nnx.Rngs(0))))[0]
    model.audio_tokenizer = nnx.merge(tok_graph, speech.tokenizer.state)
    model.flow_matching = speech.flow_matching
    return save_bundle(path, model_config_dict_of(cfg), model, vocoder=speech.vocoder, tokenizer=tokenizer_path,
                       source="tests")


@functools.lru_cache(maxsize=None)
def tiny_bundle(parity_dir: str) -> str:
    """One complete tiny bundle per test session (in a temporary directory removed at exit)."""
    import atexit
    import os
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="tiny-bundle-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    cfg = chat_config(parity_dir)
    tok = train_tokenizer(os.path.join(root, "spm.model"), cfg)
    return save_tiny_bundle(os.path.join(root, "tiny"), parity_dir, cfg, tok.path)
