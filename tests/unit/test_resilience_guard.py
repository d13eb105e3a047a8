"""Run guards without training: config diffs on resume, the workdir lock, readable causes."""
from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
from training_helpers import tiny_run_config

from baichuan_audio_jax.errors import array_of, cause_of
from baichuan_audio_jax.training.checkpointing import workdir_path
from baichuan_audio_jax.training.divergence import Diverged, StepWatch
from baichuan_audio_jax.training.run_guard import (
    ResumeRefused,
    WorkdirLock,
    WorkdirLocked,
    check_resume,
    config_changes,
    config_record,
    write_config,
)


def test_resume_refuses_model_and_task_changes_and_lists_safe_ones(tmp_path):
    old = tiny_run_config()
    root = workdir_path(tmp_path)
    write_config(root, old)
    safe = tiny_run_config("steps=999", "log_every=3", "train.decay_steps=50", "mesh.data=2")
    logged = []
    check_resume(root, safe, log=logged.append)
    assert len(logged) == 1 and "steps: 200 -> 999" in logged[0] and "mesh.data" in logged[0]

    bad = tiny_run_config("model.llm.hidden_size=64", "task=flow_matching", "steps=999")
    with pytest.raises(ResumeRefused) as e:
        check_resume(root, bad)
    msg = str(e.value)
    assert "model.llm.hidden_size: 128 -> 64" in msg and "task: 'audio_llm' -> 'flow_matching'" in msg
    assert "steps" not in msg.split("Allowed")[0]
    assert "\n" not in msg
    refused, allowed = config_changes(config_record(old), config_record(tiny_run_config("stage=1")))
    assert refused == ["stage: 0 -> 1"] and allowed == []


def test_second_lock_refused_and_stale_lock_taken_over(tmp_path):
    root = workdir_path(tmp_path)
    first = WorkdirLock(root).acquire()
    record = json.loads((tmp_path / "train.lock").read_text())
    assert record["pid"] == os.getpid()
    # Another live process on this host holds it: refused, naming host and pid.
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "train.lock").write_text(json.dumps({**record, "pid": holder.pid}))
        with pytest.raises(WorkdirLocked, match=f"pid {holder.pid}"):
            WorkdirLock(root).acquire()
    finally:
        holder.kill()
        holder.wait()
    # That process is gone: the lock is stale and taken over with a warning.
    logged = []
    second = WorkdirLock(root, log=logged.append).acquire()
    assert logged and f"process {holder.pid}" in logged[0]
    second.release()
    assert not (tmp_path / "train.lock").exists()
    first.held = False


def test_readable_causes():
    assert cause_of(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert cause_of(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
    wrapped = Exception("Encountered error while reading array index: (slice(0, 100, 1),). See full TensorStore")
    wrapped.__cause__ = ValueError('OUT_OF_RANGE: Error reading "params.llm.norm.scale/0" in OCDBT database at '
                                   'local file "x": Requested byte range [0, 268713) is not valid')
    assert cause_of(wrapped) == "data truncated or missing"
    assert array_of(wrapped) == "params/llm/norm/scale"


def test_step_watch_names_first_nonfinite_step_and_last_checkpoint():
    nan = float("nan")
    watch = StepWatch("stop", 3.0, print, "ckpts")
    for step, loss in ((1, 5.0), (2, 4.0), (3, nan), (4, nan)):
        watch.add(step, {"loss": loss, "grad_norm": 1.0, "nonfinite": float(loss != loss)})
    with pytest.raises(Diverged, match=r"step 3: .*last good checkpoint is step 2 in ckpts"):
        watch.check(2)
    logged = []
    watch = StepWatch("skip", 3.0, logged.append)
    for step, loss in ((1, 5.0), (2, nan), (3, 50.0)):
        watch.add(step, {"loss": loss, "grad_norm": 1.0, "nonfinite": float(loss != loss)})
    assert watch.check(None)["skipped_steps"] == 1.0
    assert "step 2" in logged[0] and "skipped" in logged[0]
    assert "step 3: loss spike" in logged[1]
