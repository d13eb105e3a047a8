"""The persistent XLA compilation cache, on by default for ``train`` and ``plan``.

A restarted job (preemption, resume, a second ``plan`` of the same config) loads its compiled
programs instead of compiling them again. The directory is, in order: ``JAX_COMPILATION_CACHE_DIR``
if set (JAX's own variable), the ``directory`` given (e.g. ``<workdir>/xla_cache``), else the
user cache ``$XDG_CACHE_HOME/baichuan_audio_jax/xla`` (``~/.cache/...``). ``BAICHUAN_XLA_CACHE=0``
turns it off. Programs that compile in under a second are not stored.
"""
from __future__ import annotations

import os

import jax


def enable(directory: str | None = None) -> str | None:
    """Turns the cache on; returns its directory (None when disabled)."""
    if os.environ.get("BAICHUAN_XLA_CACHE", "1") == "0":
        return None
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "baichuan_audio_jax", "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
