"""The text path of the audio LLM agrees with Hugging Face ``Qwen2ForCausalLM``.

A tiny random Qwen2 (GQA, q/k/v bias, untied head, RoPE θ 1e6) is created with transformers,
its weights copied through the ``hf_qwen2`` mapping table, and logits compared in float32:
|ours − hf| ≤ 2e-5 + 1e-4·|hf| (the manifest's bound for LM logits).
"""
import numpy as np
import pytest
from conftest import requires_torch


@pytest.fixture(scope="module")
def hf_pair():
    torch = requires_torch()
    transformers = pytest.importorskip("transformers")
    from flax import nnx

    from baichuan_audio_jax.config import ModelConfig, model_config_dict
    from baichuan_audio_jax.conversion.loading import load_model
    from baichuan_audio_jax.conversion.mapping import combine_tables
    from baichuan_audio_jax.conversion.tables import hf_qwen2_table
    from baichuan_audio_jax.models.audio_llm import AudioLLM

    hf_cfg = transformers.Qwen2Config(vocab_size=320, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=256)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # make every bias and norm gain non-trivial
            p.add_(0.05 * torch.randn_like(p))
    tensors = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    cfg = ModelConfig.from_config(model_config_dict(
        llm=dict(vocab_size=320, hidden_size=128, intermediate_size=192, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=32),
        tokens=dict(audio_pad_token_id=319)))
    model, _ = load_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)), combine_tables(hf_qwen2_table(cfg)),
                          tensors, allow_uncovered=True)
    return torch, hf, model


def test_logits_match_transformers(hf_pair):
    torch, hf, model = hf_pair
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, size=(2, 37))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(model(ids).logits)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-4)


def test_left_padded_batch_matches_transformers(hf_pair):
    torch, hf, model = hf_pair
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 300, size=(2, 20))
    mask = np.ones_like(ids)
    mask[0, :6] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.numpy()
    ours = np.asarray(model(ids, attention_mask=mask, positions=positions).logits)
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=2e-5, rtol=1e-4)
