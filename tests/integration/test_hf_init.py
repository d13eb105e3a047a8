"""A pretraining bundle initialised from Hugging Face Qwen2 and Whisper checkpoints (tiny random
models made with transformers; skipped without the optional extra).

The text path of the resulting model reproduces the Hugging Face logits within the manifest's LM
bound (|ours - hf| <= 2e-5 + 1e-4*|hf|, float32) over the checkpoint's vocabulary, and its audio
encoder the Whisper encoder's hidden states within 2e-5 (+ 1e-4 relative; float32 on both sides,
full window, the only input HF's encoder accepts); padded rows, the tied LM head, the encoder's
tensors and the fresh audio parameters are checked exactly.
"""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, requires_torch
from flax import nnx

from baichuan_audio_jax.cli.main import main
from baichuan_audio_jax.config import ModelConfig, apply_overrides, load_config

HF_VOCAB = 320
LLM = dict(hidden_size=128, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32)


def _hf_model(tmp, name, tie):
    torch = requires_torch()
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Qwen2Config(vocab_size=HF_VOCAB, hidden_size=128, intermediate_size=192,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=tie,
                                      max_position_embeddings=256)
    torch.manual_seed(1 if tie else 0)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial biases and norm gains
            p.add_(0.05 * torch.randn_like(p))
    path = tmp / name
    hf.save_pretrained(path)
    return hf, path


def _hf_whisper(tmp, name, cfg, **changes):
    """A tiny random ``WhisperForConditionalGeneration`` whose encoder has ``cfg.audio_encoder``'s
    geometry (encoder under ``model.encoder.``; a decoder the initialisation must leave out)."""
    torch = requires_torch()
    transformers = pytest.importorskip("transformers")
    enc = cfg.audio_encoder
    geometry = dict(num_mel_bins=enc.num_mel_bins, d_model=enc.d_model, encoder_layers=enc.num_layers,
                    encoder_attention_heads=enc.num_heads, encoder_ffn_dim=enc.ffn_dim,
                    max_source_positions=enc.max_source_positions)
    geometry.update(changes)
    hf_cfg = transformers.WhisperConfig(
        **geometry, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(2)
    hf = transformers.WhisperForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mapping error cannot hide
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "layer_norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp / name
    hf.save_pretrained(path)
    return hf, path


@pytest.fixture(scope="module")
def model_config():
    cfg = load_config(REPO / "configs" / "tiny.py")  # vocab 512 > the checkpoint's 320: rows are padded
    apply_overrides(cfg, [f"model.llm.{k}={v}" for k, v in LLM.items()])
    return cfg.model


@pytest.fixture(scope="module")
def untied(tmp_path_factory, model_config):
    from baichuan_audio_jax.conversion.bundle import load_bundle
    from baichuan_audio_jax.conversion.hf_init import init_from_hf

    tmp = tmp_path_factory.mktemp("qwen")
    hf, path = _hf_model(tmp, "qwen_untied", tie=False)
    whisper, whisper_path = _hf_whisper(tmp, "whisper", ModelConfig.from_config(model_config))
    result = init_from_hf({"qwen2": str(path), "whisper": str(whisper_path)}, str(tmp / "bundle"), model_config,
                          seed=5)
    whisper.path = whisper_path
    return hf, path, result, load_bundle(tmp / "bundle"), whisper


def test_text_logits_match_transformers(untied):
    import torch

    hf, _, _, bundle, _ = untied
    ids = np.random.default_rng(0).integers(0, HF_VOCAB, size=(2, 29))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(bundle.model.llm(ids).logits)
    np.testing.assert_allclose(ours[..., :HF_VOCAB], ref, atol=2e-5, rtol=1e-4)


def test_vocabulary_rows_are_padded_with_the_mean(untied):
    hf, _, result, bundle, _ = untied
    emb = hf.model.embed_tokens.weight.detach().numpy()
    head = hf.lm_head.weight.detach().numpy()
    ours_emb = np.asarray(bundle.model.llm.embed_tokens.embedding[...])
    ours_head = np.asarray(bundle.model.llm.lm_head.kernel[...])
    assert ours_emb.shape == (512, 128)
    np.testing.assert_array_equal(ours_emb[:HF_VOCAB], emb)
    np.testing.assert_array_equal(ours_emb[HF_VOCAB:], np.broadcast_to(emb.mean(0), (512 - HF_VOCAB, 128)))
    np.testing.assert_array_equal(ours_head[:, HF_VOCAB:].T, np.broadcast_to(head.mean(0), (512 - HF_VOCAB, 128)))
    assert any("padded from 320 to 512" in n for n in result.notes)


def test_audio_parts_are_freshly_initialised(untied, model_config):
    """Fresh parameters are the model's own initialisation for the seed (the same values whether
    computed together or alone) and not copies of anything from the checkpoint."""
    from baichuan_audio_jax.conversion.hf_init import fresh_values

    _, _, result, bundle, _ = untied
    cfg = ModelConfig.from_config(model_config)
    state = {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(bundle.model))}
    path = ("llm", "audio_embed", 3, "embedding")
    alone = fresh_values(cfg, 5, [path])[path]
    np.testing.assert_array_equal(state[path], alone)
    assert abs(float(alone.std()) - 0.02) < 0.004  # the embedding initialiser's N(0, 0.02)
    other_seed = fresh_values(cfg, 6, [path])[path]
    assert not np.array_equal(alone, other_seed)
    assert any("freshly initialised (seed 5): audio_tokenizer/audio_decoder, audio_tokenizer/vq_bridge, "
               "flow_matching/estimator, flow_matching/prenet, llm/audio_embed, llm/audio_head" in n
               for n in result.notes)
    assert state[("llm", "audio_head", "layers", "ffn", "w1")].std() > 0
    codebook = ("audio_tokenizer", "vq_bridge", "quantizers", 0, "embed")
    np.testing.assert_array_equal(state[codebook], fresh_values(cfg, 5, [codebook])[codebook])


def test_audio_encoder_matches_whisper(untied):
    """The encoder taken from WhisperForConditionalGeneration: its tensors exactly, its output
    within the bound above; the Whisper decoder is left out with a note."""
    import jax
    import jax.numpy as jnp
    import torch

    from baichuan_audio_jax.conversion.mapping import combine_tables, export_tensors
    from baichuan_audio_jax.conversion.tables import hf_whisper_table
    from baichuan_audio_jax.models.pure import pure

    _, _, result, bundle, whisper = untied
    enc_sd = {k[len("model."):]: v.numpy() for k, v in whisper.state_dict().items() if k.startswith("model.encoder.")}
    concrete = combine_tables(hf_whisper_table(bundle.config, ("audio_tokenizer",)))
    exported = dict(export_tensors(nnx.state(bundle.model), concrete))
    assert set(exported) == set(enc_sd)
    for k, v in enc_sd.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    assert any("Whisper decoder and output projection not used" in n for n in result.notes)

    frames = 2 * whisper.config.max_source_positions
    feats = np.random.default_rng(0).standard_normal((1, whisper.config.num_mel_bins, frames)).astype(np.float32)
    with torch.no_grad():
        ref = whisper.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    fn, state = pure(bundle.model.audio_tokenizer.audio_encoder)
    ours, _ = jax.jit(fn)(state, jnp.asarray(feats.transpose(0, 2, 1)), jnp.full((1,), frames, jnp.int32))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-5, rtol=1e-4)


def test_tied_checkpoint_gives_a_copied_lm_head(untied, tmp_path, model_config):
    from baichuan_audio_jax.conversion.bundle import load_bundle
    from baichuan_audio_jax.conversion.hf_init import init_from_hf

    hf, path = _hf_model(tmp_path, "qwen_tied", tie=True)
    # The same Whisper source as the fixture: the same fresh parameters, so their compiled
    # initialiser is reused.
    result = init_from_hf({"qwen2": str(path), "whisper": str(untied[4].path)}, str(tmp_path / "bundle"),
                          model_config)
    llm = load_bundle(tmp_path / "bundle", components=["llm"]).model.llm
    emb = np.asarray(llm.embed_tokens.embedding[...])
    np.testing.assert_array_equal(np.asarray(llm.lm_head.kernel[...]), emb.T)
    np.testing.assert_array_equal(emb[:HF_VOCAB], hf.model.embed_tokens.weight.detach().numpy())
    assert any("ties its LM head" in n for n in result.notes)


def test_mismatched_checkpoints_are_refused(untied, model_config, tmp_path, capsys):
    from baichuan_audio_jax.conversion.convert import ConversionError
    from baichuan_audio_jax.conversion.hf_init import init_from_hf

    _, path, _, _, whisper = untied
    other = tmp_path / "qwen"
    shutil.copytree(path, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["rope_theta"] = 10000.0
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="rope_theta: checkpoint 10000.0, config 1000000.0"):
        init_from_hf({"qwen2": str(other)}, str(tmp_path / "out"), model_config)
    small = load_config(REPO / "configs" / "tiny.py")
    apply_overrides(small, [f"model.llm.{k}={v}" for k, v in LLM.items()] + ["model.llm.vocab_size=256"])
    with pytest.raises(ConversionError, match="model.embed_tokens.weight has 320 rows but the config's "
                                              "llm.vocab_size is 256"):
        init_from_hf({"qwen2": str(path)}, str(tmp_path / "out"), small.model)
    assert not os.path.exists(tmp_path / "out")
    _, deeper = _hf_whisper(tmp_path, "whisper3", ModelConfig.from_config(model_config), encoder_layers=3)
    rc = main(["convert", "--init-from-qwen2", str(path), "--init-from-whisper", str(deeper), "--output",
               str(tmp_path / "out"), "--config", str(REPO / "configs" / "tiny.py"),
               *[f"--config.model.llm.{k}={v}" for k, v in LLM.items()]])
    err = capsys.readouterr().err
    assert rc == 2 and "describes a different encoder than the config: num_layers: checkpoint 3, config " \
                       "audio_encoder.num_layers 2" in err, err
    rc = main(["convert", "--init-from-whisper", str(path), "--output", str(tmp_path / "out"), "--config",
               str(REPO / "configs" / "tiny.py"), *[f"--config.model.llm.{k}={v}" for k, v in LLM.items()]])
    assert rc == 2 and "no Whisper encoder in these tensors" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
