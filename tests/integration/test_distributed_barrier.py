"""``distributed.barrier`` with two real JAX processes: when one does not arrive in time, the
other fails with a one-line ``BarrierError`` (a ``ReadableError``: the command line prints it
without a traceback) naming the barrier and its timeout."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from training_helpers import REPO, cli_env

CHILD = textwrap.dedent("""
    import sys, time
    import jax
    from baichuan_audio_jax.errors import ReadableError
    from baichuan_audio_jax.training import distributed
    pid, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    jax.devices()  # both processes bring the backend up together
    if pid == 0:
        try:
            distributed.barrier("step_compiled", timeout_s=2)
            print("PASSED")
        except ReadableError as e:
            print("ERROR " + type(e).__name__ + ": " + str(e))
    else:
        time.sleep(6)  # past the other's timeout: it must give up without us
        print("LATE")
""")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_that_does_not_arrive_fails_the_barrier_on_one_line():
    port, env = str(_port()), cli_env(1)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(pid), port], env=env, cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for pid in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    first = outs[0][0].strip().splitlines()
    assert first and first[-1].startswith("ERROR BarrierError: process 0 at barrier 'step_compiled' (timeout 2 s)"), \
        outs[0][0][-1000:] + outs[0][1][-2000:]
    assert outs[1][0].strip().endswith("LATE"), outs[1][1][-2000:]
