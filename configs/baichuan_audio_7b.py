"""The released Baichuan-Audio geometry (Qwen2.5-7B LLM, reference §2) with pod-scale training
settings: bfloat16 compute over float32 master weights, full rematerialisation, parameters and
optimizer state sharded over the whole slice (fsdp), stage-2 pretraining (paper §3.3)."""
import ml_collections

from baichuan_audio_jax.config import default_run_config, model_config_dict


def get_config() -> ml_collections.ConfigDict:
    cfg = default_run_config()
    # Every default of the model section is the real model's value.
    cfg.model = model_config_dict()
    cfg.model.dtype = "bfloat16"
    cfg.model.remat_policy = "full"
    cfg.stage = 2
    cfg.steps = 100_000
    cfg.log_every = 10
    cfg.checkpoint_every = 1000
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
    cfg.data.batch_size = 256  # global rows per step: 1M tokens at 4096 positions
    cfg.data.seq_len = 4096
    cfg.train.grad_accum_steps = 4  # 64-row microbatches: one row per chip of a 64-chip slice
    cfg.train.learning_rate = 1e-5
    cfg.train.min_learning_rate = 1e-6
    cfg.train.warmup_steps = 2000
    cfg.train.max_audio_positions = 1024  # audio-head positions per row (12.5 frames/s of speech)
    cfg.train.loss_chunk_size = 512  # LM-head logits built 512 positions at a time
    cfg.train.peak_flops_per_device = 459e12  # TPU v5p bf16 peak per chip
    cfg.checkpoint.max_to_keep = 3
    return cfg
