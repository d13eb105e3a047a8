"""The data-source registry and the synthetic source (layout, determinism, host split, resume)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from training_helpers import tiny_run_config

from baichuan_audio_jax.batch import validate_batch
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.training.data_sources import available, build_iterator


def test_synthetic_batches_follow_the_layout_and_protocol():
    config = tiny_run_config("data.seq_len=64", "data.batch_size=4")
    mc = ModelConfig.from_config(config.model)
    batch = next(build_iterator(config))
    validate_batch(batch, vocab_size=mc.llm.vocab_size, codebook_sizes=mc.codebook_sizes)
    ids, tok = batch["input_ids"], mc.tokens
    pad = ids == tok.audio_pad_token_id
    assert pad.any() and (batch["segment_ids"] == 2).any()  # audio frames and packed segments
    # Codes only at audio frames, targets = next frame's codes, EOS frame after the last frame.
    assert not batch["audio_codes"][~pad].any()
    aw, at = batch["audio_weights"], batch["audio_targets"]
    for r in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if pad[r, t + 1]:
                assert aw[r, t].all() and (at[r, t] == batch["audio_codes"][r, t + 1]).all()
            elif pad[r, t]:
                assert aw[r, t, 0] == 1 and not aw[r, t, 1:].any()
                assert (at[r, t] == np.asarray(mc.codebook_sizes)).all()
            else:
                assert not aw[r, t].any()
    # Text loss never crosses a segment boundary or predicts an audio frame.
    seg = batch["segment_ids"]
    w = batch["text_weights"][:, :-1] > 0
    assert (seg[:, :-1][w] == seg[:, 1:][w]).all() and not pad[:, 1:][w].any()
    assert (batch["text_targets"][:, :-1][w] == ids[:, 1:][w]).all()
    # Positions restart in every segment.
    starts = np.diff(seg, axis=1, prepend=0) != 0
    assert (batch["positions"][starts & (seg > 0)] == 0).all()


def test_synthetic_is_deterministic_split_over_hosts_and_resumable():
    config = tiny_run_config()
    whole = build_iterator(config)
    first = [next(whole) for _ in range(3)]
    # Two hosts get disjoint halves that reassemble the single-host batch.
    hosts = [build_iterator(config, process_index=i, process_count=2) for i in range(2)]
    for b in first:
        parts = [next(h) for h in hosts]
        for k in b:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), b[k])
    # get_state/set_state (through JSON) resumes the exact sequence.
    again = build_iterator(config)
    next(again)
    state = json.loads(json.dumps(again.get_state()))
    resumed = build_iterator(config)
    resumed.set_state(state)
    for b in first[1:]:
        nb = next(resumed)
        for k in b:
            np.testing.assert_array_equal(nb[k], b[k])
    other = next(build_iterator(tiny_run_config("data.seed=7")))
    assert not np.array_equal(other["input_ids"], first[0]["input_ids"])


def test_unknown_source_and_bad_split_are_named():
    with pytest.raises(ValueError, match="unknown data.source 'nope'"):
        build_iterator(tiny_run_config("data.source=nope"))
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by the 3 processes"):
        build_iterator(tiny_run_config(), process_index=0, process_count=3)
    assert {"synthetic", "grain"} <= set(available())


def test_bad_host_batches_are_named():
    from baichuan_audio_jax.training.tasks import AUDIO_LLM, check_batch_fields

    config = tiny_run_config()
    mc = ModelConfig.from_config(config.model)
    batch = next(build_iterator(config))
    check_batch_fields(AUDIO_LLM, batch, 8, 32, model_cfg=mc)
    with pytest.raises(ValueError, match="field 'positions': shape"):
        check_batch_fields(AUDIO_LLM, {**batch, "positions": batch["positions"][:, :-1]}, 8, 32)
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['audio_weights'\]"):
        check_batch_fields(AUDIO_LLM, {k: v for k, v in batch.items() if k != "audio_weights"}, 8, 32)
    bad = dict(batch, input_ids=batch["input_ids"].copy())
    bad["input_ids"][0, 0] = mc.llm.vocab_size
    with pytest.raises(ValueError, match="batch 3: field input_ids: token id out of range"):
        check_batch_fields(AUDIO_LLM, bad, 8, 32, where="batch 3", model_cfg=mc)
