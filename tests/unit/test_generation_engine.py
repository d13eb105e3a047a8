"""Properties of the decoding engine on a tiny LM, with random weights and (when the fixtures are
present, marked ``parity``) with the fixture set's reference weights.

* sampling is deterministic given a seed;
* rows batched together stop independently and produce exactly what they produce alone (left
  padding, per-row positions and per-row PRNG keys make a row independent of its neighbours;
  the only coupling is float32 rounding of reductions over differently padded caches, far below
  what changes a choice here);
* limits stop rows cleanly and say why; bad requests are refused naming the problem;
* one compiled decode loop serves every protocol for a given batch and cache size.
"""
import dataclasses

import numpy as np
import pytest
from flax import nnx
from generation_helpers import fixture_config, llm, synthetic_token_strings

from baichuan_audio_jax.inference import interleave as il
from baichuan_audio_jax.inference.engine import DecodingEngine, PhaseSampling, Request
from baichuan_audio_jax.inference.sampling import SamplingParams
from baichuan_audio_jax.models.audio_llm import AudioLLM

CHAT = PhaseSampling(SamplingParams(temperature=0.8, top_k=20, top_p=0.85, repetition_penalty=1.1),
                     SamplingParams(temperature=0.3, top_k=20, top_p=0.85, repetition_penalty=1.05),
                     SamplingParams(temperature=0.5, top_k=5, top_p=0.85, repetition_penalty=1.3))
GREEDY = PhaseSampling(*(SamplingParams(do_sample=False, repetition_penalty=1.3),) * 3)
SPEECH = il.Protocol(text=True, speech=True, first_text_max_tokens=6, later_text_max_tokens=8, audio_max_frames=6,
                     max_rounds=3, later_stop_strings=il.SPEECH_STOP_STRINGS)
TEXT = il.Protocol(text=True, speech=False, first_text_max_tokens=40, audio_max_frames=6)
SPEAK = il.Protocol(text=False, speech=True, audio_max_frames=6)


@pytest.fixture(scope="module", params=["random", pytest.param("reference", marks=pytest.mark.parity)])
def engine(request, tiny_config):
    if request.param == "reference":
        parity_dir = str(request.getfixturevalue("parity_dir"))
        cfg = fixture_config(parity_dir)
        model = llm(parity_dir, cfg)
    else:
        cfg, model = tiny_config, AudioLLM(tiny_config, rngs=nnx.Rngs(0))
    return DecodingEngine(model, token_strings=synthetic_token_strings(cfg.llm.vocab_size))


def same(a, b):
    return (a.text_tokens == b.text_tokens and len(a.segments) == len(b.segments)
            and all(np.array_equal(x, y) for x, y in zip(a.segments, b.segments))
            and a.finish_reason == b.finish_reason and a.new_tokens == b.new_tokens)


def test_sampling_is_deterministic_given_a_seed(engine):
    req = Request(np.asarray([11, 43, 88, 120, 301]), sampling=CHAT, seed=7, max_new_tokens=60)
    a, b = engine.generate([req], SPEECH)[0], engine.generate([req], SPEECH)[0]
    c = engine.generate([dataclasses.replace(req, seed=8)], SPEECH)[0]
    assert same(a, b)
    assert not same(a, c)
    assert a.segments and a.text_tokens


def test_batched_rows_stop_independently_and_equal_rows_run_alone(engine):
    requests = [
        Request(np.asarray([11, 43, 88, 120, 301]), sampling=CHAT, seed=1, max_new_tokens=70),
        Request(np.asarray([7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]), sampling=GREEDY, seed=2, max_new_tokens=23),
    ]
    batched = engine.generate(requests, SPEECH)
    alone = [engine.generate([r], SPEECH)[0] for r in requests]
    for i, (b, a) in enumerate(zip(batched, alone)):
        assert same(b, a), f"row {i} differs when batched"
        np.testing.assert_array_equal(b.sequence, a.sequence)
    assert batched[0].new_tokens > 23 and batched[0].segments  # it went on after row 1 stopped
    assert batched[1].finish_reason == "length" and batched[1].new_tokens == 23


def test_speech_rows_with_text_pieces_batch_like_alone(engine):
    """Text-to-speech rows append their next piece when a segment ends, at different times."""
    ags = engine.cfg.tokens.audiogen_start_token_id
    requests = [
        Request(np.asarray([21, 22, 23, ags]), start="audio", sampling=GREEDY, max_new_tokens=40,
                continuations=[np.asarray([31, 32, ags]), np.asarray([41, 42, 43, 44, ags])]),
        Request(np.asarray([51, 52, 53, 54, 55, 56, ags]), start="audio", sampling=CHAT, seed=4, max_new_tokens=40,
                continuations=[np.asarray([61, ags])]),
    ]
    batched = engine.generate(requests, SPEAK)
    for i, r in enumerate(requests):
        alone = engine.generate([r], SPEAK)[0]
        assert same(batched[i], alone), f"row {i} differs when batched"
        np.testing.assert_array_equal(batched[i].sequence, alone.sequence)
    assert [len(r.segments) for r in batched] == [3, 2]
    # The unfed <audio_pad> after each segment became <audiogen_end>, followed by the next piece.
    seq = batched[1].sequence.tolist()
    i = seq.index(engine.cfg.tokens.audiogen_end_token_id)
    assert seq[i + 1:i + 3] == [61, ags]


def test_length_limit_stops_cleanly_in_text_and_in_audio(engine):
    prompt = np.asarray([11, 43, 88, 120, 301])
    text_row = engine.generate([Request(prompt, sampling=GREEDY, max_new_tokens=3)], SPEECH)[0]
    assert text_row.finish_reason == "length" and text_row.new_tokens == 3 and len(text_row.text_tokens) == 3
    assert not text_row.segments
    audio_row = engine.generate([Request(prompt, sampling=GREEDY, max_new_tokens=9)], SPEECH)[0]
    assert audio_row.finish_reason == "length" and audio_row.new_tokens == 9
    # 6 text tokens, then 3 frames of a segment in progress: kept, not dropped.
    assert len(audio_row.text_tokens) == 6 and [len(s) for s in audio_row.segments] == [3]
    text_only = engine.generate([Request(prompt, sampling=GREEDY, max_new_tokens=100)], TEXT)[0]
    assert text_only.finish_reason in ("length", "eos") and not text_only.segments
    if text_only.finish_reason == "length":
        assert len(text_only.text_tokens) == TEXT.first_text_max_tokens


def test_context_limits(engine):
    small = DecodingEngine(nnx.merge(engine.graphdef, engine.state), max_context=128)
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        small.generate([Request(np.arange(3, 131))], TEXT)
    # 111 prompt tokens: the new-token limit shrinks to what the context holds (the prompt is
    # prefilled unpadded to leave room), and the row stops there cleanly.
    row = small.generate([Request(np.arange(3, 114), sampling=GREEDY, max_new_tokens=500)], TEXT)[0]
    assert row.budget == 128 - 110 and row.new_tokens <= row.budget and len(row.sequence) <= 128
    assert row.finish_reason in ("length", "eos")


def test_bad_requests_name_the_problem(engine):
    vocab = engine.cfg.llm.vocab_size
    with pytest.raises(ValueError, match=f"request 1: token id {vocab + 5} is outside"):
        engine.generate([Request(np.asarray([3, 4])), Request(np.asarray([3, vocab + 5]))], TEXT)
    with pytest.raises(ValueError, match="prompt_codes must be"):
        engine.generate([Request(np.asarray([3, 4]), np.zeros((3, 8), np.int32))], TEXT)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([Request(np.asarray([], np.int32))], TEXT)
    with pytest.raises(ValueError, match="must end with <audiogen_start>"):
        engine.generate([Request(np.asarray([3, 4]), start="audio", continuations=[np.asarray([5])])], SPEAK)


def test_one_compiled_loop_serves_every_protocol(engine):
    """Protocol values are data: text-only, interleaved and speech-only rows of one batch and
    cache size run the same compiled program."""
    from baichuan_audio_jax.inference.engine import _run_jit

    prompt = np.asarray([11, 43, 88, 120, 301])
    engine.compiled.clear()
    before = _run_jit._cache_size()
    for protocol in (TEXT, SPEECH, SPEAK, dataclasses.replace(SPEECH, first_text_max_tokens=3, max_rounds=1)):
        engine.generate([Request(prompt, start="text" if protocol.text else "audio", sampling=GREEDY,
                                 max_new_tokens=30)], protocol)
    assert {c for c in engine.compiled if c[0] == "run"} == {("run", 1, 128, 16)}
    assert _run_jit._cache_size() - before <= 1


def test_decoding_on_a_device_mesh_matches_one_device(engine):
    """Parameters and the KV cache sharded over data × fsdp × tensor (8 CPU devices): the same
    choices as on one device (greedy; sharded reductions differ only at float32 rounding)."""
    import jax

    from baichuan_audio_jax.sharding import make_mesh

    assert len(jax.devices()) >= 8, "conftest provides 8 CPU devices"
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = DecodingEngine(nnx.merge(engine.graphdef, engine.state), token_strings=engine.token_strings, mesh=mesh)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded.state)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
    requests = [Request(np.asarray([11, 43, 88, 120, 301]), sampling=GREEDY, max_new_tokens=40),
                Request(np.asarray([7, 8, 9]), sampling=GREEDY, max_new_tokens=30)]
    for a, b in zip(sharded.generate(requests, SPEECH), engine.generate(requests, SPEECH)):
        assert same(a, b)


def test_unstacked_layers_decode_like_the_stacked_stack(tiny_config):
    """The CPU layout (every layer and depth-FFN position with its own arrays, layers unrolled)
    makes the same choices as the scanned stack, sampling included, and leaves the caller's
    model stacked."""
    model = AudioLLM(tiny_config, rngs=nnx.Rngs(3))
    strings = synthetic_token_strings(tiny_config.llm.vocab_size)
    stacked, unstacked = (DecodingEngine(model, token_strings=strings, unstack_layers=u) for u in (False, True))
    assert not isinstance(model.layers, nnx.List)
    reqs = [Request(np.arange(3, 12, dtype=np.int32), start="text", sampling=CHAT, seed=5, max_new_tokens=24),
            Request(np.arange(5, 9, dtype=np.int32), start="audio", sampling=CHAT, seed=6, max_new_tokens=10)]
    for protocol in (SPEECH, SPEAK):
        a, b = stacked.generate(reqs, protocol), unstacked.generate(reqs, protocol)
        assert all(same(x, y) for x, y in zip(a, b))
        assert sum(len(s) for r in a for s in r.segments) > 0
