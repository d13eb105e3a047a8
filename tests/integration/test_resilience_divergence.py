"""Divergence in the trainer: a NaN injected into the data at a chosen step, under
train.nonfinite=stop (the run stops naming that step and the last good checkpoint; nothing
non-finite is saved) and skip (the step is skipped and counted, training goes on)."""
from __future__ import annotations

import numpy as np
import pytest
from training_helpers import tiny_run_config

from baichuan_audio_jax.training import data_sources
from baichuan_audio_jax.training.divergence import Diverged
from baichuan_audio_jax.training.metrics import read_metrics
from baichuan_audio_jax.training.trainer import train

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out

BAD_STEP = 3


class _NanAt:
    """The synthetic batches, with one NaN loss weight in batch ``BAD_STEP`` (the input is
    corrupted, not the trainer)."""

    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        if self.inner.step == BAD_STEP:
            batch["text_weights"][0, 0] = np.nan
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


@data_sources.register("synthetic_nan_at_3")
def _build(config, *, process_index, process_count):
    return _NanAt(data_sources.build_synthetic(config, process_index=process_index, process_count=process_count))


def _config(mode):
    return tiny_run_config("data.source=synthetic_nan_at_3", f"train.nonfinite={mode}", "steps=5", "log_every=5",
                           "checkpoint_every=2", "mesh.data=8")


def test_stop_names_the_step_and_the_last_good_checkpoint(tmp_path):
    with pytest.raises(Diverged) as e:
        train(_config("stop"), str(tmp_path), progress=False)
    assert f"step {BAD_STEP}: non-finite training" in str(e.value)
    assert "last good checkpoint is step 2" in str(e.value)
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["2"]  # the save at step 4 was refused: its state had trained on NaN
    assert not (tmp_path / "train.lock").exists()


def test_skip_counts_the_step_and_trains_on(tmp_path, capsys):
    last = train(_config("skip"), str(tmp_path), progress=False)
    assert last["step"] == 5 and np.isfinite(last["loss"]) and last["skipped_steps"] == 1.0
    assert f"step {BAD_STEP}: non-finite training" in capsys.readouterr().out
    assert [m["step"] for m in read_metrics(tmp_path)] == [5]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4", "5"]
