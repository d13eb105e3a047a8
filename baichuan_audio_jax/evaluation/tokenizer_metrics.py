"""Evaluating a trained audio tokenizer on a manifest, on the inference path.

Every usable record of the manifest is featurised as in training (the ``grain_audio`` rows of
:mod:`baichuan_audio_jax.audio_batch`), encoded to codes by nearest-neighbour search over all 8
stages and decoded; the report holds the paper's Table-1 metric ``mel_mae`` (mean |refined mel −
target| over valid frames and bins, 62.5 Hz target), ``coarse_mae`` (100 Hz), per-codebook code
use over the whole set (``used``, ``perplexity``) and the records skipped by reason.
"""
from __future__ import annotations

import collections
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.training import codebook_learning as cl
from baichuan_audio_jax.training.tokenizer_task import evaluate
from data_pipelines.audio_pipeline import AudioExample
from data_pipelines.skips import Skip
from data_pipelines.sources import JsonlSource, parse_source_spec


def evaluate_manifest(tokenizer, config, manifest: str, *, batch_size: int = 8, progress: bool = True,
                      log: Callable[[str], None] = print) -> dict:
    """The report (see the module docstring) of ``tokenizer`` (an ``AudioTokenizer``) under the
    run ``config`` (its model and ``data.seq_len``) on every record of ``manifest``."""

    model_cfg = ModelConfig.from_config(config.model)
    seq_len = int(config.data.seq_len)
    shapes = audio_batch.tokenizer_row_shapes(model_cfg, seq_len, 1)
    enc = model_cfg.audio_encoder
    source = JsonlSource(parse_source_spec({"path": manifest, "kind": "jsonl"}), None)
    make = AudioExample(source, model_cfg, "audio_tokenizer", max_samples=seq_len * enc.hop_length - 1,
                        max_seconds=seq_len * enc.hop_length / enc.sampling_rate, text_len=1)

    step = jax.jit(lambda b: evaluate(tokenizer, b))
    totals: dict[str, np.ndarray] = {}
    skipped: collections.Counter = collections.Counter()
    pending: list[dict] = []
    used = 0

    def flush():
        nonlocal pending
        if not pending:
            return
        rows = pending + [pending[-1]] * (batch_size - len(pending))  # fixed shapes: repeat, then drop
        batch = audio_batch.pad_rows(rows, shapes)
        batch["feature_lengths"][len(pending):] = 0
        out = jax.device_get(step({k: jnp.asarray(v) for k, v in batch.items()}))
        for k, v in out.items():
            totals[k] = totals.get(k, 0) + np.asarray(v, np.float64)
        pending = []

    for item in tqdm(source.items(), desc="evaluate", unit="utt", disable=not progress):
        ex = make(item)
        if isinstance(ex, Skip):
            skipped[ex.reason] += 1
            continue
        pending.append(ex)
        used += 1
        if len(pending) == batch_size:
            flush()
    flush()
    if not used:
        raise ValueError(f"{manifest}: no usable record (skipped: {dict(skipped)})")
    report = dict(records=used, skipped=dict(sorted(skipped.items())),
                  mel_mae=float(totals["abs_refined"] / totals["frames_refined"]),
                  coarse_mae=float(totals["abs_coarse"] / totals["frames_coarse"]), codebooks=[])
    used_codes = sizes = 0
    for k in range(len(model_cfg.codebook_sizes)):
        counts = jnp.asarray(totals[f"vq{k}_counts"], jnp.float32)
        m = cl.usage_metrics(counts, jnp.zeros(counts.shape, jnp.int32), 0)
        report["codebooks"].append(dict(size=int(counts.shape[0]), used=int(m["used"]),
                                        perplexity=round(float(m["perplexity"]), 2)))
        used_codes += int(m["used"])
        sizes += int(counts.shape[0])
    report["codes_used_fraction"] = used_codes / sizes
    return report
