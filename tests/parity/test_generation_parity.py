"""Greedy generation with the reference fixture weights equals a reference-protocol decode.

The reference decoder below is written from the spec (§6.4, §6.6, G2, G11), independently of the
package's engine: every step runs a FULL forward over the whole sequence so far (no KV cache;
1-based positions), the audio head is recomputed in full for each of the 8 codebooks with the
codes chosen so far (unfilled ones zero), codebooks ≥ 1 drop their EOS class, the repetition
penalty covers the whole sequence for text and the segment's history of the codebook for audio,
stop strings are checked on the decoded text, and the overwrite rules are applied to the
sequence. The engine (KV cache, compiled loop, incremental audio head) must choose exactly the
same token or code at every step, write the same text and audio segments, and feed exactly the
same sequence.

Bound: both sides compute in float32; cached and full forwards agree to ~1e-6 (see
test_audio_llm), so every arg-max must match unless two candidates are within that distance.
The reference records each choice's margin over the runner-up and the test requires ≥ 1e-4 —
a closer call would make the comparison ill-posed and is reported as such.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from generation_helpers import fixture_config, llm, synthetic_token_strings

from baichuan_audio_jax.inference import interleave as il
from baichuan_audio_jax.inference.engine import DecodingEngine, PhaseSampling, Request
from baichuan_audio_jax.inference.sampling import SamplingParams
from baichuan_audio_jax.models.audio_llm import AudioLLM

MARGIN = 1e-4
FULL_LEN = 160  # the reference decoder's fixed (right-padded) forward length


def with_eos_bias(model: AudioLLM, delta: float) -> AudioLLM:
    """A copy of the model whose codebook-0 classifier favours EOS by ``delta`` (random weights
    rarely end a segment; this makes some segments end by EOS)."""
    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, jax.tree.map(jnp.array, state))
    bias = m.audio_head.heads[0].bias
    bias[...] = bias[...].at[-1].add(delta)
    return m


@pytest.fixture(scope="module")
def lm(parity_dir):
    cfg = fixture_config(str(parity_dir))
    return cfg, llm(str(parity_dir), cfg)


class ReferenceDecoder:
    """Step-by-step greedy decoding by the reference protocol, with full forwards."""

    def __init__(self, cfg, model, strings):
        self.cfg, self.t, self.strings = cfg, cfg.tokens, strings
        self.sizes = cfg.codebook_sizes
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(state, ids, codes, n):
            m = nnx.merge(graphdef, state)
            positions = jnp.arange(1, ids.shape[1] + 1)[None]
            out = m(ids, codes, positions=positions)
            return out.logits[0, n - 1], out.hidden[0, n - 1]

        @jax.jit
        def head(state, hidden, codes):
            return nnx.merge(graphdef, state).audio_logits(hidden[None], codes[None])

        self.forward = lambda ids, codes: forward(state, *self._padded(ids, codes))
        self.head = lambda hidden, codes: [np.asarray(x[0]) for x in head(state, hidden, jnp.asarray(codes))]
        self.margins = []
        self.text_ends = []

    def _padded(self, ids, codes):
        n = len(ids)
        assert n <= FULL_LEN
        a = np.zeros((1, FULL_LEN), np.int32)
        c = np.zeros((1, FULL_LEN, 8), np.int32)
        a[0, :n], c[0, :n] = ids, codes
        return jnp.asarray(a), jnp.asarray(c), n

    def _argmax(self, scores, history, penalty):
        s = np.asarray(scores, np.float64).copy()
        for tok in set(int(h) for h in history):  # HF repetition penalty, each id once
            s[tok] = s[tok] * penalty if s[tok] < 0 else s[tok] / penalty
        best = int(np.argmax(s))
        self.margins.append(s[best] - np.max(np.delete(s, best)))
        return best

    # --- the two segment kinds

    def text_segment(self, max_new, stop_strings, penalty, budget):
        """HF generate with greedy search: returns ('eos'|'stop'|'limit'|'budget', tokens)."""
        why, n = self._text_segment(max_new, stop_strings, penalty, budget)
        self.text_ends.append(why)
        return why, n

    def _text_segment(self, max_new, stop_strings, penalty, budget):
        n = 0
        while True:
            logits, _ = self.forward(self.seq, self.codes)
            x = self._argmax(np.asarray(logits), self.seq, penalty)
            prev = "".join(self.strings[i] for i in self.seq)
            self.seq.append(x)
            self.codes.append(np.zeros(8, np.int32))
            self.text.append(x)
            self.steps += 1
            n += 1
            text = prev + self.strings[x]
            fired = any(text.find(s, max(0, len(prev) - len(s) + 1)) != -1 for s in stop_strings)
            if x == self.t.eos_token_id:
                return "eos", n
            if self.steps >= budget:
                return "budget", n
            if fired or (self.speech and x == self.t.audiogen_start_token_id):
                return "stop", n
            if n == max_new:
                return "limit", n

    def audio_segment(self, max_frames, penalty, budget):
        frames = []
        while True:
            _, hidden = self.forward(self.seq, self.codes)
            codes = np.zeros(8, np.int32)
            for i in range(8):
                logits = self.head(hidden, codes)[i]
                if i > 0:
                    logits = logits[:self.sizes[i]]
                codes[i] = self._argmax(logits, [f[i] for f in frames], penalty)
            self.seq.append(self.t.audio_pad_token_id)
            self.codes.append(codes.copy())
            self.steps += 1
            if codes[0] == self.sizes[0]:
                break
            frames.append(codes)
            if len(frames) == max_frames or self.steps >= budget:
                break
        self.segments.append(np.asarray(frames, np.int32).reshape(-1, 8))

    def start(self, prompt, speech):
        self.seq, self.codes = list(prompt), [np.zeros(8, np.int32) for _ in prompt]
        self.text, self.segments, self.steps, self.speech = [], [], 0, speech

    # --- the protocols

    def speech_chat(self, prompt, *, first_max, later_max, frames, rounds, stops, text_penalty, audio_penalty, budget):
        """§6.6: text segment, then rounds of (overwrite, audio, overwrite, text)."""
        self.start(prompt, True)
        why, n = self.text_segment(first_max, (), text_penalty, budget)
        for _ in range(rounds):
            if why == "budget":
                return "length"
            if why == "eos":
                if n > 1:
                    self.seq[-1] = self.t.audiogen_start_token_id
                    self.audio_segment(frames, audio_penalty, budget)
                    return "eos" if self.steps < budget else "length"
                return "eos"
            self.seq[-1] = self.t.audiogen_start_token_id  # G11: the chosen token is never fed
            self.audio_segment(frames, audio_penalty, budget)
            if self.steps >= budget:
                return "length"
            self.seq[-1] = self.t.audiogen_end_token_id  # G11: the unfed pad becomes <audiogen_end>
            why, n = self.text_segment(later_max, stops, text_penalty, budget)
        return {"eos": "eos", "budget": "length"}.get(why, "rounds")

    def tts(self, pieces, *, frames, penalty, budget):
        """Base TTS demo: audio for each piece; the unfed pad becomes <audiogen_end> before the next."""
        self.start(list(pieces[0]) + [self.t.audiogen_start_token_id], True)
        for k, piece in enumerate(pieces):
            if k:
                self.seq[-1] = self.t.audiogen_end_token_id
                self.seq += list(piece) + [self.t.audiogen_start_token_id]
                self.codes += [np.zeros(8, np.int32)] * (len(piece) + 1)
            self.audio_segment(frames, penalty, budget)
        return "eos"

    def transcribe(self, prompt_ids, prompt_codes, *, max_new, penalty):
        self.start(prompt_ids, False)
        self.codes = [np.asarray(c, np.int32) for c in prompt_codes]
        why, _ = self.text_segment(max_new, (), penalty, 10 ** 9)
        return {"eos": "eos", "limit": "length"}[why]


def greedy(penalty_text, penalty_audio):
    text = SamplingParams(do_sample=False, repetition_penalty=penalty_text)
    return PhaseSampling(text, text, SamplingParams(do_sample=False, repetition_penalty=penalty_audio))


def check(ref, result, reason):
    assert min(ref.margins) >= MARGIN, f"a reference choice is within {min(ref.margins):.2e} of the runner-up"
    assert result.text_tokens == ref.text
    assert len(result.segments) == len(ref.segments)
    for ours, theirs in zip(result.segments, ref.segments):
        np.testing.assert_array_equal(ours, theirs)
    assert result.finish_reason == reason
    fed = ref.seq[:-1]  # the last token chosen is never fed
    np.testing.assert_array_equal(result.sequence, fed)


def test_interleaved_speech_chat_matches_reference_protocol(lm):
    """Text → audio → text → … with both overwrite rules, stop strings, audio segments ending by
    EOS and by the frame limit, and the round limit."""
    cfg, model = lm
    strings = synthetic_token_strings(cfg.llm.vocab_size)
    stops = il.SPEECH_STOP_STRINGS
    prompt = [11, 43, 88, 120, 301, 17, 9]
    kw = dict(first_max=6, later_max=8, frames=6, rounds=4)
    protocol = il.Protocol(text=True, speech=True, first_text_max_tokens=kw["first_max"],
                           later_text_max_tokens=kw["later_max"], audio_max_frames=kw["frames"],
                           max_rounds=kw["rounds"], later_stop_strings=stops)
    request = Request(np.asarray(prompt), sampling=greedy(1.05, 1.3), max_new_tokens=300)
    # The smallest EOS bias with which a segment ends by EOS after at least one frame (chosen
    # with the engine; the comparison below is against the reference decoder).
    for delta in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        biased = with_eos_bias(model, delta)
        (result,) = DecodingEngine(biased, token_strings=strings).generate([request], protocol)
        if any(0 < len(s) < kw["frames"] for s in result.segments):
            break
    ref = ReferenceDecoder(cfg, biased, strings)
    reason = ref.speech_chat(prompt, stops=stops, text_penalty=1.05, audio_penalty=1.3, budget=10 ** 9, **kw)
    check(ref, result, reason)
    # The case exercises what it claims to.
    lengths = [len(s) for s in ref.segments]
    assert any(0 < n < kw["frames"] for n in lengths), f"no segment ended by EOS: {lengths}"
    assert "stop" in ref.text_ends[1:], f"no later text segment ended at a stop string: {ref.text_ends}"
    assert ref.t.audiogen_end_token_id in ref.seq and ref.t.audiogen_start_token_id in ref.seq


def test_text_to_speech_pieces_match_reference_protocol(lm):
    cfg, model = lm
    engine = DecodingEngine(model)
    pieces = [[21, 22, 23, 24], [31, 32, 33], [41, 42, 43, 44, 45]]
    ref = ReferenceDecoder(cfg, model, synthetic_token_strings(cfg.llm.vocab_size))
    reason = ref.tts(pieces, frames=7, penalty=1.3, budget=10 ** 9)
    ags = cfg.tokens.audiogen_start_token_id
    request = Request(np.asarray(pieces[0] + [ags]), start="audio", sampling=greedy(1.0, 1.3), max_new_tokens=100,
                      continuations=[np.asarray(p + [ags]) for p in pieces[1:]])
    (result,) = engine.generate([request], il.Protocol(text=False, speech=True, audio_max_frames=7))
    check(ref, result, reason)
    assert len(result.segments) == 3


def test_transcription_with_audio_prompt_matches_reference_protocol(lm, fixture_set):
    """A text-only row whose prompt holds input audio frames (codes from the fixture's VQ)."""
    cfg, model = lm
    t = cfg.tokens
    codes = fixture_set.component("vq_bridge").arrays["code_ids"][:12].astype(np.int32)
    ids = [5, 6, 7, t.audio_start_token_id] + [t.audio_pad_token_id] * len(codes) + [t.audio_end_token_id]
    aligned = np.zeros((len(ids), 8), np.int32)
    aligned[4:4 + len(codes)] = codes
    ref = ReferenceDecoder(cfg, model, synthetic_token_strings(cfg.llm.vocab_size))
    reason = ref.transcribe(ids, aligned, max_new=30, penalty=1.3)
    engine = DecodingEngine(model)
    (result,) = engine.generate([Request(np.asarray(ids), aligned, sampling=greedy(1.3, 1.0), max_new_tokens=30)],
                                il.Protocol(text=True, speech=False, first_text_max_tokens=30, first_stop_strings=()))
    check(ref, result, reason)
