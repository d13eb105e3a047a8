"""``baichuan-audio eval --checkpoint BUNDLE --suite SUITE [--out DIR]``."""
from __future__ import annotations

import argparse

HELP = ("Evaluate a model bundle on a suite of tasks (asr, s2tt, tts, cloze, spoken_qa, tokenizer; "
        "docs/evaluation.md). Records are decoded in batches by the generation engine; per-record results "
        "stream to DIR/<task>.jsonl (an interrupted run continues where it stopped), the scores go to "
        "DIR/report.json, DIR/report.md and TensorBoard scalars in DIR/tensorboard. Bad records are "
        "skipped and counted by reason.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model bundle to evaluate")
    p.add_argument("--suite", required=True, help="suite file (.json, .yaml or .py with get_config())")
    p.add_argument("--out", default=None, help="output directory (default: eval_<suite name>)")
    p.add_argument("--batch-size", type=int, default=8, help="records decoded together (default 8)")
    p.add_argument("--mesh", default="", help="decode on a device mesh, e.g. data=8 (default: one device)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    import json
    import os

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.evaluation.suite import load_suite

    suite = load_suite(args.suite)  # a SuiteError (ValueError) is printed as one line
    out = args.out or f"eval_{os.path.splitext(os.path.basename(args.suite))[0]}"
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.conversion.bundle import BundleError, is_bundle
    from baichuan_audio_jax.evaluation.models import EvalModel
    from baichuan_audio_jax.evaluation.runner import run_suite

    if not is_bundle(args.checkpoint):
        raise CLIError(f"{args.checkpoint} is not a model bundle (`baichuan-audio convert` writes one)")
    mesh = _mesh(args.mesh) if args.mesh else None
    try:
        model = EvalModel.from_bundle(args.checkpoint, batch_size=args.batch_size, mesh=mesh)
    except (BundleError, OSError) as e:
        raise CLIError(str(e)) from e
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.training.metrics import ScalarEvents

    tb = ScalarEvents(os.path.join(out, "tensorboard"))
    try:
        report = run_suite(suite, model, out, batch_size=args.batch_size, progress=not args.no_progress,
                           scalars=lambda tag, v: tb.add_scalar(tag, v, 0),
                           extra={"checkpoint": os.path.abspath(args.checkpoint)})
    finally:
        tb.close()
    print(json.dumps({name: {k: v for k, v in e.items() if not isinstance(v, (list, dict)) or k == "skipped"}
                      for name, e in report["tasks"].items()}, ensure_ascii=False))
    failed = [name for name, e in report["tasks"].items() if "error" in e]
    if failed:
        raise CLIError(f"task(s) {failed} could not run (see {os.path.join(out, 'report.json')})")
    return 0


def _mesh(spec: str):
    """``data=8`` / ``data=4,tensor=2`` -> a mesh over this host's devices (training's mesh builder)."""
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    import ml_collections

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.training.mesh import mesh_from_config

    sizes = dict(data=1, fsdp=1, tensor=1)
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in sizes or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh: expected axis=size items over data/fsdp/tensor, got {part!r}")
        sizes[key.strip()] = int(value)
    return mesh_from_config(ml_collections.ConfigDict(sizes))
