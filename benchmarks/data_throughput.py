"""Packed training tokens per second per CPU core, read from pre-tokenized ArrayRecord shards.

Target: >= 50k tokens/s/core, so one host can feed four accelerators with headroom.

Writes synthetic tokenized records (the paper's task mix: ASR, AQA, S2TT, INTLV, TTS, ITTS, pure
audio; 2-20 s of audio at 12.5 tokens/s, text of matching length) to ArrayRecord shards, then runs
one epoch of them through

* the Grain pipeline (``build_train_iterator``: shuffle, mixture, skip counting, first-fit or
  best-fit packing, batching, checkpointable state), single-threaded in one process, and
* a same-run baseline: a plain Python loop over the shards that decodes each record, builds the
  same sequence and packs rows greedily (no shuffling, no state).

Tokens are non-padding positions of the emitted batches; "per core" divides by the process's CPU
time (``time.process_time``), so the figure does not depend on how busy the machine is.

    python benchmarks/data_throughput.py [--records 5000] [--seq-len 4096] [--rows 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baichuan_audio_jax.config import ModelConfig, load_config  # noqa: E402
from baichuan_audio_jax.records import audio_refs, decode_tokenized, encode_tokenized  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("speech model audio token frame codebook language pre training interleaved text voice answer question "
         "translate listen speak sound data batch").split()


def _text(rng, seconds: float) -> str:
    return " ".join(rng.choice(WORDS, max(1, int(seconds * 2.5))))


def _record(rng, i: int) -> dict:
    secs = lambda: float(rng.uniform(2, 20))  # noqa: E731
    kind = ("asr", "aqa", "s2tt", "intlv", "tts", "itts", "audio")[i % 7]
    if kind in ("asr", "tts"):
        s = secs()
        return {"task": kind, "audio": f"{i}.wav", "text": _text(rng, s)}
    if kind == "aqa":
        return {"task": "aqa", "audio": f"{i}.wav", "response": _text(rng, secs())}
    if kind == "s2tt":
        return {"task": "s2tt", "audio": f"{i}.wav", "translation": _text(rng, secs()), "target_language": "英文"}
    if kind == "audio":
        return {"task": "audio", "audio": f"{i}.wav"}
    n = int(rng.integers(2, 5))
    if kind == "itts":
        return {"task": "itts", "segments": [{"text": _text(rng, 4), "audio": f"{i}_{k}.wav"} for k in range(n)]}
    segs = []
    for k in range(2 * n):
        segs.append({"audio": f"{i}_{k}.wav"} if k % 2 == 0 else {"text": _text(rng, 4)})
    return {"task": "intlv", "segments": segs}


def write_data(root: str, model: ModelConfig, records: int, shards: int = 4) -> str:
    from array_record.python.array_record_module import ArrayRecordWriter

    rng = np.random.default_rng(0)
    out = os.path.join(root, "shards")
    os.makedirs(out)
    writers = [ArrayRecordWriter(os.path.join(out, f"part-{k:05d}.array_record"), "group_size:1")
               for k in range(shards)]
    sizes = np.asarray(model.codebook_sizes)
    for i in range(records):
        rec = _record(rng, i)
        codes = [rng.integers(0, sizes, size=(int(rng.uniform(2, 20) * 12.5), 8)) for _ in audio_refs(rec)]
        writers[i % shards].write(encode_tokenized(rec, codes, f"bench:{i}"))
    for w in writers:
        w.close()
    return out


def naive_epoch(shard_dir: str, builder, seq_len: int, rows: int, pad_id: int) -> int:
    """Baseline: read, build and greedily pack in a plain loop; returns the tokens emitted."""
    from array_record.python.array_record_module import ArrayRecordReader

    tokens = 0
    row: list[dict] = []
    used = 0
    batch: list[dict] = []

    def flush_row():
        nonlocal tokens, row, used
        fields = {k: np.concatenate([e[k] for e in row]) for k in row[0]}
        pad = seq_len - used
        fields["input_ids"] = np.pad(fields["input_ids"], (0, pad), constant_values=pad_id)
        for k in ("text_targets", "text_weights"):
            fields[k] = np.pad(fields[k], (0, pad))
        for k in ("audio_codes", "audio_targets", "audio_weights"):
            fields[k] = np.pad(fields[k], ((0, pad), (0, 0)))
        fields["segment_ids"] = np.pad(np.repeat(np.arange(1, len(row) + 1), [len(e["input_ids"]) for e in row]),
                                       (0, pad))
        fields["positions"] = np.pad(np.concatenate([np.arange(len(e["input_ids"])) for e in row]), (0, pad))
        batch.append(fields)
        tokens += used
        row, used = [], 0
        if len(batch) == rows:
            {k: np.stack([b[k] for b in batch]) for k in batch[0]}
            batch.clear()

    for name in sorted(os.listdir(shard_dir)):
        reader = ArrayRecordReader(os.path.join(shard_dir, name))
        for data in reader.read_all():
            record, codes, _ = decode_tokenized(data)
            example = builder.build(record, codes)
            n = len(example["input_ids"])
            if used + n > seq_len:
                flush_row()
            row.append(example)
            used += n
        reader.close()
    if row:
        flush_row()
    return tokens


def grain_epoch(config) -> int:
    from data_pipelines.pipeline import build_train_iterator

    it = build_train_iterator(config)
    tokens = 0
    for batch in it:
        tokens += int((batch["segment_ids"] > 0).sum())
    return tokens


def measure(fn, *args) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = fn(*args)
    return tokens, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rows", type=int, default=8, help="rows per batch (one host)")
    args = p.parse_args()

    from baichuan_audio_jax.text.tokenizer import train_sentencepiece
    from data_pipelines.pipeline import make_builder

    config = load_config(os.path.join(REPO, "configs", "tiny.py"))
    model = ModelConfig.from_config(config.model)
    with tempfile.TemporaryDirectory() as root:
        shard_dir = write_data(root, model, args.records)
        tok = os.path.join(root, "spm.model")
        train_sentencepiece([" ".join(WORDS)] * 20 + list(config.data.prompts.to_dict().values()), tok,
                            model.tokens, vocab_size=model.llm.vocab_size)
        config.data.update(dict(sources=[shard_dir], tokenizer=tok, seq_len=args.seq_len, batch_size=args.rows,
                                num_epochs=1, read_threads=1, prefetch=16))
        builder = make_builder(config)
        results = {"naive loop (baseline)": measure(naive_epoch, shard_dir, builder, args.seq_len, args.rows,
                                                    model.tokens.pad_token_id)}
        for method in ("first_fit", "best_fit"):
            config.data.packing = method
            results[f"grain, {method} packing"] = measure(grain_epoch, config)

    base_tokens, _, base_cpu = results["naive loop (baseline)"]
    base_rate = base_tokens / base_cpu
    print(f"{args.records} records, seq_len {args.seq_len}, {args.rows} rows per batch, one epoch, 1 process")
    for name, (tokens, wall, cpu) in results.items():
        rate = tokens / cpu
        print(f"  {name:26s} {tokens:>9,} tokens  {wall:6.2f} s wall  {cpu:6.2f} s CPU  "
              f"{rate / 1e3:7.1f}k tokens/s/core  x{rate / base_rate:.2f} vs baseline")
    tokens, _, cpu = results["grain, first_fit packing"]
    rate = tokens / cpu
    print(f"\nREADME: | data pipeline: packed tokens/s/core from ArrayRecord shards (first-fit, seq_len "
          f"{args.seq_len}) | {rate / 1e3:.0f}k (target >= 50k) | x{rate / base_rate:.2f} vs a plain Python loop "
          f"| `python benchmarks/data_throughput.py --records {args.records} --seq-len {args.seq_len} "
          f"--rows {args.rows}` |")


if __name__ == "__main__":
    main()
