"""The grain_audio data source (data_pipelines/audio_pipeline.py): padded audio batches for the
tokenizer and flow-matching tasks, skip counting by reason, exact resume, target alignment."""
import json
import shutil

import numpy as np
import pytest

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.audio.mel24k import log_mel_24k
from baichuan_audio_jax.audio.whisper_logmel import log_mel
from baichuan_audio_jax.config import ModelConfig, load_config
from data_pipelines.demo_corpus import CORPUS_DIR, TRAIN_MANIFEST
from tests.training_helpers import REPO


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Five demo utterances plus a missing file, a corrupt file and a record without a transcript."""
    d = tmp_path_factory.mktemp("manifest")
    lines = [json.loads(x) for x in open(TRAIN_MANIFEST)][:5]
    for rec in lines:
        rec["audio"] = str(CORPUS_DIR + "/" + rec["audio"])
    (d / "bad.ogg").write_bytes(b"OggS not really an ogg stream")
    shutil.copy(lines[0]["audio"], d / "copy.ogg")
    lines += [{"audio": "missing.wav", "text": "open the door"}, {"audio": "bad.ogg", "text": "lift the cup"},
              {"task": "audio", "audio": "copy.ogg"}]
    path = d / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def _config(task_config, manifest, *overrides):
    return load_config(REPO / "configs" / task_config, [f"data.sources=[\"{manifest}\"]", "data.batch_size=2",
                                                        "data.read_threads=1", "data.prefetch=2", *overrides])


def test_tokenizer_batches_skips_and_resume(manifest, sp_model):
    from baichuan_audio_jax.training.tasks import check_batch_fields, get_task
    from data_pipelines.audio_pipeline import build_audio_iterator

    cfg = _config("tokenizer_tiny.py", manifest, f"data.tokenizer={sp_model}", "data.shuffle=false")
    task = get_task("audio_tokenizer")
    model = ModelConfig.from_config(cfg.model)
    it = build_audio_iterator(cfg)
    batches = [next(it) for _ in range(3)]  # 6 rows: the 5 good records and the first again
    for b in batches:
        check_batch_fields(task, b, 2, int(cfg.data.seq_len), model_cfg=model, fields=task.fields(cfg))
    assert it.skipped() == {"corrupt": 1, "invalid_record": 1, "missing": 1}
    # Row 0 is the first manifest record: features are the encoder front-end of its waveform.
    first = json.loads(open(manifest).readline())
    wav = load_audio(first["audio"], 16000, lowpass_filter_width=128)
    feats = log_mel(wav, audio_batch.log_mel_config(model))
    b0 = batches[0]
    assert int(b0["feature_lengths"][0]) == feats.shape[0]
    np.testing.assert_array_equal(b0["features"][0, :feats.shape[0]], feats)
    assert not np.any(b0["features"][0, feats.shape[0]:])
    g = audio_batch.AudioGeometry.of(model, feats.shape[0], padded=False)
    assert int(b0["coarse_lengths"][0]) == g.coarse_frames == 2 * (4 * g.tokens - 1)
    coarse = log_mel(wav, audio_batch.coarse_target_config(model))
    np.testing.assert_array_equal(b0["coarse_mel"][0, :g.coarse_frames], coarse[:g.coarse_frames])
    ids = b0["text_ids"][0, :int(b0["text_lengths"][0])]
    assert ids[-1] == model.tokens.eos_token_id
    # Resume: the state after one batch reproduces the following batches exactly.
    it2 = build_audio_iterator(cfg)
    next(it2)
    state = it2.get_state()
    want = [next(it2) for _ in range(2)]
    it3 = build_audio_iterator(cfg)
    it3.set_state(json.loads(json.dumps(state)))
    for w in want:
        got = next(it3)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])


def test_flow_batches_hold_the_24khz_mel_of_the_decoder_frames(manifest):
    from data_pipelines.audio_pipeline import build_audio_iterator

    cfg = _config("flow_tiny.py", manifest, "data.shuffle=false")
    model = ModelConfig.from_config(cfg.model)
    b = next(build_audio_iterator(cfg))
    assert set(b) == {"features", "feature_lengths", "mel", "mel_lengths"}
    first = json.loads(open(manifest).readline())
    wav24 = load_audio(first["audio"], 24000)
    t = int(b["mel_lengths"][0])
    g = audio_batch.AudioGeometry.of(model, int(b["feature_lengths"][0]), padded=False)
    assert t == g.decoder_frames == 4 * g.tokens - 1
    # Bound: the pipeline's numpy STFT (float64) against the JAX one (float32): 1e-4 on the log-mel
    # where the mel exceeds e^-7, 2e-3 down to the 1e-5 floor (float32 rounding of small magnitudes).
    got, want = b["mel"][0, :t], np.asarray(log_mel_24k(wav24, model.flow_matching))[:t]
    loud = want > -7
    np.testing.assert_allclose(got[loud], want[loud], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
    assert not np.any(b["mel"][0, t:])


def test_bad_configs_name_the_field(manifest):
    from data_pipelines.audio_pipeline import build_audio_iterator

    with pytest.raises(ValueError, match="data.seq_len"):
        build_audio_iterator(_config("tokenizer_tiny.py", manifest, "data.seq_len=5000",
                                     "train.tokenizer.llm_weight=0.0"))
    cfg = _config("tokenizer_tiny.py", manifest)
    with pytest.raises(ValueError, match="data.tokenizer"):
        build_audio_iterator(cfg)
