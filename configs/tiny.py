"""A tiny model with the real structure: seconds to build and run on a laptop CPU.

Special ids follow the parity fixtures' tiny layout (real id - 151196), so a model built from
this config uses the same protocol as the released one with a 512-entry vocabulary.
"""
import ml_collections

from baichuan_audio_jax.config import REAL_TOKEN_IDS, default_run_config, model_config_dict

TINY_TOKEN_OFFSET = -151196


def get_config() -> ml_collections.ConfigDict:
    cfg = default_run_config()
    tokens = {k: v + TINY_TOKEN_OFFSET for k, v in REAL_TOKEN_IDS.items()}
    tokens.update(eos_token_id=2, pad_token_id=0)
    cfg.model = model_config_dict(
        llm=dict(vocab_size=512, hidden_size=256, intermediate_size=320, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=512),
        audio_head=dict(num_layers=1),
        audio_encoder=dict(d_model=64, num_layers=2, num_heads=4, ffn_dim=128,
                           max_source_positions=400, max_audio_seconds=8),
        vq_bridge=dict(d_model=64, codebook_sizes=[64, 32, 16, 16, 8, 8, 8, 8]),
        audio_decoder=dict(d_model=64, num_layers=2, num_heads=4, ffn_dim=128,
                           max_source_positions=800, post_net_channels=[32] * 5),
        flow_matching=dict(prenet_in_dim=64, prenet_d_model=48, prenet_attention_heads=4,
                           prenet_ffn_dim=96, prenet_nlayers=2, prenet_max_source_positions=256,
                           channels=[32], n_blocks=2, num_mid_blocks=2, num_heads=4,
                           attention_head_dim=16),
        vocoder=dict(base_channels=32, f0_cond_channels=32),
        tokens=tokens,
    )
    # A run that trains in minutes on a CPU (synthetic data unless data.source says otherwise).
    cfg.steps = 200
    cfg.log_every = 10
    cfg.checkpoint_every = 100
    cfg.data.batch_size = 8
    cfg.data.seq_len = 128
    cfg.train.learning_rate = 1e-3
    cfg.train.min_learning_rate = 1e-4
    cfg.train.warmup_steps = 10
    return cfg
