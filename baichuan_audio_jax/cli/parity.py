"""``baichuan-audio parity --fixtures DIR [--components a,b]``."""
from __future__ import annotations

import argparse
import os

HELP = ("Compare components with a reference fixture set. Build each selected component from the "
        "set's config, load its reference weights through the mapping tables, run it on the saved "
        "inputs and compare every output with the manifest's tolerance "
        "(|ours - ref| <= atol + rtol*|ref|; integers exact).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fixtures", required=True, help="fixture directory (manifest.json + files)")
    p.add_argument("--components", default="",
                   help="comma-separated component names (default: every component of the set)")


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.parity.fixtures import FixtureError
    from baichuan_audio_jax.parity.runner import run as run_parity

    if not os.path.isdir(args.fixtures):
        raise CLIError(f"fixture directory {args.fixtures} does not exist")
    names = [c.strip() for c in args.components.split(",") if c.strip()]
    try:
        _, failed = run_parity(args.fixtures, names or None)
    except FixtureError as e:
        raise CLIError(str(e)) from e
    return 0 if failed == 0 else 1
