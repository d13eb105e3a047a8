"""HiFT vocoder training at demo size on the bundled demo corpus (minutes on 2 CPU cores).

A generator of 64 base channels with two Snake ResBlock kernels per upsampling stage (the
released one: 512 channels, three kernels), the released upsampling (8·5·3) and iSTFT (n_fft 16,
hop 4), against multi-period (periods 2, 3, 5) and multi-resolution spectrogram (two
resolutions) discriminators scaled to it; 0.24 s
segments of the corpus resampled from 16 to 24 kHz::

    baichuan-audio train --config configs/vocoder_demo.py --workdir runs/vocoder_demo

``make demo`` trains it with the demo's model config (whose ``model.vocoder`` is this one) and
puts it in the bundle; ``docs/vocoder_training.md`` has its numbers.
"""
import os

from baichuan_audio_jax.config import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_TRAIN = os.path.join(os.path.dirname(_HERE), "data_pipelines", "demo_corpus", "train.jsonl")
VOCODER = dict(base_channels=64, f0_cond_channels=64, resblock_kernel_sizes=[3, 7],
               resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])


def get_config():
    cfg = load_config(os.path.join(_HERE, "tiny.py"))
    cfg.model.vocoder.update(VOCODER)
    cfg.task = "vocoder"
    cfg.steps = 300
    cfg.log_every = 10
    cfg.checkpoint_every = 100
    cfg.data.source = "grain_audio"
    cfg.data.sources = [DEMO_TRAIN]
    cfg.data.batch_size = 8
    cfg.data.seq_len = 12  # 24 kHz mel frames per segment: 12 × 480 samples = 0.24 s
    cfg.data.read_threads = 2
    cfg.data.prefetch = 16
    cfg.train.learning_rate = 2e-3
    cfg.train.min_learning_rate = 2e-4
    cfg.train.warmup_steps = 10
    cfg.train.b1, cfg.train.b2 = 0.8, 0.99  # HiFi-GAN's Adam betas
    cfg.train.weight_decay = 0.0
    cfg.train.max_grad_norm = 0.0
    # A few hundred steps: the mel loss alone first (it moves the generator fastest), then the
    # discriminators join.
    cfg.train.vocoder.adversarial_start_step = 150
    # Fewer sub-discriminators than HiFi-GAN's five periods and three resolutions: a step (and its
    # compilation) costs about half as much on a CPU.
    cfg.train.vocoder.periods = [2, 3, 5]
    cfg.train.vocoder.resolutions = [[1024, 120, 600], [512, 50, 240]]
    return cfg
