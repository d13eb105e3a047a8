"""The released Baichuan-Audio geometry (Qwen2.5-7B LLM, reference §2)."""
import ml_collections

from baichuan_audio_jax.config import default_run_config, model_config_dict


def get_config() -> ml_collections.ConfigDict:
    cfg = default_run_config()
    # Every default of the model section is the real model's value.
    cfg.model = model_config_dict()
    cfg.model.dtype = "bfloat16"
    cfg.model.remat_policy = "full"
    return cfg
