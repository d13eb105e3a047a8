"""Preemption: SIGTERM at a random step -> checkpoint at that step, status 143, and a resumed run
equal to an uninterrupted one bit for bit (every step's loss and the final parameters); the same
with two JAX processes, where the signal reaches only one of them."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest  # noqa: E402
from training_helpers import REPO, cli_command, cli_env, run_cli, train_args

from baichuan_audio_jax.training.metrics import read_metrics
from baichuan_audio_jax.training.preemption import EXIT_PREEMPTED

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out

STEPS = 24
OVERRIDES = (f"steps={STEPS}", "log_every=1", "checkpoint_every=10", "train.warmup_steps=5")
EXIT_BOUND_S = 120.0  # signal -> exit, including the checkpoint commit, on a shared 2-core machine


def _losses(workdir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(workdir)}


def _saved_state(workdir, step: int) -> dict:
    """The checkpoint's arrays as numpy (read onto one device of this process)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    meta = ocp.StandardCheckpointer().metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta.tree)
    restored = ocp.StandardCheckpointer().restore(path, target)
    return jax.tree.map(np.asarray, restored)


def _assert_same_run(ref_dir, run_dir) -> None:
    want, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want, {s: (want[s], got[s]) for s in want if want[s] != got.get(s)}
    a, b = _saved_state(ref_dir, STEPS), _saved_state(run_dir, STEPS)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(path))


def _wait_for_steps(workdir, n: int, proc: subprocess.Popen, timeout: float = 1800, logs=None) -> None:
    """Returns once ``n`` steps are logged; otherwise fails with what the run printed (its own output
    and, for the launcher, every process's log)."""
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.01)
    status = proc.poll()
    if status is None:
        proc.kill()
    out, err = proc.communicate(timeout=60)
    printed = [f"--- stdout\n{(out or '')[-3000:]}", f"--- stderr\n{(err or '')[-3000:]}"]
    for log in sorted(logs.glob("*.log")) if logs is not None else ():
        printed.append(f"--- {log.name}\n{log.read_text()[-4000:]}")
    raise AssertionError(f"the run did not reach step {n} (status {status})\n" + "\n".join(printed))


def _check_preempted(run_dir, proc, sent_at: float, stderr: str) -> int:
    took = time.time() - sent_at
    assert proc.returncode == EXIT_PREEMPTED, (proc.returncode, stderr[-3000:])
    assert took < EXIT_BOUND_S, f"exit took {took:.1f} s"
    stopped = max(_losses(run_dir))
    assert stopped < STEPS, "the run ended before the signal took effect"
    assert f"stopped after step {stopped}" in stderr
    assert (run_dir / "checkpoints" / str(stopped)).is_dir(), os.listdir(run_dir / "checkpoints")
    assert not (run_dir / "train.lock").exists()
    goodput = [json.loads(line) for line in (run_dir / "goodput.jsonl").read_text().splitlines()]
    assert goodput[-1]["preemption_s"] > 0
    return stopped


def test_sigterm_saves_at_that_step_and_resumes_exactly(tmp_path):
    env = cli_env(2, PYTHONUNBUFFERED="1")  # the test reads the victim's output while it runs
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "preempted"
    ref = run_cli(train_args(ref_dir, *OVERRIDES), env, timeout=1800)
    assert ref.returncode == 0, ref.stderr[-3000:]

    at = random.Random(os.urandom(8)).randint(3, STEPS - 6)
    stdout = tmp_path / "victim.out"
    with open(stdout, "w") as out_file:
        victim = subprocess.Popen(cli_command(*train_args(run_dir, *OVERRIDES)), env=env, cwd=REPO,
                                  stdout=out_file, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(run_dir, at, victim)
    sent_at = time.time()
    victim.send_signal(signal.SIGTERM)
    # A second notice while stopping changes nothing. Sent once the first is handled: two signals
    # that arrive while the main thread is inside one XLA call reach Python's handler once.
    deadline = time.time() + EXIT_BOUND_S
    while "SIGTERM received" not in stdout.read_text() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=EXIT_BOUND_S + 30)
    stopped = _check_preempted(run_dir, victim, sent_at, err)
    assert "received again" in err

    again = run_cli(train_args(run_dir, *OVERRIDES), env, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {stopped}" in again.stdout
    _assert_same_run(ref_dir, run_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, logs) -> subprocess.Popen:
    env = cli_env(2, NUM_PROCESSES="2", DEVICES_PER_PROCESS="2", PYTHON=sys.executable,
                  PORT=str(_free_port()), LOG_DIR=str(logs))
    args = train_args(workdir, *OVERRIDES, "mesh.data=4")[1:]
    return subprocess.Popen(["bash", str(REPO / "launch" / "local_multiprocess.sh"), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_two_processes_stop_at_the_same_step_and_resume_exactly(tmp_path):
    """SIGTERM to process 1 only: the distributed runtime makes both processes stop at the same
    step, both write their part of the checkpoint, the launcher exits 143, and the resumed
    2-process run equals an uninterrupted 2-process run bit for bit."""
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "preempted"
    ref = _launch(ref_dir, tmp_path / "ref_logs")
    out, err = ref.communicate(timeout=1800)
    assert ref.returncode == 0, err[-2000:] + out[-3000:]

    at = random.Random(os.urandom(8)).randint(3, STEPS - 6)
    logs = tmp_path / "logs"
    victim = _launch(run_dir, logs)
    _wait_for_steps(run_dir, at, victim, logs=logs)
    workers = _children(victim.pid)
    assert len(workers) == 2, workers
    sent_at = time.time()
    os.kill(workers[1], signal.SIGTERM)
    out, err = victim.communicate(timeout=EXIT_BOUND_S + 60)
    log_text = "".join(p.read_text() for p in sorted(logs.glob("*.log")))
    stopped = _check_preempted(run_dir, victim, sent_at, log_text)
    assert log_text.count(f"stopped after step {stopped}") == 2, log_text[-3000:]

    again = _launch(run_dir, tmp_path / "logs2")
    out, err = again.communicate(timeout=1800)
    assert again.returncode == 0, err[-2000:] + out[-3000:]
    assert f"resumed from step {stopped}" in out
    _assert_same_run(ref_dir, run_dir)
