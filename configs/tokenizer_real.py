"""Audio-tokenizer training at the released size on a TPU pod slice (paper §3.1).

The released tokenizer geometry (32-layer encoder, 8 codebooks [8192, 4096, 2048, 1024 ×5] over
5120-d vectors, 8-layer decoder) with a frozen 1.5B text LLM for the alignment loss (the paper's
choice; Qwen2.5-1.5B geometry in ``model.llm``). Start from pretrained weights::

    init_from.tokenizer = "runs/tokenizer_stage1"      # a tokenizer run (or BUNDLE#<attribute path>)
    init_from.llm       = "bundles/qwen2_5_1_5b#llm"    # a bundle from `convert --init-from-qwen2`

bfloat16 compute over float32 master weights, full rematerialisation, FSDP over the slice.
``data.sources`` lists JSONL manifests of ASR-style records (``audio`` + ``text``); up to 30 s
per row (3000 log-mel frames).
"""
import ml_collections

from baichuan_audio_jax.config import REAL_TOKEN_IDS, default_run_config, model_config_dict


def get_config() -> ml_collections.ConfigDict:
    cfg = default_run_config()
    cfg.task = "audio_tokenizer"
    # Alignment LLM: Qwen2.5-1.5B (its own vocabulary holds the real special ids).
    cfg.model = model_config_dict(
        llm=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                 num_kv_heads=2, head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True),
        tokens=dict(REAL_TOKEN_IDS))
    cfg.model.dtype = "bfloat16"
    cfg.model.remat_policy = "full"
    cfg.init_from = ml_collections.ConfigDict(dict(tokenizer="", llm=""))
    cfg.steps = 200_000
    cfg.log_every = 50
    cfg.checkpoint_every = 2000
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
    cfg.data.source = "grain_audio"
    cfg.data.batch_size = 256
    cfg.data.seq_len = 3000  # 30 s of log-mel frames per row
    cfg.data.text_len = 448
    cfg.data.max_audio_seconds = 30.0
    cfg.data.worker_count = 8
    cfg.train.learning_rate = 1e-4
    cfg.train.min_learning_rate = 1e-5
    cfg.train.warmup_steps = 2000
    cfg.train.weight_decay = 0.01
    cfg.train.grad_accum_steps = 4
    cfg.train.peak_flops_per_device = 459e12  # TPU v5p bf16 peak per chip
    ramp = 120_000  # 10 % -> 100 % replacement over the first 60 % of training
    cfg.train.tokenizer = ml_collections.ConfigDict(dict(
        ema_decay=0.99, l2_beta=0.001, laplace_eps=1e-5, restart_after=500, gumbel_temperature=0.5,
        layer_dropout=0.1,
        # Stages of the progressive replacement (paper: 10 % -> 100 %) with a matching commitment weight.
        replace_schedule=[[0, 0.1], [ramp // 3, 0.1], [ramp // 3, 0.4], [2 * ramp // 3, 0.4], [2 * ramp // 3, 0.7],
                          [ramp, 1.0]],
        commit_weight_schedule=[[0, 0.02], [ramp, 0.1]],
        recon_weight=1.0, multiscale_weight=1.0, llm_weight=1.0))
    return cfg
