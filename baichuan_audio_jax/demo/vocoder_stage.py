"""The demo's vocoder stage: a HiFT vocoder trained on the corpus audio, measured, and bundled.

:func:`train_vocoder` trains ``configs/vocoder_demo.py``'s recipe (the ``vocoder`` task) with the
demo's model config for ``vocoder_steps`` steps on the training manifest (``OUT/runs/vocoder``),
then measures the 24 kHz log-mel L1 of mel → waveform → mel on held-out utterances for the
untrained generator, the trained one and Griffin-Lim (the fallback it replaces), and records
them in the demo report. The bundle stage adds the trained generator as the bundle's vocoder
(:func:`trained_generator`) when it beats Griffin-Lim on that measure (``in_bundle``).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.audio.mel24k import MelGeometry, log_mel_24k, log_mel_numpy
from baichuan_audio_jax.config import FlowMatchingConfig, ModelConfig, load_config
from baichuan_audio_jax.inference.griffin_lim import griffin_lim_wave
from baichuan_audio_jax.models.hift import HiFTGenerator
from baichuan_audio_jax.records import read_manifest, resolve_audio_path
from baichuan_audio_jax.training.export import trained_model
from baichuan_audio_jax.training.metrics import read_metrics
from baichuan_audio_jax.training.vocoder_task import make_model

CONFIG_FILE = "vocoder_demo.py"
RUN_NAME = "vocoder"
EVAL_FRAMES = 40  # held-out segments of 40 mel frames (0.8 s) from each utterance's start
EVAL_SEED = 1234


def vocoder_run_config(demo: ml_collections.ConfigDict, configs_dir: str) -> ml_collections.ConfigDict:
    cfg = load_config(os.path.join(configs_dir, CONFIG_FILE))
    cfg.model = ml_collections.ConfigDict(demo.model.to_dict())
    cfg.seed = int(demo.seed)
    steps = int(demo.vocoder_steps)
    ratio = steps / int(cfg.steps)
    cfg.train.vocoder.adversarial_start_step = int(round(int(cfg.train.vocoder.adversarial_start_step) * ratio))
    cfg.train.warmup_steps = max(1, min(int(cfg.train.warmup_steps), steps // 10))
    cfg.steps = steps
    cfg.checkpoint_every = steps
    cfg.log_every = max(1, min(int(cfg.log_every), steps // 10 or 1))
    cfg.data.sources = [demo.train_manifest]
    cfg.data.seed = int(demo.seed)
    return cfg


def trained_generator(run: str, model_config: ml_collections.ConfigDict | None = None) -> HiFTGenerator:
    """The HiFT generator of a ``vocoder`` run (checked against ``model_config`` if given)."""
    trained, run_config, _ = trained_model(run)
    if str(run_config.task) != "vocoder":
        raise ValueError(f"{run} trained task {run_config.task!r}, not 'vocoder'")
    if model_config is not None:
        canonical = lambda c: json.dumps(c.to_dict(), sort_keys=True, default=str)
        if canonical(run_config.model) != canonical(model_config):
            raise ValueError(f"{run} trained another model config than the bundle's (vocoder)")
    return trained.generator


def heldout_segments(manifest: str, rate: int, samples: int, limit: int = 0) -> np.ndarray:
    """The first ``samples`` samples (at ``rate``) of each utterance of ``manifest`` long enough
    to hold them, ``[N, samples]`` (at most ``limit`` rows; 0: all)."""
    rows = []
    for _, rec in read_manifest(manifest):
        if not isinstance(rec, dict) or not isinstance(rec.get("audio"), str):
            continue
        wav = load_audio(resolve_audio_path(manifest, rec["audio"]), rate)
        if wav.shape[0] >= samples:
            rows.append(np.clip(wav[:samples], -1.0, 1.0))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{manifest}: no utterance holds {samples} samples at {rate} Hz")
    return np.stack(rows).astype(np.float32)


def generator_mel_l1(generator: HiFTGenerator, waves: np.ndarray, mel_cfg: FlowMatchingConfig,
                     seed: int = EVAL_SEED) -> float:
    """Mean |log-mel(vocoder(log-mel(y))) − log-mel(y)| over the rows of ``waves``."""
    graphdef, state = nnx.split(generator)

    @jax.jit
    def run(state, wave):
        mel = log_mel_24k(wave, mel_cfg)
        fake, _ = nnx.merge(graphdef, state)(mel, key=jax.random.key(seed))
        return jnp.mean(jnp.abs(log_mel_24k(fake, mel_cfg) - mel))

    return float(run(state, jnp.asarray(waves)))


def griffin_lim_mel_l1(waves: np.ndarray, mel_cfg: FlowMatchingConfig) -> float:
    """The same measure for Griffin-Lim phase reconstruction of the mel."""
    geometry = MelGeometry.of(mel_cfg)
    errors = []
    for i, wave in enumerate(waves):
        mel = log_mel_numpy(wave, geometry)
        back = log_mel_numpy(griffin_lim_wave(mel, geometry, seed=i)[:wave.shape[0]], geometry)
        errors.append(float(np.mean(np.abs(back - mel))))
    return float(np.mean(errors))


def train_vocoder(demo: Any, configs_dir: str) -> str | None:
    """Trains the demo's vocoder (a :class:`~baichuan_audio_jax.demo.pipeline.Demo` runs it;
    ``configs_dir`` holds ``vocoder_demo.py``) and
    records its held-out mel L1 in ``demo.report["vocoder"]``; returns the run to bundle, or None
    (``vocoder_steps`` 0, or a vocoder worse than Griffin-Lim: the bundle then has no vocoder and
    speaks through Griffin-Lim)."""
    config = demo.config
    if int(config.get("vocoder_steps", 0) or 0) <= 0:
        demo.log("vocoder_steps is 0: no vocoder is trained (speech through Griffin-Lim)")
        return None
    run_cfg = vocoder_run_config(config, configs_dir)
    run = demo.train(run_cfg, RUN_NAME)
    cfg = ModelConfig.from_config(run_cfg.model)
    waves = heldout_segments(config.heldout_manifest, cfg.vocoder.sampling_rate, EVAL_FRAMES * cfg.vocoder.hop_length)
    untrained = make_model(cfg, nnx.Rngs(int(run_cfg.seed))).generator
    rows = read_metrics(run)
    summary = {
        "steps": int(run_cfg.steps), "heldout_segments": int(waves.shape[0]),
        "heldout_mel_l1_untrained": round(generator_mel_l1(untrained, waves, cfg.flow_matching), 4),
        "heldout_mel_l1": round(generator_mel_l1(trained_generator(run), waves, cfg.flow_matching), 4),
        "heldout_mel_l1_griffin_lim": round(griffin_lim_mel_l1(waves, cfg.flow_matching), 4),
        "train_mel_l1_first": round(rows[0]["mel_l1"], 4) if rows else None,
        "train_mel_l1_last": round(rows[-1]["mel_l1"], 4) if rows else None,
    }
    # A vocoder still worse than Griffin-Lim on this measure would make the demo's speech worse:
    # it stays out of the bundle (said in the report) until it is trained longer.
    summary["in_bundle"] = summary["heldout_mel_l1"] < summary["heldout_mel_l1_griffin_lim"]
    demo.report["vocoder"] = summary
    demo.log(f"vocoder held-out mel L1: {summary['heldout_mel_l1_untrained']} untrained -> "
             f"{summary['heldout_mel_l1']} trained (Griffin-Lim {summary['heldout_mel_l1_griffin_lim']}); "
             + ("bundled" if summary["in_bundle"] else "not bundled: Griffin-Lim renders the demo's speech"))
    return run if summary["in_bundle"] else None
