"""Logits processors and stop strings against direct formulas (spec §6.4, §6.6).

The numpy references restate Hugging Face 4.45's processors: repetition penalty (score < 0 →
·p, else /p, each id once), temperature, top-k keeping ties at the k-th value, top-p removing
ascending entries whose cumulative probability is ≤ 1 − p but never the top one. Filtering is
exact (same -inf pattern, values to float32 rounding: 1e-6 relative); sampled frequencies must be
within 4 standard errors of the filtered softmax.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baichuan_audio_jax.inference.sampling import SamplingArrays, SamplingParams, process_logits, select_tokens
from baichuan_audio_jax.inference.stop_strings import advance, build_stop_tables, fires, fires_on_text, initial_state


def np_penalty(scores, history, p):
    s = scores.copy()
    for tok in set(history):
        s[tok] = s[tok] * p if s[tok] < 0 else s[tok] / p
    return s


def np_warp(scores, temperature, top_k, top_p):
    s = scores / temperature
    if top_k > 0:
        kth = np.sort(s)[::-1][min(top_k, len(s)) - 1]
        s = np.where(s < kth, -np.inf, s)
    if top_p < 1:
        order = np.argsort(s, kind="stable")
        sorted_s = s[order]
        e = np.exp(sorted_s - sorted_s.max())
        cum = np.cumsum(e / e.sum())
        remove = cum <= 1 - top_p
        remove[-1] = False
        s = s.copy()
        s[order[remove]] = -np.inf
    return s


def arrays(*params):
    return SamplingArrays(*(jnp.asarray(a) for a in SamplingArrays.stack(params)))


CASES = [
    SamplingParams(temperature=0.5, top_k=5, top_p=0.85, repetition_penalty=1.3),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.85, repetition_penalty=1.1),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.3, repetition_penalty=1.0),
    SamplingParams(temperature=2.0, top_k=3, top_p=1.0, repetition_penalty=0.7),
]


def test_processors_match_direct_formulas():
    rng = np.random.default_rng(0)
    v = 40
    logits = rng.normal(size=(len(CASES), v)).astype(np.float32) * 3
    logits[:, 7] = logits[:, 8] = logits[:, 9] = 0.25  # ties (and a tie at the top-k boundary below)
    logits[3] -= 20.0
    logits[3, [0, 1, 2, 3]] = [5.0, 4.0, 3.0, 3.0]
    history = rng.integers(0, v, size=(len(CASES), 12)).astype(np.int32)
    history[:, :3] = [7, 7, 11]  # duplicates count once
    valid = np.arange(12)[None, :] < np.asarray([12, 5, 9, 0])[:, None]
    greedy, sampled = process_logits(jnp.asarray(logits), arrays(*CASES), jnp.asarray(history), jnp.asarray(valid))
    for r, p in enumerate(CASES):
        pen = np_penalty(logits[r].astype(np.float64), history[r][valid[r]].tolist(), p.repetition_penalty)
        np.testing.assert_allclose(np.asarray(greedy[r]), pen, rtol=1e-6)
        want = np_warp(pen, p.temperature, p.top_k, p.top_p)
        got = np.asarray(sampled[r])
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"case {r}: kept set differs")
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)
    # top-k keeps every tie at the k-th value: case 3 keeps 4 entries for k = 3.
    assert np.isfinite(np.asarray(sampled[3])).sum() == 4
    # the penalty's sign rule: a negative score moves down, a positive one down too (÷).
    row = np.asarray(greedy[0])
    for tok in set(history[0].tolist()):
        assert row[tok] < logits[0, tok] or logits[0, tok] == 0


def test_top_p_always_keeps_the_most_probable_token():
    logits = jnp.asarray([[10.0, 0.0, -1.0, -2.0]])
    _, s = process_logits(logits, arrays(SamplingParams(top_p=0.01)))
    assert np.isfinite(np.asarray(s)).tolist() == [[True, False, False, False]]


def test_greedy_applies_only_the_repetition_penalty():
    logits = jnp.asarray([[2.0, 1.9, -3.0, 0.5]])
    history, valid = jnp.asarray([[0]]), jnp.asarray([[True]])
    greedy = SamplingParams(do_sample=False, temperature=0.1, top_k=1, top_p=0.1, repetition_penalty=1.2)
    tok = select_tokens(jax.random.key(0)[None], logits, arrays(greedy), history, valid)
    assert int(tok[0]) == 1  # 2.0 / 1.2 < 1.9


def test_draws_follow_the_filtered_distribution_and_depend_only_on_the_row_key():
    p = SamplingParams(temperature=0.7, top_k=4, top_p=0.9)
    logits = np.asarray([1.0, 0.5, 0.2, -0.3, 2.0, -1.0], np.float32)
    n = 20000
    keys = jax.random.split(jax.random.key(1), n)
    batch = jnp.broadcast_to(jnp.asarray(logits), (n, len(logits)))
    draws = np.asarray(jax.jit(select_tokens)(keys, batch, arrays(*[p] * n)))
    want = np_warp(logits.astype(np.float64), p.temperature, p.top_k, p.top_p)
    prob = np.exp(want - want[np.isfinite(want)].max())
    prob /= prob.sum()
    freq = np.bincount(draws, minlength=len(logits)) / n
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(prob))
    np.testing.assert_allclose(freq, prob, atol=4 * np.sqrt(0.25 / n))
    # A row's draw depends on its key and logits only, not on its neighbours.
    alone = select_tokens(keys[5:6], batch[5:6], arrays(p))
    assert int(alone[0]) == int(draws[5])


def test_sampling_params_reject_invalid_values():
    for bad in (dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(repetition_penalty=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    SamplingParams(do_sample=False, temperature=0.0)  # greedy ignores the temperature


# ----------------------------------------------------------------------------- stop strings

def run_automaton(stop_strings, strings, token_ids):
    tables = build_stop_tables(stop_strings, strings)
    state = initial_state(1, tables)
    fired = []
    for t in token_ids:
        tok = jnp.asarray([t])
        fired.append(bool(fires(state, tok, tables).any()))
        state = advance(state, tok, tables)
    return fired


def test_stop_strings_follow_the_overhang_rule():
    strings = ["st", "op", "stop", "opera", "sto", "pper", "las", "topper", "s", "to", "pped", "at", "ion", "x"]
    ix = {s: i for i, s in enumerate(strings)}
    hits = [["st", "op"], ["stop"], ["st", "opera"], ["sto", "pper"], ["las", "topper"], ["s", "to", "pped"]]
    misses = [["stop", "at"], ["st", "op", "at"], ["st", "op", "at", "ion"]]
    for seq in hits:
        assert run_automaton(["stop"], strings, [ix[t] for t in seq])[-1], seq
    for seq in misses:
        assert not run_automaton(["stop"], strings, [ix[t] for t in seq])[-1], seq


def test_stop_string_automaton_equals_the_text_rule():
    rng = np.random.default_rng(3)
    alphabet = list("ab. ，?")
    strings = sorted({"".join(rng.choice(alphabet, size=rng.integers(1, 4))) for _ in range(60)})
    stops = [". ", "，", "?", "ab."]
    for _ in range(30):
        seq = rng.integers(0, len(strings), size=12).tolist()
        got = run_automaton(stops, strings, seq)
        text, want = "", []
        for t in seq:
            want.append(fires_on_text(stops, text, strings[t]))
            text += strings[t]
        assert got == want, [strings[t] for t in seq]


def test_partial_sort_filter_equals_the_full_sort():
    """Rows with a small top_k are filtered from lax.top_k's candidates; the kept set must be the
    full sort's, ties at the k-th score and -inf classes included, and the program must not sort
    the whole vocabulary (the CPU backend keeps TopK as its own op)."""
    from baichuan_audio_jax.inference.sampling import TOP_K_FAST, _filter_sorted, apply_top_k_top_p

    fast, full = jax.jit(apply_top_k_top_p), jax.jit(_filter_sorted)  # one compile per vocabulary size
    rng = np.random.default_rng(1)
    for trial in range(60):
        b, v = 4, int(rng.choice([100, 513, 8193]))
        x = rng.normal(size=(b, v)).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x, 1)  # many ties, some at the k-th score
        if trial % 5 == 0:
            x[:, v // 2:] = -np.inf  # the padded classes of codebooks 1-7
        top_k = rng.integers(1, TOP_K_FAST + 8, b) if trial % 4 else rng.integers(0, 6, b)
        top_p = rng.choice([1.0, 0.85, 0.5, 0.1], b)
        args = (jnp.asarray(x), jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32))
        got, want = np.asarray(fast(*args)), np.asarray(full(*args))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"trial {trial}")
    hlo = jax.jit(apply_top_k_top_p).lower(jnp.zeros((1, 8193)), jnp.full((1,), 5, jnp.int32),
                                           jnp.full((1,), 0.85)).compile().as_text()
    if jax.default_backend() == "cpu":
        assert "TopK" in hlo
