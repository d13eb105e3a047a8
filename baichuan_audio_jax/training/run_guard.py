"""Guards around a run directory: one writer at a time, and resumes that match the run.

**Lock.** ``<workdir>/train.lock`` holds the host, pid and a heartbeat of the ``train`` process
that owns the workdir (process 0 of a multi-host job). A second ``train`` on the same workdir
refuses with the owner named. A lock is stale — and taken over, with a warning — when its
process is gone (same host) or its heartbeat is older than :data:`STALE_AFTER_S` (another host;
the heartbeat is refreshed at every log step and checkpoint). Local and mounted directories take
the lock atomically (``O_EXCL``); object stores (``gs://``) have no atomic create through this
path, so there the lock detects a second run only once the first one has written its lock.

**Config guard.** Resuming compares the new config with the run's ``config.json``. Fields that
change what the checkpoint means — the model, the task, the stage, the data and the optimiser —
are refused, naming each field with its old and new value. The changes in
:data:`SAFE_ON_RESUME` are allowed and listed: run length and learning-rate schedule end,
logging, checkpointing, evaluation, mesh shape (restores re-shard), data loading performance
knobs and divergence handling. ``config.json`` is rewritten only after the restore succeeded.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Callable, Mapping

import jax
from etils import epath

from baichuan_audio_jax.errors import ReadableError
from baichuan_audio_jax.training.checkpointing import all_processes_ok

LOCK_NAME = "train.lock"
STALE_AFTER_S = 900.0  # a lock from another host with an older heartbeat is stale
HEARTBEAT_EVERY_S = 60.0

# Config fields a resume may change (a prefix ending in "." covers a section).
SAFE_ON_RESUME = (
    "steps", "log_every", "checkpoint_every", "checkpoint.", "eval.", "mesh.", "init_from.",
    "train.decay_steps", "train.min_learning_rate", "train.peak_flops_per_device", "train.nonfinite",
    "train.spike_factor", "train.grad_accum_steps", "train.loss_chunk_size",
    "data.read_threads", "data.prefetch", "data.worker_count", "data.max_consecutive_skips",
)


class WorkdirLocked(ReadableError):
    pass


class ResumeRefused(ReadableError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """``acquire`` on every process (process 0 holds the file); ``release`` at the end."""

    def __init__(self, workdir: epath.Path, log: Callable[[str], None] = print):
        self.path = workdir / LOCK_NAME
        self.log = log
        self.owner = jax.process_index() == 0
        self.held = False
        self._last_beat = 0.0
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def _record(self) -> str:
        return json.dumps({**self.info, "heartbeat": time.time()})

    def _create(self) -> bool:
        text = os.fspath(self.path)
        if "://" in text:  # no atomic create-if-absent here: check, then write
            if self.path.exists():
                return False
            self.path.write_text(self._record())
            return True
        try:
            fd = os.open(text, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._record())
        return True

    def _stale_reason(self) -> str | None:
        try:
            other = json.loads(self.path.read_text())
            host, pid, beat = other["host"], int(other["pid"]), float(other["heartbeat"])
        except Exception:
            return "unreadable lock file"
        if host == self.info["host"]:
            if pid == os.getpid():
                return "left by this process"
            if not _pid_alive(pid):
                return f"process {pid} on {host} is gone"
            return None
        age = time.time() - beat
        if age > STALE_AFTER_S:
            return f"no heartbeat from {host} pid {pid} for {age:.0f} s"
        return None

    def _describe_owner(self) -> str:
        try:
            other = json.loads(self.path.read_text())
            age = time.time() - float(other["heartbeat"])
            return f"{other['host']} pid {other['pid']} (heartbeat {age:.0f} s ago)"
        except Exception:
            return "another process"

    def acquire(self) -> "WorkdirLock":
        error = None
        if self.owner:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._create():
                reason = self._stale_reason()
                if reason is None:
                    error = (f"workdir {self.path.parent} is in use by {self._describe_owner()}; "
                             f"a second train on it would mix two runs (remove {self.path} only if that "
                             "process is really gone)")
                else:
                    self.log(f"warning: taking over a stale lock {self.path} ({reason})")
                    self.path.write_text(self._record())
            self.held = error is None
        if not all_processes_ok(error is None):
            raise WorkdirLocked(error or "the workdir lock is held by another run (see process 0)")
        self._last_beat = time.time()
        return self

    def heartbeat(self) -> None:
        if self.held and time.time() - self._last_beat > HEARTBEAT_EVERY_S:
            self._last_beat = time.time()
            try:
                self.path.write_text(self._record())
            except OSError:
                pass  # the next save reports a broken workdir with its cause

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except Exception:
            pass


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_record(config) -> dict:
    """The config as written to ``config.json`` (plain JSON types)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_ON_RESUME)


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, allowed) changes from ``old`` to ``new``, each as ``"key: old -> new"``."""
    a, b = _flatten(old), _flatten(new)
    refused, allowed = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            (allowed if _safe(key) else refused).append(f"{key}: {va!r} -> {vb!r}")
    return refused, allowed


def check_resume(workdir: epath.Path, config, log: Callable[[str], None] = print) -> None:
    """Raises :class:`ResumeRefused` if ``config`` changes refused fields of the run's
    ``config.json``; logs the allowed changes."""
    path = workdir / "config.json"
    if not path.exists():
        log(f"warning: {path} is missing; resuming without checking the config against the run's")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResumeRefused(f"cannot read the run's config {path}: {e}") from e
    refused, allowed = config_changes(old, config_record(config))
    if refused:
        raise ResumeRefused(
            f"resume refused: the config differs from the run's {path} in {len(refused)} field(s) that "
            f"change the model, task or training: {'; '.join(refused)}. Allowed on resume: "
            f"{', '.join(SAFE_ON_RESUME)}. To train with the new values, use a new workdir "
            f"(init_from.model={workdir}# starts it from this run's weights)")
    if allowed:
        log("resuming with changed settings: " + "; ".join(allowed))


def write_config(workdir: epath.Path, config) -> None:
    """Writes ``config.json`` (process 0), through a temporary file where renames are atomic."""
    if jax.process_index() != 0:
        return
    path = workdir / "config.json"
    text = json.dumps(config.to_dict(), indent=1, default=str)
    tmp = workdir / "config.json.tmp"
    tmp.write_text(text)
    tmp.replace(path)
