"""``baichuan-audio <subcommand>``: dispatch to the subcommand modules.

Every module ``baichuan_audio_jax/cli/<name>.py`` (other than this one) is the subcommand
``<name>`` and defines ``HELP`` (a paragraph; its first sentence is the one-line summary),
``add_arguments(parser)`` and ``run(args) -> int``. ``--help`` imports every subcommand module, so
they import the library inside ``run`` (marked ``# lazy: CLI start-up``) to keep it fast. A
module may set ``ACCEPTS_CONFIG_OVERRIDES = True`` to receive ``--config.a.b=value`` items as
``args.config_overrides``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

import baichuan_audio_jax.cli as cli_package
from baichuan_audio_jax.config import split_config_overrides


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def subcommands() -> dict[str, str]:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    return {m.name.replace("_", "-"): m.name for m in pkgutil.iter_modules(cli_package.__path__) if m.name != "main"}
def _summary(module) -> str:
    return module.HELP.split(". ")[0].rstrip(".")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = subcommands()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        parser = argparse.ArgumentParser(prog="baichuan-audio", description="Baichuan-Audio in JAX/Flax.")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, mod in sorted(commands.items()):
            sub.add_parser(name, help=_summary(importlib.import_module(f"baichuan_audio_jax.cli.{mod}")))
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"baichuan-audio: unknown command {argv[0]!r}; choose from {', '.join(sorted(commands))}",
                  file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"baichuan_audio_jax.cli.{commands[name]}")
    parser = argparse.ArgumentParser(prog=f"baichuan-audio {name}", description=module.HELP)
    module.add_arguments(parser)
    if getattr(module, "ACCEPTS_CONFIG_OVERRIDES", False):
        # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
        overrides, rest = split_config_overrides(rest)
        args = parser.parse_args(rest)
        args.config_overrides = overrides
    else:
        args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except CLIError as e:
        print(f"baichuan-audio {name}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"baichuan-audio {name}: error: {msg}", file=sys.stderr)
        return 2
