"""Configs: the reference config.json reader, the shipped configs, command-line overrides."""
import json

from conftest import REPO

from baichuan_audio_jax.config import (
    ModelConfig,
    load_config,
    model_config_from_reference,
)


def test_real_reference_config_reads_as_the_7b_config(parity_dir):
    real = json.loads((parity_dir / "real_config_shapes.json").read_text())["omni_config"]
    ours = ModelConfig.from_config(model_config_from_reference(real))
    shipped = ModelConfig.from_config(load_config(REPO / "configs" / "baichuan_audio_7b.py").model)
    # The shipped 7B config only adds run choices (bf16 compute, full remat) to the reference's.
    for section in ("llm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching", "tokens"):
        assert getattr(ours, section) == getattr(shipped, section), section


def test_fixture_tiny_config_reads_every_dimension_and_special_id(fixture_set):
    tiny = fixture_set.manifest["tiny_config"]
    cfg = fixture_set.model_config
    assert cfg.llm.hidden_size == tiny["hidden_size"] and cfg.llm.num_kv_heads == tiny["num_key_value_heads"]
    assert cfg.codebook_sizes == tuple(tiny["audio_config"]["vq_config"]["codebook_sizes"])
    assert cfg.tokens.audio_pad_token_id == tiny["audio_config"]["audio_pad_token_id"]
    assert cfg.tokens.audiogen_end_token_id == tiny["audio_config"]["audiogen_end_token_id"]
    assert cfg.tokens.pad_token_id == tiny["pad_token_id"]
    assert cfg.audio_head.num_layers == tiny["audio_config"]["audio_head_transformer_layers"]
    derived = fixture_set.manifest["derived"]
    assert cfg.audio_encoder.max_source_positions == derived["audio_encoder_max_source_positions"]
    assert cfg.audio_decoder.max_source_positions == derived["audio_decoder_max_source_positions"]
    assert cfg.llm.hidden_size // cfg.audio_head.head_dim == derived["audio_head_num_heads"]
