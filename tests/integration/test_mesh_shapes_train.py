"""The real trainer runs >= 3 steps on every mesh shape the tests use, on 4 and on 8 CPU devices.

Single-step comparisons cannot catch a program that deadlocks in the CPU runtime's collective
rendezvous from the second step on (data 1 × fsdp 2 × tensor 2 on 4 devices did, see
docs/pod_scale.md): this drives ``training.trainer.train`` itself, steps dispatched back to
back as in a real run, once per mesh in one process per device count. A deadlock aborts the
process after XLA's collective timeout, which fails the test with the mesh in the output.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from training_helpers import REPO, cli_env

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out

MESHES = {4: [(4, 1, 1), (1, 4, 1), (1, 2, 2), (2, 2, 1)], 8: [(8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 8, 1)]}

DRIVER = """
import json, math, sys
sys.path.insert(0, {tests!r})
from training_helpers import tiny_run_config
from baichuan_audio_jax.training.trainer import train
out = {{}}
for data, fsdp, tensor in {meshes!r}:
    print(f"mesh {{data}}x{{fsdp}}x{{tensor}}", flush=True)
    cfg = tiny_run_config(f"mesh.data={{data}}", f"mesh.fsdp={{fsdp}}", f"mesh.tensor={{tensor}}", "steps=3",
                          "log_every=1", "checkpoint_every=0", "data.source=synthetic")
    last = train(cfg, {workdir!r} + f"/{{data}}x{{fsdp}}x{{tensor}}", progress=False, log=lambda *a: None)
    out[f"{{data}}x{{fsdp}}x{{tensor}}"] = [last["step"], last["loss"]]
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("devices", sorted(MESHES))
def test_trainer_runs_three_steps_on_every_mesh(devices, tmp_path):
    code = DRIVER.format(tests=str(REPO / "tests"), meshes=MESHES[devices], workdir=str(tmp_path))
    # Without the intra-op thread pool XLA:CPU runs each device's collectives in program order
    # (the workaround for the runtime's deadlock, docs/pod_scale.md); a 120 s collective timeout
    # keeps a loaded machine from being mistaken for a deadlock.
    flags = " --xla_cpu_multi_thread_eigen=false --xla_cpu_collective_timeout_seconds=120"
    env = cli_env(devices, XLA_FLAGS=cli_env(devices)["XLA_FLAGS"] + flags)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (f"exit {proc.returncode}; last mesh started:\n{proc.stdout[-500:]}\n"
                                  f"{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    for mesh, (step, loss) in result.items():
        assert step == 3 and loss == loss and abs(loss) < 1e3, f"mesh {mesh}: step {step}, loss {loss}"
    assert len(result) == len(MESHES[devices])
