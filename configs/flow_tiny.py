"""Flow-matching decoder training at tiny size on the bundled demo corpus (minutes on 2 CPU cores).

Trains the prenet and U-Net of ``configs/tiny.py`` with the OT-CFM loss and the prenet prior
loss (paper §3.2) on the frozen audio tokenizer trained by ``configs/tokenizer_tiny.py``::

    baichuan-audio train --config configs/flow_tiny.py --workdir runs/flow_tiny \\
        --config.init_from.tokenizer=runs/tokenizer_tiny

``init_from.tokenizer`` names the tokenizer's training run (or a model bundle, ``PATH#part``).
"""
import os

import ml_collections

from baichuan_audio_jax.config import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_TRAIN = os.path.join(os.path.dirname(_HERE), "data_pipelines", "demo_corpus", "train.jsonl")


def get_config() -> ml_collections.ConfigDict:
    cfg = load_config(os.path.join(_HERE, "tiny.py"))
    cfg.task = "flow_matching"
    cfg.init_from = ml_collections.ConfigDict(dict(tokenizer="runs/tokenizer_tiny"))
    cfg.steps = 400
    cfg.log_every = 20
    cfg.checkpoint_every = 200
    cfg.data.source = "grain_audio"
    cfg.data.sources = [DEMO_TRAIN]
    cfg.data.batch_size = 8
    cfg.data.seq_len = 240  # log-mel frames per row: 2.39 s (the corpus is 0.9-2.3 s)
    cfg.data.read_threads = 2
    cfg.data.prefetch = 16
    cfg.train.learning_rate = 1e-3
    cfg.train.min_learning_rate = 1e-4
    cfg.train.warmup_steps = 20
    cfg.train.weight_decay = 0.0
    return cfg
