"""Two JAX processes on 127.0.0.1 (CPU collectives, 2 devices each) train like one process with
4 devices."""
from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
from training_helpers import REPO, cli_env, run_cli, train_args

from baichuan_audio_jax.training.metrics import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """Same global batch (each process feeds its half of the rows), same data=4 mesh: every
    logged metric of 3 steps agrees to 1e-6 relative — only the all-reduce implementation
    differs (gloo across processes vs in-process) — and both processes save one checkpoint."""
    overrides = ("steps=3", "log_every=1", "checkpoint_every=0", "mesh.data=4")
    single = run_cli(train_args(tmp_path / "single", *overrides), cli_env(4))
    assert single.returncode == 0, single.stderr[-3000:]

    # The local launcher sets BAICHUAN_COORDINATOR/NUM_PROCESSES/PROCESS_ID for each process.
    workdir = tmp_path / "multi"
    env = cli_env(2, NUM_PROCESSES="2", DEVICES_PER_PROCESS="2", PYTHON=sys.executable,
                  PORT=str(_free_port()), LOG_DIR=str(tmp_path / "logs"))
    args = train_args(workdir, *overrides)[1:]  # without the subcommand
    multi = subprocess.run(["bash", str(REPO / "launch" / "local_multiprocess.sh"), *args], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))
    assert multi.returncode == 0, multi.stderr[-2000:] + logs[-3000:]
    assert "processes: 2" in multi.stdout

    want, got = read_metrics(tmp_path / "single"), read_metrics(workdir)
    assert [m["step"] for m in got] == [1, 2, 3]
    for a, b in zip(want, got):
        for k in ("loss", "text_loss", "audio_loss", "grad_norm"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, err_msg=k)
    assert (workdir / "checkpoints" / "3").is_dir()
