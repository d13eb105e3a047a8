"""Audio-tokenizer training at tiny size on the bundled demo corpus (minutes on 2 CPU cores).

The tokenizer of ``configs/tiny.py`` (8 codebooks of 64..8 codes over 256-d vectors) trained
from scratch with the paper's recipe (§3.1): EMA codebooks with the L2-norm constraint, restarts,
Gumbel sampling, layer-wise RVQ dropout, progressive replacement, reconstruction + multi-scale
mel + commitment + LLM-alignment losses. The alignment LLM is the tiny text LLM (frozen); its
transcripts are tokenized by a sentencepiece model trained on the corpus::

    baichuan-audio data train-tokenizer --config configs/tokenizer_tiny.py \\
        --manifest data_pipelines/demo_corpus/train.jsonl --out runs/demo_sp.model
    baichuan-audio train --config configs/tokenizer_tiny.py --workdir runs/tokenizer_tiny \\
        --config.data.tokenizer=runs/demo_sp.model

Without a tokenizer, set ``--config.train.tokenizer.llm_weight=0``. The alignment LLM is random
unless ``--config.init_from.llm`` names a trained one (e.g. an ``audio_llm`` run: ``runs/tiny#``).
"""
import os

import ml_collections

from baichuan_audio_jax.config import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_TRAIN = os.path.join(os.path.dirname(_HERE), "data_pipelines", "demo_corpus", "train.jsonl")


def tokenizer_settings(steps: int) -> ml_collections.ConfigDict:
    """``train.tokenizer``: codebook learning and loss weights (paper §3.1; values of our choosing
    where the paper gives none)."""
    ramp = max(1, int(steps * 0.6))
    return ml_collections.ConfigDict(dict(
        ema_decay=0.99,  # α
        l2_beta=0.01,  # β of c = (1 − β)·c′
        laplace_eps=1e-5,
        restart_after=20,  # steps a code may stay unused before it is restarted
        gumbel_temperature=0.5,  # Gumbel-softmax sampling of codes in training (0: nearest)
        layer_dropout=0.1,  # per-instance probability of dropping RVQ stages 2..8
        replace_schedule=[[0, 0.1], [ramp, 1.0]],  # share of instances whose encoder output is quantised
        commit_weight_schedule=[[0, 0.02], [ramp, 0.1]],
        recon_weight=1.0,  # λ1 (eq. 1)
        multiscale_weight=1.0,
        llm_weight=0.2,  # λ2
    ))


def get_config() -> ml_collections.ConfigDict:
    cfg = load_config(os.path.join(_HERE, "tiny.py"))
    cfg.task = "audio_tokenizer"
    # Start parts from trained weights: a training run or a bundle ("PATH#part"); empty = random.
    cfg.init_from = ml_collections.ConfigDict(dict(tokenizer="", llm=""))
    cfg.steps = 600
    cfg.log_every = 20
    cfg.checkpoint_every = 200
    cfg.data.source = "grain_audio"
    cfg.data.sources = [DEMO_TRAIN]
    cfg.data.batch_size = 8
    cfg.data.seq_len = 240  # log-mel frames per row: 2.39 s (the corpus is 0.9-2.3 s)
    cfg.data.text_len = 24  # transcript ids + EOS
    cfg.data.read_threads = 2
    cfg.data.prefetch = 16
    cfg.train.learning_rate = 2e-3
    cfg.train.min_learning_rate = 2e-4
    cfg.train.warmup_steps = 20
    cfg.train.weight_decay = 0.0
    cfg.train.tokenizer = tokenizer_settings(cfg.steps)
    return cfg
