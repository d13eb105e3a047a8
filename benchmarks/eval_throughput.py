"""Batched ``asr`` evaluation throughput against a per-utterance loop over the same model, in one run.

* ``per-utterance``: ``Generator.asr`` once per held-out utterance (one row decoded at a time, as
  the demo's evaluation did);
* ``batched``: the ``asr`` task of ``baichuan-audio eval`` (audio encoded in batches, ``--batch``
  rows decoded together by the same engine, records sorted by length).

Both decode greedily with the same new-token limit; the per-utterance side uses a generator whose
audio tokenizer encodes one row at a time (as ``generate`` does), the batched side one of
``--batch`` rows. Without ``--checkpoint`` the model is the demo
size (``configs/demo.py``: the tiny config with a 4-layer LLM) with random weights and a
sentencepiece tokenizer of the demo transcripts: such a model rarely writes end-of-text, so every
utterance decodes ``--max-new-tokens`` tokens on both sides (the same work). Compilation is
excluded (each side runs over every utterance once before the timed passes); the sides alternate
for ``--repeats`` passes and the median is reported. Also timed apart: decoding alone (the same
prompts, codes already computed) one row at a time against ``--batch`` rows, which shows how much
of the whole is the audio encoder (compute-bound on a CPU: batching it gains little). Prints
utterances/s of each side and their ratios.

    python benchmarks/eval_throughput.py [--checkpoint BUNDLE] [--utterances 48] [--batch 48]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baichuan_audio_jax.config import load_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_demo_bundle(root: str) -> str:
    from flax import nnx

    from baichuan_audio_jax.config import ModelConfig
    from baichuan_audio_jax.conversion.bundle import save_bundle
    from baichuan_audio_jax.demo.corpus import transcripts
    from baichuan_audio_jax.models.baichuan_audio import BaichuanAudio
    from baichuan_audio_jax.models.pure import init_model
    from baichuan_audio_jax.text.tokenizer import train_sentencepiece
    from data_pipelines.demo_corpus import TRAIN_MANIFEST

    model_cfg = load_config(os.path.join(REPO, "configs", "demo.py"), run=False).model
    cfg = ModelConfig.from_config(model_cfg)
    texts = [t for _, t in transcripts(TRAIN_MANIFEST)] + ["将语音转录为文本:"]
    sp = train_sentencepiece(texts, os.path.join(root, "sp.model"), cfg.tokens, vocab_size=cfg.llm.vocab_size)
    model = init_model(lambda: BaichuanAudio(cfg, rngs=nnx.Rngs(0), components=["llm", "audio_tokenizer"]))
    return save_bundle(os.path.join(root, "bundle"), model_cfg, model, tokenizer=sp.path, source="benchmark")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="", help="bundle (default: the demo size with random weights)")
    p.add_argument("--utterances", type=int, default=48)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from baichuan_audio_jax.evaluation.models import EvalModel
    from baichuan_audio_jax.evaluation.runner import Context, run_task
    from baichuan_audio_jax.evaluation.suite import TaskSpec
    from baichuan_audio_jax.inference.generator import Generator
    from data_pipelines.demo_corpus import HELDOUT_MANIFEST

    tmp = tempfile.mkdtemp(prefix="eval-bench-")
    bundle = args.checkpoint or random_demo_bundle(tmp)
    model = EvalModel.from_bundle(bundle, batch_size=args.batch)
    single_gen = Generator.from_bundle(bundle)  # audio encoded one row at a time
    manifest = os.path.join(tmp, "heldout.jsonl")
    with open(HELDOUT_MANIFEST) as f:
        lines = [x for x in f if x.strip()][:args.utterances]
    with open(manifest, "w") as f:  # audio paths made absolute: the copy lives elsewhere
        for x in lines:
            rec = json.loads(x)
            rec["audio"] = os.path.join(os.path.dirname(HELDOUT_MANIFEST), rec["audio"])
            f.write(json.dumps(rec) + "\n")
    paths = [json.loads(x)["audio"] for x in open(manifest)]
    spec = TaskSpec("asr", "asr", manifest, {"language": "en", "max_new_tokens": args.max_new_tokens})

    def per_utterance():
        return [single_gen.asr(a, max_new_tokens=args.max_new_tokens, do_sample=False).text.strip() for a in paths]

    # warm-up (compilation of every shape either side meets)
    per_utterance()
    run_task(Context(model, os.path.join(tmp, "warm"), batch_size=args.batch, progress=False), spec)

    def batched_pass(i):
        t0 = time.perf_counter()
        rep = run_task(Context(model, os.path.join(tmp, f"batched{i}"), batch_size=args.batch, progress=False), spec)
        return time.perf_counter() - t0, rep

    codes = model.encode([model.load_audio(a) for a in paths])
    prompts = [model.gen.prompts.asr(c) for c in codes]
    one_row = EvalModel(model.gen, batch_size=1)
    one_row.generate_text(prompts, "asr", max_new_tokens=args.max_new_tokens)  # warm-up

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    t_single, t_batched, d_single, d_batched = [], [], [], []
    for i in range(args.repeats):
        t, single = timed(per_utterance)
        t_single.append(t)
        t, rep = batched_pass(i)
        t_batched.append(t)
        d_single.append(timed(lambda: one_row.generate_text(prompts, "asr", max_new_tokens=args.max_new_tokens))[0])
        d_batched.append(timed(lambda: model.generate_text(prompts, "asr", max_new_tokens=args.max_new_tokens))[0])
    with open(os.path.join(tmp, "batched0", "asr.jsonl")) as f:
        batched = {e["audio"]: e["hypothesis"] for e in map(json.loads, f)}
    same = sum(batched[a] == h for a, h in zip(paths, single))
    n = len(paths)
    med = statistics.median
    print(f"model: {bundle if args.checkpoint else 'demo size, random weights'}; {n} utterances, "
          f"{args.max_new_tokens} new tokens max, batch {args.batch}, WER {rep['wer']:.3f}, "
          f"median of {args.repeats}")
    print(f"asr eval, per-utterance: {n / med(t_single):.2f} utt/s ({med(t_single):.1f} s)")
    print(f"asr eval, batched:       {n / med(t_batched):.2f} utt/s ({med(t_batched):.1f} s)")
    print(f"ratio batched / per-utterance: {med(t_single) / med(t_batched):.1f}x; identical hypotheses: {same}/{n}")
    print(f"decoding only (codes given): 1 row {n / med(d_single):.2f} utt/s, {args.batch} rows "
          f"{n / med(d_batched):.2f} utt/s, ratio {med(d_single) / med(d_batched):.1f}x")


if __name__ == "__main__":
    main()
