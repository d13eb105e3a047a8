"""Flow-matching decoder training at the released size on a TPU pod slice (paper §3.2).

Prenet (12 layers) and U-Net (1 down, 12 mid, 1 up block of 256 channels) trained with OT-CFM
(CFG dropout 0.2) and the prenet prior loss on 24 kHz targets, on a frozen tokenizer::

    init_from.tokenizer = "runs/tokenizer_real"    # a tokenizer run (or BUNDLE#<attribute path>)

Rows hold up to 30 s (3000 encoder log-mel frames, 1499 flow frames at 50 Hz).
"""
import ml_collections

from baichuan_audio_jax.config import default_run_config, model_config_dict


def get_config() -> ml_collections.ConfigDict:
    cfg = default_run_config()
    cfg.task = "flow_matching"
    cfg.model = model_config_dict()
    cfg.model.dtype = "bfloat16"
    cfg.model.remat_policy = "full"
    cfg.init_from = ml_collections.ConfigDict(dict(tokenizer="runs/tokenizer_real"))
    cfg.steps = 300_000
    cfg.log_every = 50
    cfg.checkpoint_every = 2000
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1
    cfg.data.source = "grain_audio"
    cfg.data.batch_size = 256
    cfg.data.seq_len = 3000
    cfg.data.max_audio_seconds = 30.0
    cfg.data.worker_count = 8
    cfg.train.learning_rate = 1e-4
    cfg.train.min_learning_rate = 1e-5
    cfg.train.warmup_steps = 2000
    cfg.train.weight_decay = 0.01
    cfg.train.peak_flops_per_device = 459e12
    return cfg
