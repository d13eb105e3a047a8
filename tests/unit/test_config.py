"""Configs: the reference config.json reader, the shipped configs, command-line overrides."""

import pytest
from conftest import REPO

from baichuan_audio_jax.config import (
    apply_overrides,
    load_config,
    model_config_dict,
    model_config_from_reference,
)


def test_overrides_are_typed_and_checked():
    cfg = load_config(REPO / "configs" / "tiny.py", ["--config.model.llm.num_layers=3",
                                                     "--config.model.scan_layers=false",
                                                     "--config.model.vq_bridge.codebook_sizes=[4,4,4,4,4,4,4,4]"])
    assert cfg.model.llm.num_layers == 3 and cfg.model.scan_layers is False
    assert list(cfg.model.vq_bridge.codebook_sizes) == [4] * 8
    with pytest.raises(KeyError, match="no_such_field"):
        apply_overrides(cfg, ["model.llm.no_such_field=1"])
    with pytest.raises(ValueError, match="num_layers"):
        apply_overrides(cfg, ["model.llm.num_layers=three"])
    with pytest.raises(KeyError, match="unknown field"):
        model_config_dict(llm=dict(hidden=1))


def test_bad_reference_config_names_the_problem(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        model_config_from_reference(str(bad))
    with pytest.raises(KeyError, match="num_hidden_layers"):
        model_config_from_reference({"hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10})
