"""``baichuan-audio eval-tokenizer --workdir RUN --manifest M``: mel MAE and code use of a trained
audio tokenizer."""
from __future__ import annotations

import argparse
import json

HELP = ("Evaluate the latest (or --step) checkpoint of an audio_tokenizer training run on a manifest "
        "with the inference path (nearest-neighbour codes, all 8 stages): mel MAE (the paper's Table 1 "
        "metric, refined 62.5 Hz mel against its target), coarse-mel MAE, per-codebook codes used and "
        "perplexity, skipped records by reason. Prints JSON; --out also writes it to a file.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="audio_tokenizer training run directory")
    p.add_argument("--manifest", required=True, help="JSONL manifest of the evaluation audio")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.evaluation.tokenizer_metrics import evaluate_manifest
    from baichuan_audio_jax.training.export import trained_model

    try:
        model, config, step = trained_model(args.workdir, args.step)
        if str(config.task) != "audio_tokenizer":
            raise ValueError(f"{args.workdir} trained task {config.task!r}, not 'audio_tokenizer'")
        report = evaluate_manifest(model.tokenizer, config, args.manifest, batch_size=args.batch_size,
                                   progress=not args.no_progress)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise CLIError(str(e)) from e
    report = {"workdir": args.workdir, "step": step, **report}
    text = json.dumps(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0
