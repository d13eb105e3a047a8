"""An exported reference ``config.json`` is one the public reference code constructs the model from:
it carries every key of the released checkpoint's ``config.json`` (recursively, with the same JSON
types), with values from the model where the model determines them and the released values
elsewhere, and it still reads back to the same model.

Checked on the config written for the tiny and the 7B model configs, on the ``config.json`` that
``convert --to torch`` writes for a randomly initialised tiny bundle, and on a carried reference
config that lacks keys.
"""
import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import REPO, SHARED
from flax import nnx

from baichuan_audio_jax.config import (
    ModelConfig,
    complete_reference_config,
    load_config,
    model_config_from_reference,
    reference_config_from_model,
)
from baichuan_audio_jax.config.released import RELEASED_CONFIG
from baichuan_audio_jax.conversion.bundle import save_bundle
from baichuan_audio_jax.conversion.convert import bundle_to_torch
from baichuan_audio_jax.models.baichuan_audio import BaichuanAudio

CONFIGS = ("tiny.py", "baichuan_audio_7b.py")
# The reference sections this package reads back (the vocoder's settings live in its own file).
SECTIONS = ("llm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching")


def key_problems(released, exported, path="") -> list[str]:
    """Every key of ``released`` absent from ``exported`` or of another JSON type, by dotted path
    (list elements are compared against the released list's first element)."""
    problems = []
    for key, want in released.items():
        where = f"{path}.{key}" if path else key
        if key not in exported:
            problems.append(f"{where}: missing")
            continue
        got = exported[key]
        if type(got) is not type(want):
            problems.append(f"{where}: {type(got).__name__}, released {type(want).__name__}")
        elif isinstance(want, dict):
            problems += key_problems(want, got, where)
        elif isinstance(want, list) and want:
            problems += [f"{where}[{i}]: {type(x).__name__}, released {type(want[0]).__name__}"
                         for i, x in enumerate(got) if type(x) is not type(want[0])]
    return problems


def _model_config(name: str) -> ModelConfig:
    return ModelConfig.from_config(load_config(REPO / "configs" / name).model)


def _as_written(ref: dict) -> dict:
    return json.loads(json.dumps(ref))


def test_the_walk_sees_missing_keys_and_changed_types():
    """The checker itself: a dropped nested key and an int where the release has a float are found."""
    broken = _as_written(RELEASED_CONFIG)
    del broken["flow_matching_config"]["cal_mel_mae"]
    broken["audio_config"]["split_overlap"] = 0
    broken["video_config"]["image_mean"][1] = 0
    assert key_problems(RELEASED_CONFIG, broken) == [
        "audio_config.split_overlap: int, released float", "flow_matching_config.cal_mel_mae: missing",
        "video_config.image_mean[1]: int, released float"]
    assert key_problems(RELEASED_CONFIG, RELEASED_CONFIG) == []


@pytest.mark.parametrize("name", CONFIGS)
def test_reference_config_carries_every_released_key(name):
    cfg = _model_config(name)
    ref = _as_written(reference_config_from_model(cfg))
    assert key_problems(RELEASED_CONFIG, ref) == []
    # The keys the reference code reads and earlier exports dropped.
    fm = ref["flow_matching_config"]
    assert fm["cal_mel_mae"] is True and fm["use_hires_mel"] is True and fm["split_overlap"] == 0.1
    assert fm["max_audio_seconds"] == ref["audio_config"]["max_audio_seconds"] == cfg.audio_encoder.max_audio_seconds
    assert ref["vocoder_config"]["max_audio_seconds"] == cfg.audio_encoder.max_audio_seconds
    # No vision towers in this model, and the written config still describes the same model.
    assert ref["visual_config"]["enable"] is False and ref["video_config"]["enable"] is False
    back = ModelConfig.from_config(model_config_from_reference(ref))
    for section in SECTIONS:
        assert getattr(back, section) == getattr(cfg, section), section


def test_7b_reference_config_is_the_released_one_but_for_vision_and_eos():
    """For the 7B config every released value is reproduced, except the vision towers (not part of
    this model: disabled) and ``eos_token_id`` (the model's end of text, <|endoftext|>)."""
    ref = _as_written(reference_config_from_model(_model_config("baichuan_audio_7b.py")))
    expected = _as_written(RELEASED_CONFIG)
    expected["visual_config"]["enable"] = expected["video_config"]["enable"] = False
    expected["eos_token_id"] = 151643

    def restricted(ours, released):
        return {k: restricted(ours[k], v) if isinstance(v, dict) else ours[k] for k, v in released.items()}

    assert restricted(ref, expected) == expected


def test_special_token_list_follows_the_model_ids():
    """The released list moved with the model's ids (the tiny layout: real id - 151196); ids in
    another layout give the model's audio ids alone."""
    released = RELEASED_CONFIG["multimodal_special_token_list"]
    cfg = _model_config("tiny.py")
    tiny = _as_written(reference_config_from_model(cfg))
    assert tiny["multimodal_special_token_list"] == [t - 151196 for t in released]
    assert max(tiny["multimodal_special_token_list"]) < tiny["vocab_size"]
    other = dataclasses.replace(cfg, tokens=dataclasses.replace(cfg.tokens, audio_delim_token_id=7))
    ids = _as_written(reference_config_from_model(other))["multimodal_special_token_list"]
    assert ids == [7, 480, 481, 482, 501, 502, 503, 504, 505]


def test_convert_to_torch_writes_a_complete_config(tmp_path):
    """``convert --to torch`` of a bundle of the tiny model (its LLM; zero weights: only the config
    matters here, and building the state from shapes keeps the test fast)."""
    model_cfg = load_config(REPO / "configs" / "tiny.py").model
    cfg = ModelConfig.from_config(model_cfg)
    shapes = nnx.state(nnx.eval_shape(lambda: BaichuanAudio(cfg, rngs=nnx.Rngs(0), components=["llm"])))
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    save_bundle(tmp_path / "bundle", model_cfg, state, source="test")
    bundle_to_torch(str(tmp_path / "bundle"), str(tmp_path / "hf"))
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert key_problems(RELEASED_CONFIG, written) == []
    assert written == _as_written(reference_config_from_model(cfg, torch_dtype="float32"))  # float32 weights


def test_a_carried_config_gains_the_keys_it_lacks_and_keeps_its_values():
    """A reference config carried in a bundle (here shaped like the parity fixtures' tiny config,
    vision blocks reduced to ``enable``) is completed without changing what it says."""
    cfg = _model_config("tiny.py")
    carried = _as_written(reference_config_from_model(cfg))
    carried["_name_or_path"] = "kept"
    carried["visual_config"] = {"enable": False}
    del carried["flow_matching_config"]["cal_mel_mae"], carried["vocoder_config"]["split_overlap"]
    carried["flow_matching_config"]["note"] = "kept too"
    done = complete_reference_config(carried, cfg)
    assert key_problems(RELEASED_CONFIG, done) == []
    assert done["_name_or_path"] == "kept" and done["flow_matching_config"]["note"] == "kept too"
    assert done["flow_matching_config"]["cal_mel_mae"] is True and done["vocoder_config"]["split_overlap"] == 0.0
    assert done["visual_config"]["enable"] is False
    released = _as_written(RELEASED_CONFIG)
    assert complete_reference_config(released, _model_config("baichuan_audio_7b.py")) == released


def test_the_packaged_release_config_is_the_published_file():
    path = SHARED / "reference" / "released_config.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (set BAICHUAN_AUDIO_SHARED to the reference material)")
    assert json.loads(path.read_text()) == RELEASED_CONFIG
