"""``baichuan-audio data {check,preview,train-tokenizer}``: inspect and prepare training data."""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

HELP = ("Inspect and prepare training data. `check --manifest FILE` validates every record and decodes "
        "every audio file, printing {\"total\", \"ok\", \"skipped\": {reason: n}} as JSON; `preview --config "
        "CFG --n K` prints K built sequences with their loss masks; `train-tokenizer` trains a "
        "sentencepiece model with the config's special tokens from manifest texts.")
ACCEPTS_CONFIG_OVERRIDES = True

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="validate a manifest: JSON summary of usable and skipped records")
    c.add_argument("--manifest", required=True, help="JSONL manifest")
    c.add_argument("--config", default=None, help="config for audio front-end settings (default: real model)")
    c.add_argument("--max-audio-seconds", type=float, default=None,
                   help="longer audio is skipped as too_long (default: the config's data.max_audio_seconds)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("preview", help="print built sequences with their loss masks")
    v.add_argument("--config", default=_DEFAULT_CONFIG, help="config file (data.sources, data.tokenizer, ...)")
    v.add_argument("--n", type=int, default=3, help="number of sequences")

    t = sub.add_parser("train-tokenizer", help="train a sentencepiece model for a from-scratch model")
    t.add_argument("--config", default=_DEFAULT_CONFIG, help="config giving the special ids and vocabulary size")
    t.add_argument("--manifest", action="append", required=True, help="manifest(s) whose texts form the corpus")
    t.add_argument("--out", required=True, help="output .model file")


def run(args: argparse.Namespace) -> int:
    return {"check": _check, "preview": _preview, "train-tokenizer": _train_tokenizer}[args.action](args)


def _config(args):
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.config import load_config

    return load_config(args.config, getattr(args, "config_overrides", []))


def _check(args) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import ModelConfig, default_data_config, load_config
    from data_pipelines.check import check_manifest

    if args.config:
        cfg = load_config(args.config, args.config_overrides)
        model, data = ModelConfig.from_config(cfg.model), cfg.data
    else:
        model, data = ModelConfig(), default_data_config()
    max_seconds = args.max_audio_seconds if args.max_audio_seconds is not None else float(data.max_audio_seconds)
    try:
        report = check_manifest(args.manifest, encoder=model.audio_encoder, bridge=model.vq_bridge,
                                max_audio_seconds=max_seconds, progress=not args.no_progress)
    except OSError as e:
        raise CLIError(f"cannot read manifest {args.manifest}: {e.strerror or e}") from e
    print(json.dumps(report.summary(), ensure_ascii=False))
    for reason, example in sorted(report.examples.items()):
        print(f"  {reason}: e.g. {example}", file=sys.stderr)
    if report.resampled:
        print(f"  {report.resampled} audio file(s) at another sample rate will be resampled to "
              f"{model.audio_encoder.sampling_rate} Hz", file=sys.stderr)
    return 0


def _preview(args) -> int:

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.config import ModelConfig
    from data_pipelines.audio_codes import frame_count_codes
    from data_pipelines.pipeline import codes_for_from_config, example_dataset, make_builder
    from data_pipelines.preview import LEGEND, example_summary, render_example
    from data_pipelines.skips import Skip

    cfg = _config(args)
    model = ModelConfig.from_config(cfg.model)
    builder = make_builder(cfg)
    codes_for = codes_for_from_config(cfg)
    if codes_for is None:
        codes_for = frame_count_codes(model.audio_encoder, model.vq_bridge,
                                      max_seconds=float(cfg.data.max_audio_seconds))
        print("(no data.audio_tokenizer: JSONL audio is shown by its frame count only)")
    ds = example_dataset(cfg, codes_for=codes_for, builder=builder)
    print(LEGEND)
    shown, skipped = 0, collections.Counter()
    limit = min(len(ds), max(args.n, 0) + 10_000)
    for index in range(limit):
        if shown >= args.n:
            break
        ex = ds[index]
        if isinstance(ex, Skip):
            skipped[ex.reason] += 1
            print(f"-- skipped {ex.origin} ({ex.reason}): {ex.detail}")
            continue
        shown += 1
        print(f"\n-- {shown}/{args.n} · {ex['task']} · {ex['origin']} · {example_summary(ex)}")
        print(render_example(ex, builder.tok, model.tokens))
    print(f"\nshown {shown}; skipped {dict(skipped) or 0}")
    return 0


def _train_tokenizer(args) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import ModelConfig
    from baichuan_audio_jax.records import read_manifest
    from baichuan_audio_jax.text.tokenizer import TokenizerError, train_sentencepiece
    from data_pipelines.manifest import record_texts

    cfg = _config(args)
    model = ModelConfig.from_config(cfg.model)
    texts = [t for t in cfg.data.prompts.to_dict().values() if t]
    for manifest in args.manifest:
        try:
            for _, record in read_manifest(manifest):
                if isinstance(record, dict):
                    texts.extend(record_texts(record))
        except OSError as e:
            raise CLIError(f"cannot read manifest {manifest}: {e.strerror or e}") from e
    try:
        tok = train_sentencepiece(texts, args.out, model.tokens, vocab_size=model.llm.vocab_size)
    except (TokenizerError, RuntimeError) as e:
        raise CLIError(str(e)) from e
    print(f"wrote {args.out}: {tok.vocab_size} ids ({len(texts)} texts), special tokens at the config's ids")
    return 0
