"""``baichuan-audio train --config configs/X.py --workdir DIR [--config.k=v ...]``."""
from __future__ import annotations

import argparse

HELP = ("Train (or resume training) on the devices of this host or of a multi-host job. Builds the "
        "mesh from config.mesh, prints the trainable parameters of config.stage, resumes from the "
        "latest checkpoint in WORKDIR/checkpoints if there is one, and writes WORKDIR/metrics.jsonl, "
        "TensorBoard events under WORKDIR/tensorboard and checkpoints. Multi-host jobs start "
        "jax.distributed from BAICHUAN_COORDINATOR / BAICHUAN_NUM_PROCESSES / BAICHUAN_PROCESS_ID "
        "(or the flags below), or automatically on TPU pods and SLURM.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config file (configs/*.py or a reference config.json)")
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, TensorBoard")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process runs)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log files only)")


def run(args: argparse.Namespace) -> int:
    from baichuan_audio_jax.config import load_config
    from baichuan_audio_jax.training import distributed
    from baichuan_audio_jax.training.trainer import train

    config = load_config(args.config, args.config_overrides)
    from baichuan_audio_jax.training import compile_cache  # lazy: CLI start-up speed

    compile_cache.enable()
    if args.coordinator:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    train(config, args.workdir, progress=not args.no_progress)
    return 0
