"""HiFT vocoder training at tiny size (the parity fixtures' vocoder widths) on the demo corpus.

The generator of ``configs/tiny.py`` (base 32 channels, the released structure otherwise)
against multi-period and multi-resolution spectrogram discriminators, on 0.16 s segments of the
bundled demo corpus (16 kHz recordings resampled to 24 kHz)::

    baichuan-audio train --config configs/vocoder_tiny.py --workdir runs/vocoder_tiny

Tests run it for a few steps; ``configs/vocoder_demo.py`` is the size the demo trains.
"""
import os

from baichuan_audio_jax.config import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_TRAIN = os.path.join(os.path.dirname(_HERE), "data_pipelines", "demo_corpus", "train.jsonl")


def get_config():
    cfg = load_config(os.path.join(_HERE, "tiny.py"))
    cfg.task = "vocoder"
    cfg.steps = 40
    cfg.log_every = 5
    cfg.checkpoint_every = 20
    cfg.data.source = "grain_audio"
    cfg.data.sources = [DEMO_TRAIN]
    cfg.data.batch_size = 2
    cfg.data.seq_len = 8  # 24 kHz mel frames per segment: 8 × 480 samples = 0.16 s
    cfg.data.read_threads = 1
    cfg.data.prefetch = 4
    cfg.train.learning_rate = 2e-3
    cfg.train.min_learning_rate = 2e-4
    cfg.train.warmup_steps = 2
    cfg.train.b1, cfg.train.b2 = 0.8, 0.99  # HiFi-GAN's Adam betas
    cfg.train.weight_decay = 0.0
    cfg.train.max_grad_norm = 0.0
    return cfg
