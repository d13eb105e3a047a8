"""``baichuan-audio tokenize`` / ``detokenize`` end to end, on the real recordings and on bad files,
with the fixture set's tiny tokenizer weights given as a reference-layout safetensors file."""
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

from baichuan_audio_jax.cli.main import main
from baichuan_audio_jax.records import decode_tokenized

TINY = str(REPO / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def weights(fixture_set, tmp_path_factory):
    from safetensors.numpy import save_file

    tensors = {}
    for part in ("audio_encoder", "vq_bridge", "audio_decoder"):
        tensors.update(fixture_set.component(part).weights)
    path = tmp_path_factory.mktemp("weights") / "tokenizer.safetensors"
    save_file(tensors, str(path))
    return str(path)


@pytest.fixture(scope="module")
def corpus(speech_dir, tmp_path_factory):
    """A manifest mixing good records (relative and absolute paths, two audios in one record, a
    text-only record) with every kind of bad input."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "audio").mkdir()
    good = speech_dir / "zh_med_1889.wav"
    (d / "audio" / "short.wav").write_bytes(good.read_bytes())
    data = good.read_bytes()
    (d / "audio" / "truncated.wav").write_bytes(data[: len(data) // 3])
    (d / "audio" / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (d / "audio" / "empty.wav").write_bytes(b"")
    sf.write(d / "audio" / "zero_length.wav", np.zeros(0, np.float32), 16000)
    lines = [
        {"uttid": "a", "audio": "audio/short.wav", "text": "x"},
        {"uttid": "b", "audio": "audio/missing.wav", "text": "y"},
        {"uttid": "c", "task": "chat", "turns": [{"role": "user", "audio": str(speech_dir / "zh_med_1497.wav")},
                                                 {"role": "assistant", "text": "hi", "audio": "audio/short.wav"}]},
        {"uttid": "d", "task": "audio", "audio": "audio/empty.wav"},
        "this line is not JSON",
        {"uttid": "e", "task": "audio", "audio": "audio/truncated.wav"},
        {"uttid": "f", "task": "audio", "audio": "audio/garbage.wav"},
        {"uttid": "g", "task": "audio", "audio": "audio/zero_length.wav"},
        {"uttid": "h", "task": "text", "text": "text only"},
        # Rejected by the validator `data check` shares, before any audio is read.
        {"uttid": "i", "audio": 123, "text": "z"},
        {"uttid": "j", "task": "foo", "text": "t"},
        {"uttid": "k", "audio": "audio/short.wav"},
    ]
    with open(d / "train.jsonl", "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n")
    return d


def test_files_mode_then_detokenize(speech_dir, weights, tmp_path, capsys):
    files = [str(speech_dir / "zh_med_1889.wav"), str(speech_dir / "zh_med_1497.wav")]
    out = tmp_path / "codes"
    rc = main(["tokenize", "--config", TINY, "--weights", weights, *files, "--out", str(out), "--batch-size", "4"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == 2 and summary["audio_seconds"] == pytest.approx((72000 + 300480) / 16000)
    with np.load(out / "zh_med_1497.npz") as d:
        assert d["codes"].shape == (235, 8) and d["codes"].dtype == np.int32
        assert d["chunk_tokens"].tolist() == [100, 100, 35] and str(d["source"]) == files[1]
    with np.load(out / "zh_med_1889.npz") as d:
        assert d["codes"].shape == (56, 8) and d["chunk_tokens"].tolist() == [56]
    assert (out / "tokenize_metrics.jsonl").read_text().count("\n") >= 1

    # A code file holding an EOS code (not decodable) after a good one: the good one is written,
    # then the run stops naming the bad file.
    bad = tmp_path / "bad.npz"
    with np.load(out / "zh_med_1889.npz") as d:
        codes = d["codes"].copy()
    codes[3, 0] = 64  # codebook 0 of the tiny model has 64 entries: 64 is its EOS class
    np.savez(bad, codes=codes)
    mel = tmp_path / "mel"
    rc = main(["detokenize", "--config", TINY, "--weights", weights, str(out / "zh_med_1497.npz"), str(bad),
               "--out", str(mel), "--batch-size", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "codebook 0" in err, err
    with np.load(mel / "zh_med_1497.mel.npz") as d:
        assert d["segment_tokens"].tolist() == [100, 100, 35]
        assert d["segment_hidden_frames"].tolist() == [399, 399, 139]
        assert d["segment_mel_frames"].tolist() == [498, 498, 173]
        assert d["hidden_before_dconv2"].shape == (399 + 399 + 139, 64)
        assert d["refined_mel"].shape == d["coarse_mel"].shape == (498 + 498 + 173, 80)


def test_manifest_mode_skips_bad_audio_by_reason(corpus, speech_dir, weights, tmp_path, capsys):
    out = tmp_path / "shards"
    rc = main(["tokenize", "--config", TINY, "--weights", weights, "--manifest", str(corpus / "train.jsonl"),
               "--out", str(out), "--batch-size", "4", "--files-per-step", "2", "--records-per-shard", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    printed = json.loads(captured.out)
    summary = json.loads((out / "train.summary.json").read_text())
    want = {"bad_json": 1, "corrupt": 2, "empty": 2, "invalid_record": 1, "missing": 1, "unknown_task": 2}
    assert printed["skipped"] == summary["skipped"] == want
    assert summary["records_written"] == 3 and summary["records_skipped"] == 9
    assert summary["records_in_manifest"] == 12
    reasons = {(i["source"], i["reason"]) for i in summary["skipped_items"]}
    assert ("train.jsonl:2", "missing") in reasons and ("train.jsonl:5", "bad_json") in reasons
    assert ("train.jsonl:10", "invalid_record") in reasons and ("train.jsonl:11", "unknown_task") in reasons
    # `data check` rejects the same records under the same reasons.
    assert main(["data", "check", "--manifest", str(corpus / "train.jsonl"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == {"total": 12, "ok": 3, "skipped": want}
    for item in summary["skipped_items"]:
        assert f"skipped {item['source']}: {item['reason']}" in captured.err  # reported as it happens
    shards = sorted(out.glob("train-*.array_record"))
    assert [p.name for p in shards] == ["train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
    assert not list(out.glob("*.partial"))

    from baichuan_audio_jax.inference.tokenize_corpus import read_shards

    records = [decode_tokenized(r) for r in read_shards(map(str, shards))]
    assert [r["uttid"] for r, _, _ in records] == ["a", "c", "h"]
    assert [s for _, _, s in records] == ["train.jsonl:1", "train.jsonl:3", "train.jsonl:9"]
    (_, a_codes, _), (_, c_codes, _), (_, h_codes, _) = records
    assert [c.shape for c in a_codes] == [(56, 8)]
    assert [c.shape for c in c_codes] == [(235, 8), (56, 8)] and h_codes == []
    np.testing.assert_array_equal(a_codes[0], c_codes[1])  # same audio, same codes in any batch


def test_files_mode_stops_naming_the_bad_file(corpus, weights, tmp_path, capsys):
    bad = str(corpus / "audio" / "truncated.wav")
    rc = main(["tokenize", "--config", TINY, "--weights", weights, bad, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and bad in err and "corrupt" in err


def test_usage_errors(weights, tmp_path, capsys):
    assert main(["tokenize", "--config", TINY, "--out", str(tmp_path)]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["tokenize", "--config", TINY, "--weights", str(tmp_path / "nope"), "x.wav",
                 "--out", str(tmp_path)]) == 2
    assert "nope: no such file or directory" in capsys.readouterr().err


def test_random_weights_warn(speech_dir, tmp_path, capsys):
    rc = main(["tokenize", "--config", TINY, str(speech_dir / "zh_med_1889.wav"), "--out", str(tmp_path),
               "--batch-size", "1"])
    assert rc == 0
    assert "randomly initialised" in capsys.readouterr().err
    with np.load(tmp_path / "zh_med_1889.npz") as d:
        assert d["codes"].shape == (56, 8)


def test_reference_weights_from_sharded_directory(tmp_path):
    """A HF-style directory (index + shards) and a plain directory of files read the same; only
    the requested prefixes are read; bf16 is up-cast exactly (what ``--weights`` reads)."""
    import jax.numpy as jnp
    from safetensors.flax import save_file

    from baichuan_audio_jax.conversion.torch_io import CheckpointError, read_tensors

    rng = np.random.default_rng(0)
    a = {"audio_tokenizer.audio_model.x": rng.standard_normal((3, 4)).astype(np.float32),
         "model.layers.0.w": rng.standard_normal(5).astype(np.float32)}
    b = {"audio_tokenizer.audio_decoder.y": jnp.asarray(rng.standard_normal(6), jnp.bfloat16)}
    save_file({k: jnp.asarray(v) for k, v in a.items()}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {**{k: "model-00001-of-00002.safetensors" for k in a},
                            **{k: "model-00002-of-00002.safetensors" for k in b}}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    got = read_tensors(tmp_path, prefixes=("audio_tokenizer.",))
    assert set(got) == {"audio_tokenizer.audio_model.x", "audio_tokenizer.audio_decoder.y"}
    np.testing.assert_array_equal(got["audio_tokenizer.audio_model.x"], a["audio_tokenizer.audio_model.x"])
    assert got["audio_tokenizer.audio_decoder.y"].dtype == np.float32
    np.testing.assert_array_equal(got["audio_tokenizer.audio_decoder.y"],
                                  np.asarray(b["audio_tokenizer.audio_decoder.y"], np.float32))
    (tmp_path / "model.safetensors.index.json").unlink()
    assert set(read_tensors(tmp_path)) == set(a) | set(b)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        read_tensors(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="other \\*.safetensors files"):
        read_tensors(tmp_path / "empty")
