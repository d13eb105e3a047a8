"""The audio encoder of ``configs/tiny.py`` pretrained as a speech recogniser (CTC) on the demo corpus.

The stand-in for the pretrained Whisper encoder the paper's tokenizer starts from: a tokenizer
run then loads it with ``init_from["tokenizer/audio_encoder"] = "runs/encoder_asr_tiny#audio_encoder"``::

    baichuan-audio train --config configs/encoder_asr_tiny.py --workdir runs/encoder_asr_tiny \\
        --config.data.tokenizer=TEXT_TOKENIZER.model

Augmentation: speed perturbation of the waveform (``data.speed_perturb``) and SpecAugment-style
frequency and time masks (``train.encoder_asr``).
"""
import os

import ml_collections

from baichuan_audio_jax.config import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_TRAIN = os.path.join(os.path.dirname(_HERE), "data_pipelines", "demo_corpus", "train.jsonl")


def asr_settings() -> ml_collections.ConfigDict:
    """``train.encoder_asr``: the SpecAugment masks (0 masks: off)."""
    return ml_collections.ConfigDict(dict(
        freq_masks=2,  # bands of mel bins masked per row
        freq_width=15,  # widest band (of the 128 bins)
        time_masks=2,  # spans of frames masked per row
        time_width=0.08,  # widest span, as a fraction of the row's valid frames
    ))


def get_config() -> ml_collections.ConfigDict:
    cfg = load_config(os.path.join(_HERE, "tiny.py"))
    cfg.task = "encoder_asr"
    cfg.steps = 600
    cfg.log_every = 20
    cfg.checkpoint_every = 200
    cfg.data.source = "grain_audio"
    cfg.data.sources = [DEMO_TRAIN]
    cfg.data.batch_size = 16
    cfg.data.seq_len = 280  # log-mel frames per row: 2.79 s (the corpus is 0.9-2.3 s, ×1/0.9 when slowed)
    cfg.data.text_len = 24  # transcript ids + EOS
    cfg.data.speed_perturb = [0.9, 1.0, 1.1]
    cfg.data.read_threads = 2
    cfg.data.prefetch = 16
    cfg.train.learning_rate = 2e-3
    cfg.train.min_learning_rate = 2e-4
    cfg.train.warmup_steps = 30
    cfg.train.weight_decay = 0.01
    cfg.train.encoder_asr = asr_settings()
    return cfg
