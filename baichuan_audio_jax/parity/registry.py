"""Which fixture components the package can reproduce, and how.

A component runner takes a :class:`~baichuan_audio_jax.parity.fixtures.FixtureComponent` and
returns ``{array name: our value}`` (optionally :class:`~baichuan_audio_jax.parity.compare.Masked`)
for every output of the fixture; intermediates with a tolerance may be returned too and are then
compared as well. Register with ``@register("name")`` in a module of
``baichuan_audio_jax.parity.components``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

import baichuan_audio_jax.parity.components as pkg

Runner = Callable[[Any], dict[str, Any]]

_RUNNERS: dict[str, Runner] = {}


def register(name: str) -> Callable[[Runner], Runner]:
    def deco(fn: Runner) -> Runner:
        if name in _RUNNERS:
            raise ValueError(f"parity component {name!r} registered twice")
        _RUNNERS[name] = fn
        return fn
    return deco


def runners() -> dict[str, Runner]:
    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")
    return dict(_RUNNERS)
