"""``baichuan-audio plan --config configs/X.py --topology v5p:4x4x4 [--config.k=v ...]``."""
from __future__ import annotations

import argparse

HELP = ("Compile the real train step ahead of time for a TPU slice from this machine and report "
        "per-device memory (arguments, temporaries, outputs, total against the chip's HBM), step "
        "FLOPs and compile time. Needs libtpu (the `tpu` extra; `make plan` installs it in "
        ".venv-tpu) but no TPU. Exit status 0 when the step compiles.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config file (configs/*.py)")
    p.add_argument("--topology", required=True, help="TPU slice, e.g. v5p:4x4x4, v5p:2x2x2, v4:2x2x2")


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import load_config
    from baichuan_audio_jax.training.plan import plan

    config = load_config(args.config, args.config_overrides)
    try:
        result = plan(config, args.topology)
    except RuntimeError as e:
        raise CLIError(str(e)) from e
    print(result.trainable_report)
    for line in result.lines():
        print(line)
    return 0
