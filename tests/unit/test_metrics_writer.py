"""The run's TensorBoard scalars: readable, purged on resume, and a full disk is an error, not a hang.

The full-disk case runs in a child process whose file-size limit (``RLIMIT_FSIZE``) makes the
kernel refuse writes past a few kilobytes, the way a full disk does (``EFBIG`` instead of
``ENOSPC``). A writer whose failed write is lost in a background thread never returns from that
loop, or blocks at interpreter exit; the child must instead see ``OSError`` and exit.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import pytest

from baichuan_audio_jax.training.metrics import ScalarEvents

resource = pytest.importorskip("resource")  # POSIX only


def _scalars(logdir):
    """(tag, step, value) as TensorBoard shows them: files in name order, a SessionLog START at
    step s dropping earlier events at steps >= s."""
    from tensorboardX.proto import event_pb2

    seen = []
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                seen = [x for x in seen if x[1] < event.step]
            for v in event.summary.value:
                seen.append((v.tag, event.step, round(v.simple_value, 6)))
    return seen


def test_scalars_are_readable_and_a_resume_hides_the_redone_steps(tmp_path):
    first = ScalarEvents(str(tmp_path), purge_step=1)
    for step in range(1, 6):
        first.add_scalar("train/loss", 10.0 - step, step)
    first.close()
    first.close()  # a second close does nothing
    resumed = ScalarEvents(str(tmp_path), purge_step=4)  # restored at step 3: steps 4 and 5 redone
    for step in (4, 5):
        resumed.add_scalar("train/loss", 100.0 + step, step)
    resumed.close()
    assert len(os.listdir(tmp_path)) == 2  # two writers in the same second keep two files
    assert _scalars(str(tmp_path)) == [("train/loss", 1, 9.0), ("train/loss", 2, 8.0), ("train/loss", 3, 7.0),
                                       ("train/loss", 4, 104.0), ("train/loss", 5, 105.0)]


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from baichuan_audio_jax.training.metrics import MetricsWriter, ScalarEvents
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    kind, workdir = sys.argv[1], sys.argv[2]
    if kind == "events":
        writer = ScalarEvents(workdir)
        log = lambda step: (writer.add_scalar("train/loss", 1.0, step), writer.flush())
    else:
        writer = MetricsWriter(workdir, start_step=0, total_steps=10**6, progress=False)
        log = lambda step: writer.write(step, {"loss": 1.0, "grad_norm": 2.0, "learning_rate": 3e-4})
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        for step in range(1, 10**6):
            log(step)
        print("never failed")
    except OSError as e:
        print("failed at step", step, "errno", e.errno)
    writer.close(**({} if kind == "events" else {"after_error": True}))
""")


@pytest.mark.parametrize("kind", ["events", "metrics"])
def test_a_full_disk_fails_the_write_and_the_process_exits(tmp_path, kind):
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, kind, str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip()
    assert out.startswith("failed at step") and out.endswith("errno 27"), out  # EFBIG, raised in the loop

