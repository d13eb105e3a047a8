"""The grain_audio source serving the encoder's ASR pretraining: batches the task accepts, speed
perturbation of every read (all factors drawn, lengths scaled by them) and exact resume."""
import json

import numpy as np
import pytest
from conftest import REPO

from baichuan_audio_jax.config import ModelConfig, load_config
from baichuan_audio_jax.training.tasks import check_batch_fields, get_task
from data_pipelines.audio_pipeline import build_audio_iterator
from data_pipelines.demo_corpus import CORPUS_DIR, TRAIN_MANIFEST


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    lines = [json.loads(x) for x in open(TRAIN_MANIFEST)][:2]
    for rec in lines:
        rec["audio"] = str(CORPUS_DIR + "/" + rec["audio"])
    path = tmp_path_factory.mktemp("m") / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def _config(manifest, sp_model, *overrides):
    return load_config(REPO / "configs" / "encoder_asr_tiny.py",
                       [f"data.sources=[\"{manifest}\"]", "data.batch_size=2", "data.read_threads=1",
                        "data.prefetch=2", "data.shuffle=false", f"data.tokenizer={sp_model}", *overrides])


def _lengths(batches):
    return np.concatenate([b["feature_lengths"] for b in batches])


def test_speed_perturbed_batches_and_resume(manifest, sp_model):
    plain_cfg = _config(manifest, sp_model, "data.speed_perturb=[]")
    task = get_task("encoder_asr")
    plain = next(build_audio_iterator(plain_cfg))
    check_batch_fields(task, plain, 2, int(plain_cfg.data.seq_len), model_cfg=ModelConfig.from_config(plain_cfg.model),
                       fields=task.fields(plain_cfg))
    base = plain["feature_lengths"].astype(float)  # the 2 records unperturbed

    cfg = _config(manifest, sp_model)  # factors 0.9, 1.0, 1.1
    it = build_audio_iterator(cfg)
    batches = [next(it) for _ in range(12)]
    ratios = np.concatenate([b["feature_lengths"] / base for b in batches])
    # lengths scale by 1/factor: 16 kHz -> 17.6 kHz (×1.1) for 0.9, 14.4 kHz (×0.9) for 1.1 (rates
    # rounded to 400 Hz; frames to 10 ms), and every factor is drawn
    nearest = np.array([0.9, 1.0, 1.1])[np.argmin(np.abs(ratios[:, None] - np.array([0.9, 1.0, 1.1])), axis=1)]
    assert np.all(np.abs(ratios - nearest) < 0.015), ratios
    assert set(nearest.tolist()) == {0.9, 1.0, 1.1}
    np.testing.assert_array_equal(np.concatenate([b["text_ids"] for b in batches[:1]]), plain["text_ids"])

    it2 = build_audio_iterator(cfg)
    for _ in range(5):
        next(it2)
    state = json.loads(json.dumps(it2.get_state()))
    it3 = build_audio_iterator(cfg)
    it3.set_state(state)
    rest = [next(it3) for _ in range(7)]
    for got, want in zip(rest, batches[5:]):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
