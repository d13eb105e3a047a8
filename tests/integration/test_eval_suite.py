"""``baichuan-audio eval`` end to end on a complete tiny bundle (the fixture set's reference weights
and a small sentencepiece tokenizer): the report contract, bad records counted by reason, batched
decoding equal to the per-utterance generator, scores equal to the libraries' own calls on the saved
hypotheses, and an interrupted evaluation continued without running finished records again."""
import json
import shutil

import jiwer
import numpy as np
import pytest
import sacrebleu
from generation_helpers import tiny_bundle

from baichuan_audio_jax.cli.main import main
from baichuan_audio_jax.evaluation.normalize import normalize

MAX_NEW = 6
BAD_LINES = {3: "audio_missing", 4: "empty_reference", 5: "missing_field", 6: "bad_json"}


@pytest.fixture(scope="module")
def run(parity_dir, speech_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    data.mkdir()
    for wav in ("zh_med_1889.wav", "zh_med_1497.wav"):
        shutil.copy(speech_dir / wav, data / wav)
    lines = [
        {"uttid": "a", "audio": "zh_med_1889.wav", "text": "我的鼻子只是隔幾天就出一次血，单孔。", "language": "zh",
         "translation": "my nose bleeds every few days", "answers": ["鼻子"]},
        {"uttid": "b", "audio": "zh_med_1497.wav", "text": "您好！就是一个之前吧", "language": "zh",
         "translation": "hello, it was before", "answers": ["你好"]},
        {"uttid": "c", "audio": "nope.wav", "text": "x", "translation": "x", "answers": ["x"]},
        {"uttid": "d", "audio": "zh_med_1889.wav", "text": "", "translation": "", "answers": [""]},
        {"uttid": "e", "text": "no audio", "translation": "no audio", "answers": ["no"]},
    ]
    manifest = data / "m.jsonl"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines) + "not json\n")
    (data / "cloze.jsonl").write_text(
        json.dumps({"context": "hello world", "endings": ["this is a test.", "fox jumps"], "label": 0}) + "\n"
        + json.dumps({"context_audio": "zh_med_1889.wav", "context": "你好吗",
                      "endings": ["我很好。", "lazy dog"], "label": 3}) + "\n")
    (data / "judge.py").write_text("import json, sys\nfor line in sys.stdin:\n"
                                   "    r = json.loads(line)\n    print(json.dumps({'score': len(r['answer']) % 2}))\n")
    tasks = [{"name": "asr", "type": "asr", "manifest": "data/m.jsonl", "max_new_tokens": MAX_NEW},
             {"name": "s2tt", "type": "s2tt", "manifest": "data/m.jsonl", "max_new_tokens": MAX_NEW,
              "target_language": "英文"},
             {"name": "cloze", "type": "cloze", "manifest": "data/cloze.jsonl"},
             {"name": "qa", "type": "spoken_qa", "manifest": "data/m.jsonl", "max_new_tokens": MAX_NEW,
              "judge_command": "python3 judge.py"},
             {"name": "tokenizer", "type": "tokenizer", "manifest": "data/m.jsonl"}]
    suite = root / "suite.json"
    suite.write_text(json.dumps({"tasks": tasks}))
    # the judge runs in the suite's directory
    shutil.copy(data / "judge.py", root / "judge.py")
    bundle = tiny_bundle(str(parity_dir))
    out = root / "out"
    status = main(["eval", "--checkpoint", bundle, "--suite", str(suite), "--out", str(out), "--batch-size", "4",
                   "--no-progress"])
    return dict(root=root, out=out, suite=suite, bundle=bundle, status=status, manifest=manifest)


def lines(run, name):
    return [json.loads(x) for x in (run["out"] / f"{name}.jsonl").read_text().splitlines()]


def test_report_contract(run):
    assert run["status"] == 0
    report = json.loads((run["out"] / "report.json").read_text())
    asr = report["tasks"]["asr"]
    assert {"wer", "cer", "count", "skipped"} <= set(asr) and asr["metric"] == "cer"
    assert asr["count"] == 2 and sum(asr["skipped"].values()) == 4
    assert set(report["tasks"]["s2tt"]) >= {"bleu", "chrf", "count"}
    assert "accuracy" in report["tasks"]["cloze"] and "mel_mae" in report["tasks"]["tokenizer"]
    assert (run["out"] / "report.md").read_text().startswith("| task |")
    assert list((run["out"] / "tensorboard").iterdir())
    for name in report["tasks"]:  # one line per manifest record
        assert sorted(e["line"] for e in lines(run, name)) == (list(range(1, 7)) if name != "cloze" else [1, 2])


def test_bad_records_are_counted_by_reason(run):
    report = json.loads((run["out"] / "report.json").read_text())
    by_line = {e["line"]: e.get("skipped") for e in lines(run, "asr")}
    assert {n: by_line[n] for n in BAD_LINES} == BAD_LINES and by_line[1] is None and by_line[2] is None
    assert report["tasks"]["asr"]["skipped"] == {r: 1 for r in BAD_LINES.values()}
    assert report["tasks"]["cloze"]["skipped"] == {"bad_field": 1}  # label 3 of 2 endings
    assert report["tasks"]["tokenizer"]["skipped"]["audio_too_long"] == 1  # 18.8 s > the 8 s the model holds


def test_scores_equal_the_libraries_on_the_saved_hypotheses(run):
    report = json.loads((run["out"] / "report.json").read_text())["tasks"]
    asr = [e for e in lines(run, "asr") if "hypothesis" in e]
    # the normaliser (checked by hand in tests/unit) maps 幾 -> 几 and drops punctuation and spaces
    assert normalize(asr[0]["reference"], "zh") == "我的鼻子只是隔几天就出一次血单孔"
    refs, hyps = [normalize(e["reference"], "zh") for e in asr], [normalize(e["hypothesis"], "zh") for e in asr]
    assert report["asr"]["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    s2tt = [e for e in lines(run, "s2tt") if "hypothesis" in e]
    assert report["s2tt"]["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu([e["hypothesis"] for e in s2tt], [[e["reference"] for e in s2tt]]).score)
    qa = [e for e in lines(run, "qa") if "hypothesis" in e]
    assert report["qa"]["judge_score"] == pytest.approx(np.mean([len(e["hypothesis"]) % 2 for e in qa]))


def test_batched_asr_equals_the_per_utterance_generator(run):
    from baichuan_audio_jax.inference.generator import Generator

    gen = Generator.from_bundle(run["bundle"])
    for e in (e for e in lines(run, "asr") if "hypothesis" in e):
        assert gen.asr(e["audio"], max_new_tokens=MAX_NEW, do_sample=False).text.strip() == e["hypothesis"]


def test_tokenizer_task_equals_eval_tokenizer(run):
    import ml_collections

    from baichuan_audio_jax.conversion.bundle import load_bundle
    from baichuan_audio_jax.evaluation.tokenizer import _setup
    from baichuan_audio_jax.evaluation.tokenizer_metrics import evaluate_manifest

    b = load_bundle(run["bundle"], components=["audio_tokenizer"], vocoder=False)
    ok = run["root"] / "ok.jsonl"
    ok.write_text(run["manifest"].read_text().splitlines()[0] + "\n")
    ok_audio = run["root"] / "zh_med_1889.wav"
    shutil.copy(run["manifest"].parent / "zh_med_1889.wav", ok_audio)
    _, shapes = _setup(str(run["manifest"]), float(b.config.audio_encoder.max_audio_seconds), b.config)
    config = ml_collections.ConfigDict({"model": b.model_config.to_dict(),
                                        "data": {"seq_len": shapes["features"][1][0]}})
    ref = evaluate_manifest(b.model.audio_tokenizer, config, str(ok), batch_size=2, progress=False)
    report = json.loads((run["out"] / "report.json").read_text())["tasks"]["tokenizer"]
    assert report["mel_mae"] == pytest.approx(ref["mel_mae"], rel=1e-5)
    assert [c["used"] for c in report["codebooks"]] == [c["used"] for c in ref["codebooks"]]


def test_an_interrupted_eval_continues_where_it_stopped(run):
    out = run["out"]
    before = json.loads((out / "report.json").read_text())["tasks"]
    path = out / "asr.jsonl"
    kept = path.read_text().splitlines()
    done = [x for x in kept if "hypothesis" in x]
    # drop one scored record and leave a line cut short, as a kill would
    path.write_text("\n".join(x for x in kept if x != done[-1]) + "\n" + done[-1][:20])
    (out / "s2tt.jsonl").unlink()
    suite = json.loads(run["suite"].read_text())
    suite["tasks"] = [t for t in suite["tasks"] if t["name"] in ("asr", "s2tt")]
    small = run["root"] / "resume.json"
    small.write_text(json.dumps(suite))
    assert main(["eval", "--checkpoint", run["bundle"], "--suite", str(small), "--out", str(out), "--batch-size",
                 "4", "--no-progress"]) == 0
    after = json.loads((out / "report.json").read_text())["tasks"]
    assert after["asr"]["records_per_second"] > 0 and after["asr"]["count"] == before["asr"]["count"]
    assert after["asr"]["cer"] == pytest.approx(before["asr"]["cer"])
    assert sorted(json.loads(x)["line"] for x in path.read_text().splitlines()) == list(range(1, 7))
    assert after["s2tt"]["bleu"] == pytest.approx(before["s2tt"]["bleu"])
