"""A bundle with a truncated array file: load_bundle raises one BundleError line naming the
directory, the array and the cause."""
from __future__ import annotations

import os

import pytest
from flax import nnx
from training_helpers import tiny_run_config

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.bundle import BundleError, load_bundle, save_bundle
from baichuan_audio_jax.models.baichuan_audio import BaichuanAudio


def test_truncated_bundle_is_one_line(tmp_path):
    config = tiny_run_config("model.llm.num_layers=1")
    cfg = ModelConfig.from_config(config.model)
    model = BaichuanAudio(cfg, rngs=nnx.Rngs(0), components=["llm"])
    path = save_bundle(str(tmp_path / "bundle"), config.model, model, source="tests")
    files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if "/d/" in os.path.join(r, f)]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 3)
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    msg = str(e.value)
    assert "\n" not in msg and "cannot read array " in msg and "data truncated or missing" in msg, msg
