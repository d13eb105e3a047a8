"""Guarded resumes through the command line: a locked workdir, a changed model, an unreadable
newest checkpoint, and a disk that fills up during a save."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from training_helpers import cli_env, run_cli, train_args

from baichuan_audio_jax.training.metrics import read_metrics

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out

# decay_steps fixes the schedule's end, so runs with different `steps` share their learning rates.
BASE = ("log_every=1", "checkpoint_every=10", "train.warmup_steps=5", "train.decay_steps=40")


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == lines[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def _damage(step_dir) -> str:
    """Truncates the largest array data file of a checkpoint to half its size."""
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)
    return big


def test_lock_changed_model_and_unreadable_checkpoint(tmp_path):
    env = cli_env(2)
    run = tmp_path / "run"
    first = run_cli(train_args(run, "steps=20", *BASE), env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    losses = {m["step"]: m["loss"] for m in read_metrics(run)}
    config_before = (run / "config.json").read_bytes()

    # A live `train` holds the workdir (here: a process whose pid the lock names).
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (run / "train.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid,
                                                    "started": 0, "heartbeat": 0}))
        second = run_cli(train_args(run, "steps=25", *BASE), env)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    assert f"is in use by {os.uname().nodename} pid {holder.pid}" in _one_line_error(second)

    # Resume with another model shape: refused, naming the field; config.json untouched.
    changed = run_cli(train_args(run, "steps=25", *BASE, "model.llm.hidden_size=64"), env)
    assert changed.returncode == 2
    line = _one_line_error(changed)
    assert "resume refused" in line and "model.llm.hidden_size: 128 -> 64" in line
    assert (run / "config.json").read_bytes() == config_before

    # The newest checkpoint is unreadable: warned with its step, resumed from the previous one.
    _damage(run / "checkpoints" / "20")
    again = run_cli(train_args(run, "steps=25", *BASE), env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "warning: checkpoint step 20" in out and "cannot read array" in out, out[-3000:]
    assert "resumed from step 10" in out
    assert (run / "checkpoints_unreadable" / "20").is_dir()
    resumed = {m["step"]: m["loss"] for m in read_metrics(run)}
    assert sorted(resumed) == list(range(1, 26))
    assert all(resumed[s] == losses[s] for s in range(1, 21))  # steps 11-20 recomputed exactly
    assert (run / "checkpoints" / "25").is_dir()


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    size_mb = int(os.environ.get("RESILIENCE_TMPFS_MB", "16"))
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, small_disk):
    """A workdir on a small tmpfs that holds one checkpoint but not two (keep 3): the second save
    fails; the run stops with one line naming the step and 'no space left on device', and the
    first checkpoint still restores (a resume from it trains on elsewhere)."""
    env = cli_env(2)
    run = small_disk / "run"
    full = run_cli(train_args(run, "steps=30", *BASE), env, timeout=900)
    assert full.returncode == 2, full.stderr[-3000:]
    line = _one_line_error(full)  # the whole of stderr: no tracebacks from the abandoned writes
    assert "no space left on device" in line and "checkpoint step 20 " in line, line
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[0] == 10
    # The intact checkpoint resumes on a disk with room.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*", "train.lock"))
    for s in steps[1:]:
        shutil.rmtree(moved / "checkpoints" / str(s))
    again = run_cli(train_args(moved, "steps=12", *BASE), env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 10" in again.stdout
