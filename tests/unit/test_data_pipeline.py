"""The Grain pipeline end to end on tiny data: batch layout, packing, determinism, resume, per-host
sharding, mixture weights, skip counting, and the JSONL/ArrayRecord/TFDS sources.

Records are recognisable in a packed batch: record i's audio frames all have code i in codebook 0,
so every segment can be traced back to its record and compared with the builder's example."""
import json
import os

import numpy as np
import pytest
from conftest import REPO as _REPO  # noqa: E402
from data_pipeline_helpers import (
    char_tokenizer_json,
    make_codes_for,
    random_codes,
    write_audio,
    write_manifest,
    write_shards,
)

from baichuan_audio_jax.batch import validate_batch
from baichuan_audio_jax.config import load_config
from data_pipelines.pipeline import build_train_iterator, make_builder

REPO = str(_REPO)
NUM_RECORDS = 40


def _record(i: int) -> dict:
    kind = i % 6
    if kind == 0:
        return {"uttid": f"r{i}", "audio": f"{i}.wav", "text": f"text {i}"}
    if kind == 1:
        return {"task": "tts", "text": f"say {i}", "audio": f"{i}.wav"}
    if kind == 2:
        return {"task": "intlv", "segments": [{"audio": f"{i}a.wav"}, {"text": f"then {i}"}, {"audio": f"{i}b.wav"}]}
    if kind == 3:
        return {"task": "itts", "segments": [{"text": "one", "audio": f"{i}a.wav"},
                                             {"text": "two", "audio": f"{i}b.wav"}]}
    if kind == 4:
        return {"task": "aqa", "prompt": "q:", "audio": f"{i}.wav", "response": f"answer {i}"}
    return {"task": "chat", "turns": [{"role": "user", "audio": f"{i}a.wav"},
                                      {"role": "assistant", "text": f"ok {i}", "audio": f"{i}b.wav"}]}


def _tagged_codes(model, record_index: int, n_refs: int, rng) -> list[np.ndarray]:
    out = []
    for _ in range(n_refs):
        c = random_codes(int(rng.integers(2, 9)), model, int(rng.integers(1 << 30)))
        c[:, 0] = record_index
        out.append(c)
    return out


def _items(model, start: int, count: int):
    from baichuan_audio_jax.records import audio_refs

    rng = np.random.default_rng(start)
    items = []
    for i in range(start, start + count):
        rec = _record(i)
        items.append((rec, _tagged_codes(model, i, len(audio_refs(rec)), rng)))
    return items


@pytest.fixture(scope="module")
def data(tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    tok = str(root / "tokenizer.json")
    char_tokenizer_json(tok, tiny_config)
    items = _items(tiny_config, 0, NUM_RECORDS)
    write_shards(str(root / "shards"), items, num_shards=3)
    write_shards(str(root / "other"), _items(tiny_config, NUM_RECORDS, 20), num_shards=1)
    return dict(root=root, tokenizer=tok, items=items)


def _config(data, **data_fields):
    cfg = load_config(os.path.join(REPO, "configs", "tiny.py"))
    cfg.data.tokenizer = data["tokenizer"]
    cfg.data.sources = [str(data["root"] / "shards")]
    cfg.data.seq_len = 96
    cfg.data.batch_size = 4
    cfg.data.read_threads = 1
    cfg.data.prefetch = 8
    for k, v in data_fields.items():
        cfg.data[k] = v
    return cfg


def _segments(batch):
    """(row, start, end, record index) of every packed segment."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        seg = batch["segment_ids"][r]
        for s in range(1, int(seg.max()) + 1):
            where = np.flatnonzero(seg == s)
            lo, hi = int(where[0]), int(where[-1]) + 1
            assert hi - lo == len(where), "segments are contiguous"
            ids = np.unique(batch["audio_codes"][r, lo:hi, 0][batch["input_ids"][r, lo:hi] == 482])
            assert len(ids) == 1
            out.append((r, lo, hi, int(ids[0])))
    return out


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_are_packed_examples(data, tiny_config):
    """Every row holds whole examples exactly as the builder makes them, positions restart at 0 in
    each segment, and padding carries no loss."""
    cfg = _config(data)
    builder = make_builder(cfg)
    it = build_train_iterator(cfg)
    pad = tiny_config.tokens.pad_token_id
    for batch in _batches(it, 4):
        validate_batch(batch, vocab_size=tiny_config.llm.vocab_size, codebook_sizes=tiny_config.codebook_sizes)
        assert batch["input_ids"].shape == (4, 96)
        for r, lo, hi, idx in _segments(batch):
            want = builder.build(*data["items"][idx])
            for k, v in want.items():
                np.testing.assert_array_equal(batch[k][r, lo:hi], v, err_msg=f"{k} of record {idx}")
            np.testing.assert_array_equal(batch["positions"][r, lo:hi], np.arange(hi - lo))
        padding = batch["segment_ids"] == 0
        assert (batch["input_ids"][padding] == pad).all()
        assert not batch["text_weights"][padding].any() and not batch["audio_weights"][padding].any()
        assert (batch["segment_ids"] > 0).mean() > 0.5  # packing fills rows


def test_same_seed_same_batches(data):
    a = _batches(build_train_iterator(_config(data, seed=7)), 3)
    b = _batches(build_train_iterator(_config(data, seed=7)), 3)
    _assert_same(a, b)
    c = _batches(build_train_iterator(_config(data, seed=8)), 3)
    assert any((x["input_ids"] != y["input_ids"]).any() for x, y in zip(a, c))


@pytest.mark.parametrize("packing", ["first_fit", "best_fit"])
def test_saved_state_resumes_exactly(data, packing):
    """A state saved mid-run (JSON round trip) gives the same remaining batches, across epochs."""
    cfg = _config(data, packing=packing, seed=3)
    it = build_train_iterator(cfg)
    _batches(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    expected = _batches(it, 12)  # 12 batches of ~3.5 records: past the end of the 40-record epoch
    resumed = build_train_iterator(cfg)
    resumed.set_state(state)
    _assert_same(_batches(resumed, 12), expected)


def test_state_of_another_host_layout_is_refused(data):
    state = build_train_iterator(_config(data)).get_state()
    other = build_train_iterator(_config(data), process_index=1, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        other.set_state(state)


def test_two_hosts_are_disjoint_and_cover_the_data(data):
    seen = {}
    for host in range(2):
        it = build_train_iterator(_config(data, num_epochs=1), process_index=host, process_count=2)
        records = []
        for batch in it:
            assert batch["input_ids"].shape == (2, 96)  # this host's half of the global batch
            records += [idx for *_, idx in _segments(batch)]
        assert len(records) == len(set(records))
        seen[host] = set(records)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(NUM_RECORDS))


def test_mixture_follows_weights(data):
    """Sources mixed 3:1 give exactly 3 records of the first per record of the second."""
    cfg = _config(data, packing="none", sources=[{"path": str(data["root"] / "shards"), "weight": 3.0},
                                                 {"path": str(data["root"] / "other"), "weight": 1.0}])
    it = build_train_iterator(cfg)
    records = [idx for batch in _batches(it, 10) for *_, idx in _segments(batch)]
    assert len(records) == 40  # one example per row without packing
    first = sum(idx < NUM_RECORDS for idx in records)
    assert first == 30 and len(records) - first == 10


def test_jsonl_on_the_fly_counts_skips(tiny_config, data, tmp_path):
    """A manifest with good and bad files: the bad records are skipped, counted by reason, and the
    good ones (also one at 48 kHz, resampled) reach the batches."""
    d = tmp_path
    for i in range(4):
        write_audio(str(d / f"good{i}.wav"), 0.5 + 0.25 * i, seed=i)
    write_audio(str(d / "hi_rate.wav"), 0.8, sample_rate=48000)
    write_audio(str(d / "short.wav"), 0.02)
    (d / "empty.wav").write_bytes(b"")
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage")
    good = [{"audio": f"good{i}.wav", "text": f"good {i}"} for i in range(4)]
    manifest = write_manifest(str(d / "m.jsonl"), [
        *good, {"task": "tts", "text": "rate", "audio": "hi_rate.wav"},
        {"audio": "missing.wav", "text": "x"}, {"audio": "empty.wav", "text": "x"},
        {"audio": "corrupt.wav", "text": "x"}, {"audio": "short.wav", "text": "x"},
        "{not json", {"task": "karaoke", "audio": "good0.wav"}, {"task": "asr", "audio": "good0.wav"},
    ])
    cfg = _config(data, sources=[manifest], num_epochs=1, shuffle=False)
    it = build_train_iterator(cfg, codes_for=make_codes_for(tiny_config))
    texts = []
    builder = make_builder(cfg)
    for batch in it:
        for r in range(batch["input_ids"].shape[0]):
            ids = batch["input_ids"][r][batch["segment_ids"][r] > 0]
            texts.append(builder.tok.decode(ids.tolist()))
    assert it.skipped() == {"missing": 1, "empty": 1, "corrupt": 1, "too_short": 1, "bad_json": 1,
                            "unknown_task": 1, "invalid_record": 1}
    joined = " ".join(texts)
    assert all(f"good {i}" in joined for i in range(4)) and "rate" in joined


def test_jsonl_without_audio_tokenizer_is_a_clear_error(data, tmp_path):
    manifest = write_manifest(str(tmp_path / "m.jsonl"), [{"audio": "a.wav", "text": "x"}])
    with pytest.raises(ValueError, match="m.jsonl.*audio tokenizer"):
        next(build_train_iterator(_config(data, sources=[manifest])))


def test_pure_text_manifest_needs_no_audio_tokenizer(data, tmp_path):
    manifest = write_manifest(str(tmp_path / "t.jsonl"), [{"task": "text", "text": f"line {i}"} for i in range(6)])
    batch = next(build_train_iterator(_config(data, sources=[manifest])))
    assert batch["text_weights"].sum() > 0 and batch["audio_weights"].sum() == 0


def test_tfds_source(tiny_config, data, tmp_path):
    """The example TFDS builder (array_record files, no TensorFlow) feeds the same examples."""
    from data_pipelines.tfds_tokenized_speech import TokenizedSpeech

    for i in range(6):
        write_audio(str(tmp_path / f"{i}.wav"), 0.4 + 0.1 * i, seed=i)
    records = [{"audio": f"{i}.wav", "text": f"tfds {i}"} for i in range(6)] + [{"audio": "gone.wav", "text": "x"}]
    manifest = write_manifest(str(tmp_path / "m.jsonl"), records)
    codes_for = make_codes_for(tiny_config)
    builder = TokenizedSpeech(data_dir=str(tmp_path / "tfds"), manifests={"train": manifest}, codes_for=codes_for)
    builder.download_and_prepare()
    assert builder.skipped.as_dict() == {"missing": 1}
    cfg = _config(data, num_epochs=1, packing="none",
                  sources=[{"kind": "tfds", "name": "tokenized_speech", "data_dir": str(tmp_path / "tfds")}])
    seq = make_builder(cfg)
    got = sorted(seq.tok.decode(b["input_ids"][r][b["segment_ids"][r] > 0].tolist())
                 for b in build_train_iterator(cfg) for r in range(4) if b["segment_ids"][r].any())
    want = sorted(seq.tok.decode(seq.build(rec, [codes_for(str(tmp_path / rec["audio"]))])["input_ids"].tolist())
                  for rec in records[:6])
    assert got == want
