"""The evaluation normaliser and scores on hand-checked strings, and suite files checked with
errors that name the task and key."""
import json

import pytest
import sacrebleu

from baichuan_audio_jax.evaluation import metrics
from baichuan_audio_jax.evaluation.normalize import Normalizer, is_character_language, normalize, number_words
from baichuan_audio_jax.evaluation.suite import SuiteError, load_suite


def test_wer_and_cer_by_hand():
    # "open the red door" vs "open a red door door": 1 substitution + 1 insertion over 4 words
    assert metrics.wer(["open the red door"], ["open a red door door"]) == pytest.approx(2 / 4)
    # corpus level: (1 + 0) edits over (4 + 2) words, not the mean of per-utterance rates
    assert metrics.wer(["open the red door", "dial five"], ["open the red box", "dial five"]) == pytest.approx(1 / 6)
    # 我的鼻子 vs 我鼻子了: one deletion (的) + one insertion (了) over 4 characters
    assert metrics.cer(["我的鼻子"], ["我鼻子了"]) == pytest.approx(2 / 4)
    assert metrics.wer(["lift the cup"], [""]) == pytest.approx(1.0)  # empty hypothesis: every word deleted


def test_normaliser_steps():
    assert normalize("Open, the RED door!") == "open the red door"
    assert normalize("Dial 15 and 2,024.") == "dial fifteen and two thousand twenty four"
    assert normalize("don't stop") == "don't stop"
    # traditional -> simplified (OpenCC), full-width -> ASCII, punctuation and spaces gone for CER languages
    assert normalize("我的鼻子隔幾天就出一次血， 單孔。", "zh") == "我的鼻子隔几天就出一次血单孔"
    assert normalize("ＡＢＣ１２") == "abc twelve"
    assert Normalizer.from_options({"numbers": False})("Dial 15") == "dial 15"
    assert Normalizer.from_options(False)("Hello, World") == "Hello, World"
    with pytest.raises(ValueError, match="unknown step"):
        Normalizer.from_options({"casefold": True})
    assert number_words(0) == "zero" and number_words(115) == "one hundred fifteen"
    assert number_words(3_000_007) == "three million seven"
    assert is_character_language("zh-CN") and is_character_language("ja") and not is_character_language("en")


def test_bleu_and_chrf_are_sacrebleus_own():
    refs = ["the cat is on the mat", "there is a red door here", "dial three seven one"]
    hyps = ["the cat sat on the mat", "there is a red door", "dial three seven"]
    assert metrics.bleu(refs, hyps, "en") == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert metrics.chrf(refs, hyps) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    zr, zh = ["我的鼻子只是隔几天就出一次血"], ["我的鼻子隔几天就出血"]
    assert metrics.bleu(zr, zh, "zh") == pytest.approx(sacrebleu.corpus_bleu(zh, [zr], tokenize="zh").score)
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)


def _suite(tmp_path, tasks, name="suite.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"tasks": tasks}))
    return path


def test_suite_paths_are_relative_to_the_suite(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n')
    suite = load_suite(_suite(tmp_path, [{"name": "N", "type": "asr", "manifest": "data/m.jsonl", "language": "en"}]))
    (task,) = suite.tasks
    assert task.manifest == str(tmp_path / "data" / "m.jsonl") and task.options == {"language": "en"}
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_text("tasks:\n  - {name: c, type: cloze, manifest: data/m.jsonl, mode: s2t}\n")
    assert load_suite(yaml_path).tasks[0].option("mode") == "s2t"


@pytest.mark.parametrize("task, message", [
    ({"name": "N", "type": "asrr", "manifest": "m.jsonl"}, "unknown type 'asrr'"),
    ({"name": "N", "type": "asr", "manifest": "m.jsonl", "langauge": "en"}, r"unknown option\(s\) \['langauge'\]"),
    ({"name": "N", "type": "asr", "manifest": "missing.jsonl"}, "missing.jsonl does not exist"),
    ({"name": "a/b", "type": "asr", "manifest": "m.jsonl"}, "a name is letters"),
    ({"type": "asr", "manifest": "m.jsonl"}, "'name' must be a non-empty string"),
])
def test_bad_suites_name_the_task_and_key(tmp_path, task, message):
    (tmp_path / "m.jsonl").write_text("{}\n")
    with pytest.raises(SuiteError, match=message):
        load_suite(_suite(tmp_path, [task]))


def test_bundled_demo_suites_load():
    from conftest import REPO

    suites = sorted((REPO / "data_pipelines" / "demo_corpus" / "suites").glob("*.json"))
    assert {p.name for p in suites} >= {"asr.json", "tts.json", "cloze.json", "demo.json"}
    for path in suites:
        for task in load_suite(path).tasks:
            assert task.manifest.endswith(".jsonl")
    cloze = [json.loads(x) for x in (REPO / "data_pipelines" / "demo_corpus" / "suites" / "cloze.jsonl").open()]
    assert len(cloze) == 48 and {r["label"] for r in cloze} == {0, 1}
    assert all((REPO / "data_pipelines" / "demo_corpus" / "suites" / r["context_audio"]).is_file() for r in cloze)
