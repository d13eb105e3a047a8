"""The demo's whole path, shortened: ``baichuan-audio demo`` with a few steps per training run and a
smaller LLM trains every part on the bundled corpus, writes a model bundle that ``generate`` uses
as is, and a report with every number the README promises."""
import json

import numpy as np
import pytest
import soundfile as sf

from tests.training_helpers import cli_env, run_cli

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out

SHORT = ["llm_text_steps=2", "encoder_asr_steps=3", "tokenizer_steps=3", "flow_steps=2", "llm_stage1_steps=2",
         "llm_stage2_steps=3",
         "concatenated_asr=400", "asr_utterances=2", "tts_sentences=1", "llm_batch_size=4", "llm_seq_len=192",
         "model.llm.hidden_size=64", "model.llm.intermediate_size=96", "model.llm.num_layers=1",
         "model.llm.num_heads=2", "model.llm.num_kv_heads=1", "model.llm.head_dim=32", "model.audio_head.head_dim=32"]
STAGES = ("text_tokenizer", "llm_text", "encoder_asr", "audio_tokenizer", "flow_matching", "tokenize", "llm_stage1",
          "llm_stage2", "vocoder", "bundle", "evaluate")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_cli(["demo", "--out", str(out), "--no-progress", *[f"--config.{o}" for o in SHORT]], cli_env(1),
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return out, json.loads((out / "report.json").read_text()), proc


def test_report_has_every_number(demo_run):
    out, report, proc = demo_run
    assert set(STAGES) <= set(report["wall_seconds"]) and report["wall_seconds"]["total"] > 0
    assert set(report["training"]) == {"llm_text", "encoder_asr", "audio_tokenizer", "flow_matching", "llm_stage1",
                                       "llm_stage2"}
    for name, run in report["training"].items():
        assert np.isfinite(run["first"]["loss"]) and np.isfinite(run["last"]["loss"]), name
    assert report["training"]["llm_stage2"]["steps"] == 3
    asr_pretraining = report["encoder_asr"]
    assert asr_pretraining["utterances"] == 48 and 0 <= asr_pretraining["heldout_ctc_wer"]
    tok = report["audio_tokenizer"]
    assert tok["heldout_records"] == 48 and 0 < tok["heldout_mel_mae"] < 10
    asr, tts = report["evaluation"]["asr"], report["evaluation"]["tts"]
    assert asr["utterances"] == 2 and len(asr["examples"]) == 2 and 0 <= asr["wer"]
    assert tts["sentences"] == 1 and tts["round_trip_wer"] is not None and tts["codes_round_trip_wer"] is not None
    # the derived training data: every corpus record as ASR and TTS, ITTS groups of 3, none skipped
    assert report["tokenize"]["records"] == {"asr": 400, "tts": 400, "itts": 128, "asr_concatenated": 400}
    assert all(not s for s in report["tokenize"]["skipped"].values())
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["report"] == str(out / "report.json")


def test_spoken_sentences_are_24k_wavs(demo_run):
    out, report, _ = demo_run
    (spoken,) = report["evaluation"]["tts"]["examples"]
    # a barely trained model may end its speech at once: then no frames and no file, said so
    assert ("wav" in spoken) == (spoken["frames"] > 0)
    if spoken["frames"]:
        data, rate = sf.read(out / spoken["wav"])
        assert rate == 24000 and data.ndim == 1 and len(data) == round(spoken["seconds"] * 24000)
        assert len(data) == 480 * (4 * spoken["frames"] - 1)  # one segment: 4N - 1 mel frames of 480


def test_generate_uses_the_bundle_as_is(demo_run, tmp_path):
    out, report, _ = demo_run
    assert report["model"] == str(out / "model")
    manifest = out / "data" / "asr.jsonl"
    wav = (manifest.parent / json.loads(manifest.read_text().splitlines()[0])["audio"]).resolve()
    proc = run_cli(["generate", "--checkpoint", str(out / "model"), "--mode", "asr", "--audio", str(wav),
                    "--max-new-tokens", "8"], cli_env(1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli(["generate", "--checkpoint", str(out / "model"), "--mode", "tts", "--text", "open the door",
                    "--out", str(tmp_path / "s.wav"), "--max-new-tokens", "6"], cli_env(1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # no vocoder is trained by default (vocoder_steps=0): speech through Griffin-Lim, said, not hidden
    assert "vocoder" not in report and "Griffin-Lim" in proc.stderr
