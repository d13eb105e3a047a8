"""train.nonfinite=skip inside the compiled step: a NaN step leaves parameters and optimizer state
bit-identical to the previous step's; the step counter advances past the batch."""
from __future__ import annotations

import jax
import numpy as np
import pytest  # noqa: E402
from training_helpers import tiny_run_config

from baichuan_audio_jax.sharding import make_mesh
from baichuan_audio_jax.training.data_sources import build_iterator
from baichuan_audio_jax.training.train_step import build_program

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out


def test_skip_leaves_state_unchanged_on_a_nan_step():
    config = tiny_run_config("train.nonfinite=skip")
    program = build_program(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    it = build_iterator(config)
    put = lambda b: {k: jax.device_put(v, program.batch_shardings[k]) for k, v in b.items()}
    state = program.init()
    state, metrics = program.step(state, put(next(it)))
    assert float(metrics["nonfinite"]) == 0.0
    before = jax.device_get(state)  # the step donates its input: copy first

    bad = next(it)
    bad["text_weights"][0, 0] = np.nan  # one NaN weight makes the loss and every gradient NaN
    state, metrics = program.step(state, put(bad))
    m = jax.device_get(metrics)
    assert m["nonfinite"] == 1.0 and not np.isfinite(m["loss"])
    after = jax.device_get(state)
    assert int(after.step) == int(before.step) + 1
    for part in ("params", "opt_state", "model_state"):
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(getattr(before, part)),
                                jax.tree.leaves(getattr(after, part))):
            np.testing.assert_array_equal(b, a, err_msg=f"{part}{jax.tree_util.keystr(path)}")

    # The next finite step trains again.
    state, metrics = program.step(state, put(next(it)))
    assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    moved = jax.device_get(state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(moved)))
