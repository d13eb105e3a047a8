"""The sharded train step: equality across meshes and microbatching, stage-wise freezing, losses."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_helpers import tiny_run_config

from baichuan_audio_jax.sharding import make_mesh
from baichuan_audio_jax.training.data_sources import build_iterator
from baichuan_audio_jax.training.mesh import mesh_from_config
from baichuan_audio_jax.training.optimizer import FROZEN, TRAIN
from baichuan_audio_jax.training.tasks import path_tree
from baichuan_audio_jax.training.train_step import build_program

STEPS = 2


def _batches(config, n):
    it = build_iterator(config)
    return [next(it) for _ in range(n)]


def _run(config, mesh, batches):
    program = build_program(config, mesh)
    state = program.init()
    initial = jax.device_get(state.params)
    losses = []
    for b in batches:
        state, metrics = program.step(state, {k: jax.device_put(v, program.batch_shardings[k]) for k, v in b.items()})
        losses.append(jax.device_get(metrics))
    return program, initial, jax.device_get(state), losses


def _leaves(tree):
    return jax.tree.leaves(tree)


def _assert_params_close(ref_params, params, steps=STEPS, lr=1e-3):
    """Parameters agree to 1e-6 absolute (they move ~1e-3 per step). Exception: attention key
    biases, whose gradient is exactly zero in exact arithmetic (a key bias adds the same q·b to
    every score of a query, and softmax ignores it). Their float32 gradient is rounding noise
    that Adam normalises into steps of up to ``lr`` in *any* implementation, so the two
    programs cannot be compared there; they are only held to Adam's bound (|p| ≤ lr per step
    from their zero initialisation)."""
    for path, ref, got in zip(_leaves(path_tree(ref_params, "llm")), _leaves(ref_params), _leaves(params)):
        if path.endswith("attn/k_proj/bias"):
            bound = 1.01 * lr * steps
            assert np.max(np.abs(ref)) <= bound and np.max(np.abs(got)) <= bound, path
        else:
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6, err_msg=path)


@pytest.fixture(scope="module")
def stage2_single():
    config = tiny_run_config("stage=2")
    batches = _batches(config, STEPS)
    return config, batches, _run(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), batches)


def test_sharded_microbatched_step_equals_single_device(stage2_single):
    """8-device mesh (data 2 × fsdp 2 × tensor 2) with the batch split into 2 accumulated
    microbatches vs one device with the whole batch, two steps of stage 2.

    Tolerance: losses and gradient norms agree to 2e-6 relative, parameters to 1e-6 absolute
    (see ``_assert_params_close`` for the zero-gradient key biases). Only the order of float32
    sums differs between the two programs (all-reduces, sharded contractions, the microbatch
    sum; matmuls at 'highest' precision); the parameters move ~1e-3 per step here, so a real
    sharding or accumulation bug (wrong axis, missing reduction, wrong normaliser) shows up
    many orders above these bounds.
    """
    config, batches, (_, _, single_state, single_losses) = stage2_single
    sharded = tiny_run_config("stage=2", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "train.grad_accum_steps=2")
    mesh = mesh_from_config(sharded.mesh)
    assert mesh.size == 8
    program, _, state, losses = _run(sharded, mesh, batches)
    spec = program.state_shardings.params["layers"]["mlp"]["gate_proj"]["kernel"].spec
    assert tuple(spec) == (None, "fsdp", "tensor")  # the rules table is really applied
    for ref, got in zip(single_losses, losses):
        for k in ("loss", "text_loss", "audio_loss", "grad_norm"):
            np.testing.assert_allclose(got[k], ref[k], rtol=2e-6, err_msg=k)
    assert int(state.step) == STEPS
    _assert_params_close(single_state.params, state.params)


def _check_freezing(program, initial, state, expect_trainable):
    paths = _leaves(path_tree(initial, "llm"))
    labels = _leaves(program.labels)
    frozen_seen = trained_seen = 0
    for path, lab, before, after in zip(paths, labels, _leaves(initial), _leaves(state.params)):
        assert lab == (TRAIN if expect_trainable(path) else FROZEN), path
        if lab == FROZEN:
            assert np.array_equal(before, after), f"frozen {path} changed"
            assert before.tobytes() == after.tobytes(), f"frozen {path} changed bits"
            frozen_seen += 1
        else:
            assert not np.array_equal(before, after), f"trainable {path} did not move"
            trained_seen += 1
    assert frozen_seen and trained_seen
    # No optimizer state for frozen leaves: the moments hold exactly the trainable parameters.
    inner = state.opt_state.inner_states
    assert _leaves(inner[FROZEN]) == []
    moments = sum(x.size for x in _leaves(inner[TRAIN]) if x.ndim > 0)
    trainable = sum(x.size for x, lab in zip(_leaves(initial), labels) if lab == TRAIN)
    assert moments == 2 * trainable


def test_stage2_freezes_text_embedding_and_lm_head(stage2_single):
    """Stage 2 (paper §3.3): everything trains except llm/embed_tokens and llm/lm_head, which
    stay bit-identical after two AdamW steps with weight decay."""
    _, _, (program, initial, state, _) = stage2_single
    _check_freezing(program, initial, state,
                    lambda p: not (p.startswith("llm/embed_tokens/") or p.startswith("llm/lm_head/")))


def test_stage1_trains_only_audio_embeddings_and_head():
    """Stage 1: only llm/audio_embed/* and llm/audio_head/* move; every LLM leaf is bit-identical."""
    config = tiny_run_config("stage=1")
    program, initial, state, losses = _run(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                                           _batches(config, STEPS))
    _check_freezing(program, initial, state,
                    lambda p: p.startswith("llm/audio_embed/") or p.startswith("llm/audio_head/"))
    assert "stage 1" in program.report() and "llm/audio_head" in program.report()


def test_losses_chunked_and_gathered_match_direct():
    """Text CE in chunks equals the one-shot CE, and the audio CE over gathered weighted
    positions equals the audio head run on every position (to 1e-5 relative, float32); a
    per-row maximum below the weighted count keeps the first positions and counts the excess."""
    from flax import nnx

    from baichuan_audio_jax.config import ModelConfig
    from baichuan_audio_jax.models.audio_llm import AudioLLM
    from baichuan_audio_jax.training.losses import (
        audio_llm_loss,
        cross_entropy,
        gather_audio_positions,
        loss_denominators,
    )

    config = tiny_run_config()
    model = AudioLLM(ModelConfig.from_config(config.model), rngs=nnx.Rngs(3))
    batch = {k: jnp.asarray(v) for k, v in _batches(config, 1)[0].items()}
    den = loss_denominators(batch)

    @jax.jit
    def direct(batch):
        out = model(batch["input_ids"], batch["audio_codes"], positions=batch["positions"],
                    segment_ids=batch["segment_ids"])
        text = jnp.sum(cross_entropy(out.logits, batch["text_targets"]) * batch["text_weights"])
        logits = model.audio_logits(out.hidden, batch["audio_targets"])
        audio = sum(jnp.sum(cross_entropy(lg, batch["audio_targets"][..., c]) * batch["audio_weights"][..., c])
                    for c, lg in enumerate(logits))
        return text / den["text"], audio / den["audio"]

    text_ref, audio_ref = direct(batch)
    fn = jax.jit(lambda b: audio_llm_loss(model, b, den, max_audio_positions=b["input_ids"].shape[1],
                                          loss_chunk_size=8))
    _, sums = fn(batch)
    np.testing.assert_allclose(sums["text_loss"], text_ref, rtol=1e-5)
    np.testing.assert_allclose(sums["audio_loss"], audio_ref, rtol=1e-5)
    assert float(sums["audio_positions_dropped"]) == 0
    # A per-row maximum below the weighted count keeps the first K positions and counts the rest.
    weighted = np.asarray(jnp.any(batch["audio_weights"] > 0, -1))
    k = int(weighted.sum(-1).min()) - 1
    idx, valid, dropped = gather_audio_positions(batch["audio_weights"], k)
    for r in range(weighted.shape[0]):
        np.testing.assert_array_equal(np.asarray(idx[r]), np.flatnonzero(weighted[r])[:k])
    assert np.asarray(valid).all() and int(dropped) == int(np.sum(weighted.sum(-1) - k))
