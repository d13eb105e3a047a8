"""bfloat16 decoding: weights and KV cache in bfloat16, classifiers and logits in float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, load_config
from baichuan_audio_jax.inference import interleave as il
from baichuan_audio_jax.inference.engine import DecodingEngine, Request, cast_for_decoding
from baichuan_audio_jax.models.audio_llm import AudioLLM
from baichuan_audio_jax.models.pure import init_model


@pytest.fixture(scope="module")
def llm():
    cfg = ModelConfig.from_config(load_config(str(REPO / "configs" / "tiny.py")).model)
    return init_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)))


def _leaves(model):
    return jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]


def test_cast_keeps_classifiers_float32_and_the_rest_bfloat16(llm):
    low = cast_for_decoding(llm, "bfloat16")
    assert low.cfg.dtype == "bfloat16" and low.cfg.param_dtype == "bfloat16"
    for path, x in _leaves(low):
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        classifier = keys[0] == "lm_head" or keys[:2] == ["audio_head", "heads"]
        assert x.dtype == (jnp.float32 if classifier else jnp.bfloat16), keys
    assert cast_for_decoding(llm, None) is llm
    assert cast_for_decoding(llm, "float32") is llm
    with pytest.raises(ValueError, match="float16"):
        cast_for_decoding(llm, "float16")


def test_bfloat16_forward_matches_float32_within_bfloat16_rounding(llm):
    low = cast_for_decoding(llm, "bfloat16")
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 400, (2, 24)), jnp.int32)
    hi = llm(ids).hidden
    lo = low(ids).hidden
    assert lo.dtype == jnp.bfloat16
    # 2 layers of bfloat16 (8-bit mantissa) matmuls on normalised activations: ~1e-2 relative.
    rel = float(jnp.linalg.norm(lo.astype(jnp.float32) - hi) / jnp.linalg.norm(hi))
    assert rel < 3e-2, rel
    logits = low.logits(lo)
    assert logits.dtype == jnp.float32


def test_engine_prefills_a_bfloat16_cache(llm):
    engine = DecodingEngine(llm, dtype="bfloat16")
    proto = il.Protocol(text=False, speech=True, audio_max_frames=4)
    prompt = np.asarray([5, 6, 7, llm.cfg.tokens.audiogen_start_token_id], np.int32)
    ds, _, _ = engine.start([Request(prompt, start="audio", max_new_tokens=4)], proto)
    assert ds.cache.k.dtype == jnp.bfloat16 and ds.cache.v.dtype == jnp.bfloat16
    assert bool(jnp.any(ds.cache.k[:, 0, :3] != 0))
