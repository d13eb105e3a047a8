"""Configs: the reference config.json reader, the shipped configs, command-line overrides."""

import pytest
from conftest import REPO

from baichuan_audio_jax.config import (
    apply_overrides,
    format_config,
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


def test_a_mistyped_or_misplaced_key_names_the_closest_valid_one():
    with pytest.raises(KeyError, match=r"'train.learnig_rate'.*did you mean 'train.learning_rate'"):
        load_config(REPO / "configs" / "tiny.py", ["--config.train.learnig_rate=1"])
    # A key of another section: the same name where it is declared.
    with pytest.raises(KeyError, match=r"'data.warmup_steps'.*did you mean 'train.warmup_steps'.*Valid keys of 'data'"):
        load_config(REPO / "configs" / "tiny.py", ["--config.data.warmup_steps=3"])
    with pytest.raises(KeyError, match=r"did you mean 'train.tokenizer.ema_decay'"):
        load_config(REPO / "configs" / "tiny.py", ["--config.train.ema_decay=0.9"])


def test_a_config_file_cannot_add_keys_or_change_types(tmp_path):
    base = (REPO / "configs" / "tiny.py").read_text()
    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text(base.replace("    return cfg\n", "    cfg.train.learnig_rate = 1.0\n    return cfg\n"))
    with pytest.raises(KeyError, match=r"bad_key.py: unknown config key 'train.learnig_rate'.*'train.learning_rate'"):
        load_config(bad_key)
    bad_type = tmp_path / "bad_type.py"
    bad_type.write_text(base.replace("    return cfg\n", "    cfg.steps = 'many'\n    return cfg\n"))
    with pytest.raises(ValueError, match=r"bad_type.py: .*'steps'"):
        load_config(bad_type)
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def get_config(:\n")
    with pytest.raises(ValueError, match=r"syntax.py: syntax error at line 1"):
        load_config(syntax)


def test_resolved_configs_are_locked_and_complete():
    cfg = load_config(REPO / "configs" / "tokenizer_tiny.py")
    with pytest.raises(AttributeError):
        cfg.train.learnig_rate = 1.0  # a typo in code cannot add a key either
    # Fields a file leaves out hold their declared defaults.
    assert cfg.data.max_consecutive_skips == 10_000 and cfg.train.tokenizer.ema_decay == 0.99


def test_print_config_lists_every_field_with_its_doc():
    cfg = load_config(REPO / "configs" / "tiny.py")
    text = format_config(cfg)
    leaves = [line for line in text.splitlines() if " = " in line]
    assert len(leaves) == len(_leaf_keys(cfg))
    assert all("  # " in line for line in leaves), [line for line in leaves if "  # " not in line][:5]
    assert "train.learning_rate = 0.001  # peak learning rate" in text


def _leaf_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        keys += _leaf_keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [prefix + k]
    return keys
