"""The goodput record: its buckets and the loop partition a segment's wall time, whatever the
timings (compile happens before the loop, checkpoints inside it)."""
from __future__ import annotations

import time

import pytest

from baichuan_audio_jax.training.goodput import Goodput


def _segment(restore_s: float, compile_s: float, steps: int, save_s: float) -> dict:
    clock = Goodput()
    with clock.measure("restore"):
        time.sleep(restore_s)
    with clock.measure("compile"):
        time.sleep(compile_s)
    clock.start_loop()
    for _ in range(steps):
        time.sleep(0.01)
        clock.steps += 1
    with clock.measure("checkpoint"):
        time.sleep(save_s)
    return clock.summary()


@pytest.mark.parametrize("restore_s,compile_s,steps,save_s", [(0.0, 0.05, 3, 0.02), (0.02, 0.0, 1, 0.0)])
def test_buckets_and_productive_time_add_up_to_the_wall_time(restore_s, compile_s, steps, save_s):
    r = _segment(restore_s, compile_s, steps, save_s)
    parts = r["startup_s"] + r["restore_s"] + r["compile_s"] + r["checkpoint_s"] + r["productive_s"]
    assert parts == pytest.approx(r["wall_s"], abs=1e-6)
    assert r["compile_s"] >= compile_s and r["checkpoint_s"] >= save_s
    assert r["productive_s"] >= 0.01 * steps  # the steps, not the compile before them
    assert r["goodput"] == pytest.approx(r["productive_s"] / r["wall_s"])
