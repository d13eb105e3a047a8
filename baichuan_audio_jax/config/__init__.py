"""Configuration: typed sections declared once, ml_collections for users, frozen dataclasses for modules.

* :mod:`.model`: the ``model`` section (frozen dataclasses modules keep under ``jax.jit``).
* :mod:`.reference`: the reference ``config.json`` and back.
* :mod:`.run`: the run sections (``train``, ``data``, ``mesh``, ...), each field with its doc.
* :mod:`.loading`: ``load_config`` resolves a config file against them; overrides; printing.

A run is one ``ml_collections.ConfigDict`` (``configs/*.py`` return one from ``get_config()``),
overridable on the command line with ``--config.a.b=value``.
"""
from baichuan_audio_jax.config.loading import (
    ConfigKeyError,
    apply_overrides,
    format_config,
    load_config,
    resolve,
    split_config_overrides,
)
from baichuan_audio_jax.config.model import (
    _AUDIO_CONFIG_TOKEN_FIELDS,
    MODEL_CONFIG_FORMAT,
    MODEL_CONFIG_VERSION,
    NUM_CODEBOOKS,
    REAL_CODEBOOK_SIZES,
    REAL_TOKEN_IDS,
    TOKEN_FIELDS,
    AudioDecoderConfig,
    AudioEncoderConfig,
    AudioHeadConfig,
    FlowMatchingConfig,
    LLMConfig,
    ModelConfig,
    SpecialTokens,
    VocoderConfig,
    VQBridgeConfig,
    model_config_dict,
    model_config_from_json,
    model_config_to_json,
)
from baichuan_audio_jax.config.reference import (
    complete_reference_config,
    flow_matching_fields_from_reference,
    model_config_from_reference,
    reference_config_from_model,
    vocoder_config_from_reference,
)
from baichuan_audio_jax.config.run import default_data_config, default_run_config

__all__ = [
    "_AUDIO_CONFIG_TOKEN_FIELDS", "MODEL_CONFIG_FORMAT", "MODEL_CONFIG_VERSION", "NUM_CODEBOOKS", "REAL_CODEBOOK_SIZES",
    "REAL_TOKEN_IDS", "TOKEN_FIELDS", "AudioDecoderConfig", "AudioEncoderConfig", "AudioHeadConfig",
    "ConfigKeyError", "complete_reference_config", "FlowMatchingConfig", "LLMConfig", "ModelConfig",
    "SpecialTokens", "VQBridgeConfig",
    "VocoderConfig", "apply_overrides", "default_data_config", "default_run_config",
    "flow_matching_fields_from_reference", "format_config", "load_config", "model_config_dict",
    "model_config_from_json", "model_config_from_reference", "model_config_to_json", "reference_config_from_model",
    "resolve", "split_config_overrides", "vocoder_config_from_reference",
]
