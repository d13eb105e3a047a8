"""``baichuan-audio plan --config configs/X.py --topology v5p:4x4x4[,v5e:16x16,...] [--config.k=v ...]``."""
from __future__ import annotations

import argparse

HELP = ("Compile the real train step ahead of time for one or more TPU slices from this machine and "
        "explain it: per-device memory (parameters, optimizer state, gradients, temporaries, the "
        "largest buffers and the code that made them, total against the chip's HBM), collective bytes "
        "per step by kind and component, and a roofline estimate of step time and MFU. Needs libtpu "
        "(the `tpu` extra; `make plan` installs it in .venv-tpu) but no TPU. Compiled programs are "
        "cached (BAICHUAN_XLA_CACHE=0 turns that off). Exit status 0 when every step compiles.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config file (configs/*.py)")
    p.add_argument("--topology", required=True,
                   help="TPU slice(s), comma separated, e.g. v5p:4x4x4 or v5p:4x4x4,v5e:16x16,v6e:8x8")
    p.add_argument("--no-buffers", action="store_true", help="skip the buffer-assignment dump (faster)")


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import load_config
    from baichuan_audio_jax.training import compile_cache
    from baichuan_audio_jax.training.plan import chip_for, plan_for_devices, table, tpu_devices  # lazy: CLI start-up

    config = load_config(args.config, args.config_overrides)
    compile_cache.enable()
    results = []
    for topology in [t.strip() for t in args.topology.split(",") if t.strip()]:
        try:
            chip = chip_for(topology)
            result = plan_for_devices(config, tpu_devices(topology), topology,
                                      None if chip is None else chip.hbm_bytes, chip=chip,
                                      buffers=not args.no_buffers)
        except RuntimeError as e:
            raise CLIError(f"{topology}: {e}") from e
        if not results:
            print(result.trainable_report)
        for line in result.lines():
            print(line)
        print()
        results.append(result)
    for line in table(results):
        print(line)
    return 0
