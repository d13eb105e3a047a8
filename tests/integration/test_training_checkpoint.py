"""Checkpoints: restore onto a different mesh; kill -9 mid-run and resume with identical losses."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import jax
import numpy as np
from training_helpers import cli_command, cli_env, run_cli, tiny_run_config, train_args

from baichuan_audio_jax.training.checkpointing import Checkpointer
from baichuan_audio_jax.training.mesh import mesh_from_config
from baichuan_audio_jax.training.metrics import read_metrics
from baichuan_audio_jax.training.train_step import build_program


def test_restore_onto_a_different_mesh(tmp_path):
    """A state saved from a data=8 mesh restores bit-exactly onto fsdp=4 × tensor=2 with the
    new program's shardings, data iterator state included."""
    cfg_a = tiny_run_config("stage=1", "mesh.data=8")
    cfg_b = tiny_run_config("stage=1", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2")
    prog_a = build_program(cfg_a, mesh_from_config(cfg_a.mesh))
    prog_b = build_program(cfg_b, mesh_from_config(cfg_b.mesh))
    # Random values in every leaf (parameters, moments, step, RNG), placed in mesh A's layout.
    rng = np.random.default_rng(0)
    state = jax.tree.map(
        lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype) if np.issubdtype(a.dtype, np.floating)
                                 else rng.integers(0, 100, a.shape).astype(a.dtype), a.sharding),
        prog_a.abstract_state)
    state = state.replace(step=jax.device_put(np.int32(7), prog_a.state_shardings.step))
    saver = Checkpointer(str(tmp_path), max_to_keep=2, async_save=True)
    saver.save(7, state, {"step": 7})
    saver.close()

    restored, data_state, step = Checkpointer(str(tmp_path)).restore(prog_b.abstract_state)
    assert step == 7 and data_state == {"step": 7} and int(restored.step) == 7
    for a, b, want in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(prog_b.state_shardings)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
        assert b.sharding.is_equivalent_to(want, b.ndim)
    kernel = restored.params["layers"]["mlp"]["gate_proj"]["kernel"]
    assert tuple(kernel.sharding.spec) == (None, "fsdp", "tensor")


def _losses(workdir):
    return {m["step"]: m["loss"] for m in read_metrics(workdir)}


def test_kill_minus_9_then_rerun_resumes_exactly(tmp_path):
    """`train` killed with SIGKILL mid-run (checkpoints every 10 steps, async), then the same
    command again: it resumes from the latest complete checkpoint and every step's loss equals
    an uninterrupted run's bit for bit."""
    steps = 60
    env = cli_env(2)
    overrides = (f"steps={steps}", "log_every=1", "checkpoint_every=10", "train.warmup_steps=5")
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    ref = run_cli(train_args(ref_dir, *overrides), env)
    assert ref.returncode == 0, ref.stderr[-3000:]

    victim = subprocess.Popen(cli_command(*train_args(run_dir, *overrides)), env=env, cwd=os.getcwd(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            if len(lines) >= 25:
                victim.send_signal(signal.SIGKILL)
                killed_at = len(lines)
                break
        time.sleep(0.01)
    victim.wait(timeout=60)
    assert killed_at is not None and victim.returncode == -signal.SIGKILL, "the run was not killed mid-way"
    assert len(_losses(run_dir)) < steps

    again = run_cli(train_args(run_dir, *overrides), env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout + again.stderr
    want, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    assert got == want
