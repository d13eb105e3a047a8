"""Periodic evaluation inside ``train``: a tiny LLM trained on the demo corpus's transcripts runs a
spoken-cloze style suite (T→T: the true last word of a training sentence against a word of a class
that never ends one) every ``eval_every`` steps on its live parameters. The scalars land in the
run's TensorBoard at exactly those steps, an interrupted-and-resumed run neither repeats nor skips an
evaluation, and the trained model ranks the training text above the swapped ending."""
import json
import os
import struct

import pytest
from conftest import REPO

from baichuan_audio_jax.config import load_config
from baichuan_audio_jax.demo.evaluation import cloze_records
from baichuan_audio_jax.evaluation.periodic import periodic_eval
from baichuan_audio_jax.training.trainer import train
from data_pipelines.demo_corpus import HELDOUT_MANIFEST, TRAIN_MANIFEST

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out

EVERY, CKPT, CRASH, STEPS = 10, 15, 25, 30


class Crash(RuntimeError):
    pass


def _config(root):
    from baichuan_audio_jax.config import ModelConfig
    from baichuan_audio_jax.demo.corpus import transcripts
    from baichuan_audio_jax.text.tokenizer import train_sentencepiece

    cfg = load_config(REPO / "configs" / "tiny.py")
    texts = [t for _, t in transcripts(TRAIN_MANIFEST)]
    sp = train_sentencepiece(texts + ["将语音转录为文本:"], str(root / "sp.model"),
                             ModelConfig.from_config(cfg.model).tokens, vocab_size=cfg.model.llm.vocab_size)
    (root / "text.jsonl").write_text("".join(json.dumps({"task": "text", "text": t}) + "\n" for t in texts))
    heldout = [t for _, t in transcripts(HELDOUT_MANIFEST)]
    (root / "heldout.jsonl").write_text("".join(json.dumps({"task": "text", "text": t}) + "\n" for t in heldout))
    records = cloze_records(TRAIN_MANIFEST)[:32]
    (root / "cloze.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "suite.json").write_text(json.dumps({"tasks": [{"name": "cloze", "type": "cloze",
                                                            "manifest": "cloze.jsonl"}]}))
    cfg.data.source = "grain"
    cfg.data.sources = [str(root / "text.jsonl")]
    cfg.data.tokenizer = sp.path
    cfg.data.seq_len = 64
    cfg.data.read_threads = 1
    cfg.data.prefetch = 4
    cfg.train.max_audio_positions = 1
    cfg.train.warmup_steps = 5
    cfg.steps, cfg.log_every, cfg.checkpoint_every = STEPS, 10, CKPT
    cfg.checkpoint.async_save = False
    cfg.eval_every = EVERY
    cfg.eval.suite = str(root / "suite.json")
    cfg.eval.batch_size = 8
    cfg.eval.heldout = [str(root / "heldout.jsonl")]
    cfg.eval.heldout_batches = 2
    return cfg


def _scalars(logdir):
    """(tag, step) of every scalar TensorBoard would show: event files read in order, a
    SessionLog START at step s dropping earlier events at steps ≥ s (how a resumed run purges)."""
    from tensorboardX.proto import event_pb2

    seen = []
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                seen = [(t, s) for t, s in seen if s < event.step]
            for v in event.summary.value:
                seen.append((v.tag, event.step))
    return seen


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_eval")
    cfg = _config(root)
    workdir = str(root / "run")

    def crash(step, graphdef, state, writer):
        if step == CRASH:
            raise Crash(f"killed at step {step}")

    with pytest.raises(Crash):
        train(cfg, workdir, progress=False, hooks=[periodic_eval(cfg, workdir), crash])
    first = [json.loads(x)["step"] for x in open(os.path.join(workdir, "eval", "history.jsonl"))]
    train(cfg, workdir, progress=False, hooks=[periodic_eval(cfg, workdir)])  # resumes from step 15
    return root, workdir, first


def test_evaluations_run_once_at_every_multiple_across_a_resume(run):
    _, workdir, first = run
    assert first == [10, 20]
    history = [json.loads(x)["step"] for x in open(os.path.join(workdir, "eval", "history.jsonl"))]
    assert history == [10, 20, 30]  # 20 (after the step-15 checkpoint) was not repeated, 30 not skipped
    for step in (10, 20, 30):
        report = json.load(open(os.path.join(workdir, "eval", f"step_{step}", "report.json")))
        assert report["step"] == step and report["tasks"]["cloze"]["count"] == 32


def test_scalars_in_the_runs_tensorboard_at_the_eval_steps(run):
    _, workdir, _ = run
    seen = _scalars(os.path.join(workdir, "tensorboard"))
    steps = sorted(s for t, s in seen if t == "eval/cloze/accuracy")
    assert steps == [10, 20, 30]
    assert sorted(s for t, s in seen if t == "eval/heldout/loss") == [10, 20, 30]
    assert any(t == "train/loss" for t, _ in seen)


def test_heldout_loss_falls(run):
    _, workdir, _ = run
    losses = [json.load(open(os.path.join(workdir, "eval", f"step_{s}", "report.json")))["heldout"]["loss"]
              for s in (10, 30)]
    assert losses[1] < losses[0]


def test_the_trained_model_prefers_the_training_text(run):
    _, workdir, _ = run
    report = json.load(open(os.path.join(workdir, "eval", f"step_{STEPS}", "report.json")))["tasks"]["cloze"]
    assert report["chance"] == 0.5
    assert report["accuracy"] >= 0.75 and report["accuracy_length_normalized"] >= 0.75
