"""Shared helpers of the training tests: a tiny run config and a CLI runner."""
from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small enough to compile in seconds, with every part of the real model (2 decoder layers,
# GQA, audio embeddings, a 1-layer audio head).
TINY_OVERRIDES = [
    "model.llm.hidden_size=128", "model.llm.intermediate_size=192", "model.llm.num_heads=4",
    "model.llm.num_kv_heads=2", "model.llm.head_dim=32", "model.audio_head.head_dim=64",
    "data.batch_size=8", "data.seq_len=32", "train.warmup_steps=2", "train.learning_rate=1e-3",
    "train.max_audio_positions=24",
]


def tiny_run_config(*overrides: str):
    from baichuan_audio_jax.config import load_config

    return load_config(REPO / "configs" / "tiny.py", [*TINY_OVERRIDES, *overrides])


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "baichuan_audio_jax", *args]


# The command-line runs share the test session's persistent XLA compilation cache (conftest.py):
# the first run of a program compiles it, later runs (resume after a kill, the reference run) load it.
# Outside pytest, a cache of this process's own.
COMPILATION_CACHE = os.environ.get("TEST_SESSION_XLA_CACHE_DIR") or tempfile.mkdtemp(prefix="baichuan_audio_jax_xla_")
if "TEST_SESSION_XLA_CACHE_DIR" not in os.environ:
    atexit.register(shutil.rmtree, COMPILATION_CACHE, True)


def cli_env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAICHUAN_")}
    # CPU code generation without the expensive LLVM passes: the same program, compiled ~2x faster.
    xla_flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags,
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2",
               JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update(extra)
    return env


def train_args(workdir, *overrides: str) -> list[str]:
    return ["train", "--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(workdir), "--no-progress",
            *[f"--config.{o}" for o in TINY_OVERRIDES], *[f"--config.{o}" for o in overrides]]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
