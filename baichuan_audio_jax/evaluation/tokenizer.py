"""The ``tokenizer`` task: the paper's Table-1 metrics of the audio tokenizer on a manifest.

Each record is featurised as in tokenizer training (:class:`data_pipelines.audio_pipeline.AudioExample`,
the ``audio_tokenizer`` rows of :mod:`baichuan_audio_jax.audio_batch`), encoded by nearest-neighbour
search over all 8 stages and decoded (:func:`baichuan_audio_jax.training.tokenizer_task.evaluate`,
the computation of ``baichuan-audio eval-tokenizer``), one result per record: ``mel_mae`` is the
mean |refined mel − target| over the valid frames and bins (62.5 Hz), ``coarse_mae`` the same at
100 Hz, and the codes each record used. The report sums over records: corpus ``mel_mae`` and
``coarse_mae`` (total absolute error over total elements), per-codebook ``used`` codes and
``perplexity`` and ``codes_used_fraction``.
"""
from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.evaluation.inputs import SkipRecord
from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
from baichuan_audio_jax.training.tokenizer_task import evaluate
from data_pipelines.audio_pipeline import AudioExample
from data_pipelines.skips import Skip
from data_pipelines.sources import JsonlSource, parse_source_spec

_REASONS = {"invalid_record": "missing_field", "bad_json": "bad_json", "too_long": "audio_too_long",
            "too_short": "audio_too_short"}


@functools.lru_cache(maxsize=8)
def _setup(manifest: str, max_seconds: float, cfg):
    enc = cfg.audio_encoder
    seq_len = int(math.ceil(max_seconds * enc.sampling_rate / enc.hop_length)) + 1
    while seq_len > 8 and not _fits(cfg, seq_len):  # what the encoder's and decoder's tables hold
        seq_len -= 1
    source = JsonlSource(parse_source_spec({"path": manifest, "kind": "jsonl"}), None)
    make = AudioExample(source, cfg, "audio_tokenizer", max_samples=seq_len * enc.hop_length - 1,
                        max_seconds=seq_len * enc.hop_length / enc.sampling_rate, text_len=1)
    return make, audio_batch.tokenizer_row_shapes(cfg, seq_len, 1)


def _fits(cfg, seq_len: int) -> bool:
    g = audio_batch.AudioGeometry.of(cfg, seq_len, padded=True)
    return (g.encoder_frames <= cfg.audio_encoder.max_source_positions
            and g.decoder_frames <= cfg.audio_decoder.max_source_positions)


def _model(ctx) -> AudioTokenizer:
    rt = ctx.model.audio_tokenizer
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: AudioTokenizer(rt.cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, rt.state)


@functools.lru_cache(maxsize=4)
def _per_row(graphdef):
    """Per-record sums: ``evaluate`` vmapped over the rows (each row a batch of one)."""

    def fn(state, batch):
        tok = nnx.merge(graphdef, state)
        return jax.vmap(lambda row: evaluate(tok, jax.tree.map(lambda x: x[None], row)))(batch)

    return jax.jit(fn)


def run_items(ctx, spec, items):
    tok = _model(ctx)
    cfg = ctx.model.audio_tokenizer.cfg
    cap = float(cfg.audio_encoder.max_audio_seconds)
    make, shapes = _setup(spec.manifest, min(float(spec.option("max_seconds", cap)), cap), cfg)
    rows, out = [], []
    for it in items:
        ex = make((it["line"], json.dumps({"task": "audio", "audio": it["record"]["audio"]})))
        if isinstance(ex, Skip):
            out.append(SkipRecord(_REASONS.get(ex.reason, f"audio_{ex.reason}"), ex.detail))
        else:
            out.append(len(rows))
            rows.append(ex)
    if not rows:
        return out
    b = ctx.batch_size
    graphdef, state = nnx.split(tok)
    fn = _per_row(graphdef)
    per: list[dict] = []
    for start in range(0, len(rows), b):
        chunk = rows[start:start + b]
        batch = audio_batch.pad_rows(chunk + [chunk[-1]] * (b - len(chunk)), shapes)
        res = jax.device_get(fn(state, {k: jnp.asarray(v) for k, v in batch.items()}))
        for r in range(len(chunk)):
            entry = {k: float(np.asarray(res[k][r])) for k in ("abs_refined", "frames_refined", "abs_coarse",
                                                                 "frames_coarse")}
            entry["mel_mae"] = entry["abs_refined"] / max(entry["frames_refined"], 1.0)
            entry["coarse_mae"] = entry["abs_coarse"] / max(entry["frames_coarse"], 1.0)
            entry["code_counts"] = []
            k = 0
            while f"vq{k}_counts" in res:
                counts = np.asarray(res[f"vq{k}_counts"][r])
                used = np.flatnonzero(counts)
                entry["code_counts"].append({"size": int(counts.shape[-1]),
                                             "codes": [[int(c), int(counts[c])] for c in used]})
                k += 1
            per.append(entry)
    return [o if isinstance(o, SkipRecord) else per[o] for o in out]


def summarise(results):
    tot = {k: sum(r[k] for r in results) for k in ("abs_refined", "frames_refined", "abs_coarse", "frames_coarse")}
    out = {"mel_mae": tot["abs_refined"] / max(tot["frames_refined"], 1.0),
           "coarse_mae": tot["abs_coarse"] / max(tot["frames_coarse"], 1.0), "codebooks": []}
    used_all = size_all = 0
    for k in range(len(results[0]["code_counts"])):
        size = results[0]["code_counts"][k]["size"]
        counts = np.zeros(size, np.float64)
        for r in results:
            for code, n in r["code_counts"][k]["codes"]:
                counts[code] += n
        p = counts / max(counts.sum(), 1.0)
        nz = p[p > 0]
        out["codebooks"].append({"size": size, "used": int((counts > 0).sum()),
                                 "perplexity": round(float(np.exp(-(nz * np.log(nz)).sum())), 2)})
        used_all += int((counts > 0).sum())
        size_all += size
    out["codes_used_fraction"] = used_all / max(size_all, 1)
    return out
