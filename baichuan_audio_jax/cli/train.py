"""``baichuan-audio train --config configs/X.py --workdir DIR [--config.k=v ...]``."""
from __future__ import annotations

import argparse
import sys

HELP = ("Train (or resume training) on the devices of this host or of a multi-host job. Builds the "
        "mesh from config.mesh, prints the trainable parameters of config.stage, resumes from the "
        "latest checkpoint in WORKDIR/checkpoints if there is one, and writes WORKDIR/metrics.jsonl, "
        "TensorBoard events under WORKDIR/tensorboard and checkpoints; with eval_every > 0, runs the "
        "eval.suite on the live parameters every eval_every steps (WORKDIR/eval). Multi-host jobs start "
        "jax.distributed from BAICHUAN_COORDINATOR / BAICHUAN_NUM_PROCESSES / BAICHUAN_PROCESS_ID "
        "(or the flags below), or automatically on TPU pods and SLURM. SIGTERM/SIGINT (preemption) "
        "finish the current step, save a checkpoint at it and exit with status 143: run the same "
        "command again to resume. Exit status 3: the training diverged (train.nonfinite=stop).")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config file (configs/*.py or a reference config.json)")
    p.add_argument("--workdir", help="run directory: checkpoints, metrics, TensorBoard (required to train)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, every field with its value and doc, and exit")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process runs)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log files only)")


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    import data_pipelines  # noqa: F401  (registers the grain data sources)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import format_config, load_config
    from baichuan_audio_jax.evaluation.periodic import periodic_eval
    from baichuan_audio_jax.training import compile_cache, distributed
    from baichuan_audio_jax.training.preemption import Preempted
    from baichuan_audio_jax.training.trainer import train

    config = load_config(args.config, args.config_overrides)
    if args.print_config:
        print(format_config(config))
        return 0
    if not args.workdir:
        raise CLIError("--workdir is required to train")
    compile_cache.enable()
    if args.coordinator:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    hook = periodic_eval(config, args.workdir)  # eval_every > 0: the eval suite on the live parameters
    try:
        train(config, args.workdir, progress=not args.no_progress, hooks=[hook] if hook else [])
    except Preempted as e:
        print(f"baichuan-audio train: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0
