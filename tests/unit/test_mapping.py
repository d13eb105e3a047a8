"""Mapping tables: exact round trips and the real (7B) shapes of the LLM and audio head.

Round trips run on a random tiny model's tensors and (when the fixtures are present, marked
``parity``) on the reference's own."""
import json

import numpy as np
import pytest
from conftest import REPO
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, load_config
from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import (
    MappingError,
    check_coverage,
    combine_tables,
    export_tensors,
    state_shapes,
)
from baichuan_audio_jax.conversion.tables import audio_embed_table, audio_head_table, llm_table
from baichuan_audio_jax.models.audio_llm import AudioLLM


def _tables(cfg):
    return combine_tables(llm_table(cfg), audio_embed_table(cfg), audio_head_table(cfg))


@pytest.fixture(scope="module", params=["random", pytest.param("reference", marks=pytest.mark.parity)])
def llm_weights(request, tiny_config):
    """(config, reference-layout tensors of the LLM, audio embeddings and audio head)."""
    if request.param == "reference":
        fixture_set = request.getfixturevalue("fixture_set")
        return fixture_set.model_config, {**fixture_set.component("omni_lm").weights,
                                          **fixture_set.component("audio_head").weights}
    model = AudioLLM(tiny_config, rngs=nnx.Rngs(5))
    return tiny_config, dict(export_tensors(nnx.state(model), _tables(tiny_config)))


def test_round_trip_is_bit_exact(llm_weights):
    cfg, src = llm_weights
    model, unused = load_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)), _tables(cfg), src)
    out = dict(export_tensors(nnx.state(model), _tables(cfg), unused))
    assert sorted(out) == sorted(src)
    for k, v in src.items():
        assert out[k].shape == v.shape and np.array_equal(out[k], v), k


def test_real_model_shapes_match_the_reference_layout(parity_dir):
    real = json.loads((parity_dir / "real_config_shapes.json").read_text())["omni_state_dict"]
    cfg = ModelConfig.from_config(load_config(REPO / "configs" / "baichuan_audio_7b.py").model)
    abstract = nnx.eval_shape(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)))
    prefixes = ("model.", "lm_head.", "audio_head.")
    source = {k: tuple(v["shape"]) for k, v in real.items() if k.startswith(prefixes)}
    report = check_coverage(_tables(cfg), state_shapes(nnx.state(abstract)), source)
    assert report.ok, (report.missing[:5], report.unknown[:5], report.mismatched[:5])
    assert len(report.mapped) == len(source) == 1 + 224 + 1 + 8 + 47 + 1


def test_wrong_shapes_and_missing_keys_are_named(llm_weights):
    cfg, weights = llm_weights
    src = {k: v for k, v in weights.items() if not k.startswith("audio_head.")}
    make = lambda: AudioLLM(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    tables = combine_tables(llm_table(cfg), audio_embed_table(cfg))
    bad = dict(src, **{"model.norm.weight": np.zeros(3, np.float32)})
    with pytest.raises(MappingError, match=r"model\.norm\.weight: shape \(3,\)"):
        load_model(make, tables, bad, allow_uncovered=True)
    missing = {k: v for k, v in src.items() if k != "lm_head.weight"}
    with pytest.raises(MappingError, match="lm_head.weight"):
        load_model(make, tables, missing, allow_uncovered=True)
    with pytest.raises(MappingError, match="not in any mapping table"):
        load_model(make, tables, dict(src, extra=np.zeros(1)), allow_uncovered=True)
