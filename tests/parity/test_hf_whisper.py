"""Initialising the audio encoder from a Hugging Face Whisper checkpoint (optional torch extra).

A tiny random ``WhisperModel`` is loaded through the ``hf_whisper`` table; on a full window (the
only input HF's encoder accepts, every frame valid) our encoder's output equals
``transformers``' ``WhisperEncoder`` within 2e-5 (float32 on both sides), and exporting gives the
HF tensors back bit-exactly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_torch
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, model_config_dict
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables, export_tensors
from baichuan_audio_jax.conversion.tables.hf_whisper import (
    encoder_config_from_hf,
    hf_whisper_table,
    whisper_encoder_prefix,
)
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.models.pure import pure


@pytest.fixture(scope="module")
def hf_whisper():
    torch = requires_torch()
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.WhisperConfig(
        num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
        max_source_positions=24, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = transformers.WhisperModel(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mapping error cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return torch, hf_cfg, model, tensors


def test_hf_whisper_encoder_matches_transformers(hf_whisper):
    torch, hf_cfg, hf_model, tensors = hf_whisper
    cfg = ModelConfig.from_config(model_config_dict(audio_encoder=encoder_config_from_hf(hf_cfg.to_dict())))
    prefix = whisper_encoder_prefix(tensors)
    assert prefix == "encoder."
    encoder_tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    concrete = combine_tables(hf_whisper_table(cfg, source_prefix=prefix))
    model, _ = load_model(lambda: AudioTokenizer(cfg, rngs=nnx.Rngs(0)), concrete, encoder_tensors,
                          allow_uncovered=True)

    frames = 2 * hf_cfg.max_source_positions
    feats = np.random.default_rng(0).standard_normal((2, hf_cfg.num_mel_bins, frames)).astype(np.float32)
    with torch.no_grad():
        ref = hf_model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    fn, state = pure(model.audio_encoder)
    ours, lengths = jax.jit(fn)(state, jnp.asarray(feats.transpose(0, 2, 1)), jnp.full((2,), frames, jnp.int32))
    assert np.asarray(lengths).tolist() == [hf_cfg.max_source_positions] * 2
    np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-5, rtol=1e-4)

    exported = dict(export_tensors(nnx.state(model), concrete))
    assert set(exported) == set(encoder_tensors)
    for k, v in encoder_tensors.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_prefix_detection():
    assert whisper_encoder_prefix(["model.encoder.conv1.weight"]) == "model.encoder."
    assert whisper_encoder_prefix(["conv1.weight", "layers.0.fc1.weight"]) == ""
    with pytest.raises(KeyError, match="no Whisper encoder"):
        whisper_encoder_prefix(["decoder.embed_tokens.weight"])
