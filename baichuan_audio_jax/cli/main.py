"""``baichuan-audio <subcommand>``: dispatch to the subcommand modules.

Every module ``baichuan_audio_jax/cli/<name>.py`` (other than this one) is the subcommand
``<name>`` and defines ``HELP`` (a paragraph; its first sentence is the one-line summary),
``add_arguments(parser)`` and ``run(args) -> int``. ``--help`` imports every subcommand module, so
they import the library inside ``run`` (marked ``# lazy: CLI start-up``) to keep it fast. A
module may set ``ACCEPTS_CONFIG_OVERRIDES = True`` to receive ``--config.a.b=value`` items as
``args.config_overrides``.

Errors: a user error (bad input, config, file, checkpoint, a refused resume) prints one line
``baichuan-audio <command>: error: ...`` and exits with status 2 (3: training diverged); OS errors
(no space, read-only, permission) likewise, with the cause named. ``--verbose`` (anywhere on the
command line) prints the full traceback instead. Ctrl-C outside training exits with 130.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import traceback
import types
from typing import Sequence

import baichuan_audio_jax.cli as cli_package
from baichuan_audio_jax.config import split_config_overrides
from baichuan_audio_jax.errors import ReadableError, cause_of


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def subcommands() -> dict[str, str]:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    return {m.name.replace("_", "-"): m.name for m in pkgutil.iter_modules(cli_package.__path__) if m.name != "main"}
def _summary(module) -> str:
    return module.HELP.split(". ")[0].rstrip(".")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not verbose:
        logging.getLogger("absl").addFilter(_no_tracebacks)
        sys.unraisablehook = _quiet_closed_loop
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
    except (CLIError, ReadableError, FileNotFoundError, KeyError, ValueError, OSError, SyntaxError) as e:
        if verbose:
            traceback.print_exc()
        else:
            sys.unraisablehook = _quiet_unraisable
            # The abandoned writes of a failed asynchronous save end as asyncio tasks whose
            # exception nobody retrieves; asyncio logs each with its traceback when it is collected.
            logging.getLogger("asyncio").addFilter(_no_tracebacks)
        print(f"baichuan-audio {name}: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(f"baichuan-audio {name}: interrupted", file=sys.stderr, flush=True)
        return 130


def _no_tracebacks(record: logging.LogRecord) -> bool:
    """Drops library log records that carry a traceback (Orbax logs a failed save's traceback
    before re-raising it; the error is reported once, on one line)."""
    return not (record.exc_info or "Traceback (most recent call last)" in record.getMessage())


def _quiet_closed_loop(u) -> None:
    """When an asynchronous checkpoint save fails, TensorStore still completes the writes it had
    queued and reports each through ``loop.call_soon_threadsafe`` on Orbax's event loop, closed by
    then: Python reports every one as an unraisable "Event loop is closed" with no object. They
    are the failed save the error line names; every other unraisable report is printed as usual."""
    if u.object is None and u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed":
        return
    sys.__unraisablehook__(u)


def _quiet_unraisable(u) -> None:
    """After a reported error, the storage libraries' abandoned asynchronous operations are
    collected with "Exception ignored in <coroutine>" reports: not news to the reader."""
    if isinstance(u.object, types.CoroutineType) or "coroutine" in str(u.err_msg or ""):
        return
    _quiet_closed_loop(u)


def _one_line(e: BaseException) -> str:
    """The message of a user-facing error on one line."""
    if isinstance(e, SyntaxError):
        return f"{e.filename}:{e.lineno}: {e.msg} (syntax error in a config file)"
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    elif isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno is not None:
        target = e.filename or ""
        text = f"{target}: {cause_of(e)}" if target else cause_of(e)
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__
