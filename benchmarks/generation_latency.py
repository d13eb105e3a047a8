"""Speech generation latency on CPU: the package's decoding engine against the reference's loop.

Measured for the tiny config (``configs/tiny.py``) and a small one (an LLM of 1024 × 8 layers, the
released audio head geometry and codebooks), with random weights, in one run:

* **per audio frame**: the time to produce one more 8-codebook frame (LLM step + audio head +
  sampling + feeding the frame back), as (t(N frames) − t(N/5 frames)) / (N − N/5), so prompt
  processing cancels; **frames/s** and the **real-time factor** (compute seconds per second of
  speech; a frame is 80 ms) follow;
* **first audio chunk**: from the request to the first segment's 24 kHz audio in a speech-chat
  turn — a prompt, a first text segment, an audio segment, and that segment's waveform (RVQ
  decode, audio decoder, flow matching, vocoder; the same compiled waveform code on every side).

Sides, with the same model, weights, sampling parameters (the reference's chat audio settings:
temperature 0.5, top-k 5, top-p 0.85, repetition penalty 1.3) and per-row PRNG keys:

* ``engine``: the package — one compiled loop on device; the audio head runs incrementally (one
  depth position per codebook against a depth KV cache); the frame is fed back inside the loop;
  the host sees only finished segments;
* ``reference``: what the reference's generation loop does — a Python loop, one LLM step with a
  KV cache per token, the full audio head recomputed for each of the 8 codebooks, each choice
  brought to the host, executed op by op (JAX eager, layers unrolled: no compiled step);
* ``reference+jit``: the same loop with each model call and each sampling call compiled — to
  separate what compilation buys from what the incremental head and the on-device loop buy.

The EOS class of codebook 0 is suppressed so every run produces exactly the frames asked for.
Compilation is excluded (a warm-up run per side); runs of the sides are interleaved and the
median of ``--repeats`` is reported. Prints README table rows with the command.

    python benchmarks/generation_latency.py [--sizes tiny,small] [--frames 50] [--repeats 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from baichuan_audio_jax.config import ModelConfig, load_config  # noqa: E402
from baichuan_audio_jax.inference import interleave as il  # noqa: E402
from baichuan_audio_jax.inference.engine import DecodingEngine, PhaseSampling, Request  # noqa: E402
from baichuan_audio_jax.inference.sampling import SamplingArrays, SamplingParams, process_logits  # noqa: E402
from baichuan_audio_jax.inference.waveform import SpeechDecoder, codes_to_wave  # noqa: E402
from baichuan_audio_jax.layers.attention import KVCache  # noqa: E402
from baichuan_audio_jax.models.audio_llm import AudioLLM  # noqa: E402
from baichuan_audio_jax.models.pure import init_model, pure  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = "python benchmarks/generation_latency.py"
FRAME_SECONDS = 0.08
TEXT = SamplingParams(temperature=0.8, top_k=20, top_p=0.85, repetition_penalty=1.1)
AUDIO = SamplingParams(temperature=0.5, top_k=5, top_p=0.85, repetition_penalty=1.3)
PROMPT_TOKENS = 48
TEXT_TOKENS = 16


def config(size: str) -> ModelConfig:
    tiny = ModelConfig.from_config(load_config(os.path.join(REPO, "configs", "tiny.py")).model)
    if size == "tiny":
        return tiny
    if size == "small":
        llm = dataclasses.replace(tiny.llm, vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_layers=8,
                                  num_heads=16, num_kv_heads=4, head_dim=64, max_position_embeddings=2048)
        tokens = dataclasses.replace(tiny.tokens, **{f.name: getattr(tiny.tokens, f.name) + 7680
                                                     for f in dataclasses.fields(tiny.tokens)
                                                     if getattr(tiny.tokens, f.name) >= 469})
        return dataclasses.replace(tiny, llm=llm, tokens=tokens,
                                   audio_head=dataclasses.replace(tiny.audio_head, num_layers=3),
                                   vq_bridge=dataclasses.replace(tiny.vq_bridge,
                                                                 codebook_sizes=ModelConfig().codebook_sizes))
    raise ValueError(f"unknown size {size!r}")


def build(cfg: ModelConfig, seed: int = 0):
    llm = init_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(seed)))
    bias = llm.audio_head.heads[0].bias
    bias[...] = bias[...].at[-1].set(-1e4)  # no EOS: every run makes the frames asked for
    return llm


def speech_decoder(cfg: ModelConfig) -> SpeechDecoder:
    from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
    from baichuan_audio_jax.models.flow_matching import FlowMatchingDecoder
    from baichuan_audio_jax.models.hift import HiFTGenerator

    return SpeechDecoder(AudioTokenizerRuntime.random(cfg, batch_size=1),
                       init_model(lambda: FlowMatchingDecoder(cfg, rngs=nnx.Rngs(1))),
                       init_model(lambda: HiFTGenerator(cfg.vocoder, rngs=nnx.Rngs(2))))


# ----------------------------------------------------------------------------- the reference's loop

class ReferenceLoop:
    """The reference's generation loop (spec §6.4): per token one cached LLM step; per frame the
    full audio head 8 times; every choice brought to the host."""

    def __init__(self, llm: AudioLLM, compiled: bool):
        cfg = dataclasses.replace(llm.cfg, scan_layers=False)  # op by op: layers unrolled
        graphdef = nnx.split(nnx.eval_shape(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0))))[0]
        self.model = nnx.merge(graphdef, nnx.state(llm))
        self.cfg = cfg
        fwd, state = pure(self.model)
        head, _ = pure(self.model, "audio_logits")
        logits, _ = pure(self.model, "logits")

        def step(state, ids, codes, positions, mask, cache, index):
            out = fwd(state, ids, codes, positions=positions, attention_mask=mask, cache=cache, cache_index=index,
                      compute_logits=False)
            return out.hidden[:, -1], out.cache

        def choose(key, scores, params, history, valid):
            greedy, sampled = process_logits(scores, params, history, valid)
            return jax.random.categorical(key, sampled[0])

        self.state = state
        self.step = jax.jit(step) if compiled else step
        self.head = jax.jit(head) if compiled else head
        self.text_logits = jax.jit(logits) if compiled else logits
        self.choose = jax.jit(choose) if compiled else choose

    def generate(self, prompt: np.ndarray, text_tokens: int, frames: int, seed: int,
                 on_segment=None) -> list[np.ndarray]:
        cfg, t = self.cfg, self.cfg.tokens
        size = 1 << int(np.ceil(np.log2(len(prompt) + text_tokens + frames + 2)))
        c = cfg.llm
        cache = KVCache(*(jnp.zeros((c.num_layers, 1, size, c.num_kv_heads, c.head_dim), jnp.float32)
                          for _ in range(2)))
        ids = np.zeros((1, size), np.int32)
        mask = np.zeros((1, size), np.int32)
        n = len(prompt)
        ids[0, :n], mask[0, :n] = prompt, 1
        key = jax.random.key(seed)
        text = SamplingArrays(*(jnp.asarray(a) for a in SamplingArrays.stack([TEXT])))
        audio = SamplingArrays(*(jnp.asarray(a) for a in SamplingArrays.stack([AUDIO])))
        hidden, cache = self.step(self.state, jnp.asarray(ids[:, :n]), jnp.zeros((1, n, 8), jnp.int32),
                                  jnp.arange(1, n + 1)[None], jnp.asarray(mask), cache, 0)
        for _ in range(text_tokens):  # text segment (HF generate: one cached step per token)
            scores = self.text_logits(self.state, hidden[:, None])[:, 0]
            key, k = jax.random.split(key)
            tok = int(self.choose(k, scores, text, jnp.asarray(ids), jnp.asarray(mask.astype(bool))))
            ids[0, n], mask[0, n] = tok, 1
            hidden, cache = self.step(self.state, jnp.asarray([[tok]]), jnp.zeros((1, 1, 8), jnp.int32),
                                      jnp.asarray([[n + 1]]), jnp.asarray(mask), cache, n)
            n += 1
        if text_tokens:  # the last text token is overwritten by <audiogen_start> and fed
            ids[0, n - 1] = t.audiogen_start_token_id
        out = []
        sizes = cfg.codebook_sizes
        for f in range(frames):
            codes = np.zeros(8, np.int32)
            for i in range(8):  # the full head for every codebook
                logits = self.head(self.state, hidden, jnp.asarray(codes[None]))[i]
                if i:
                    logits = logits[:, :sizes[i]]
                hist = np.asarray([fr[i] for fr in out] or [0], np.int32)[None]
                key, k = jax.random.split(key)
                valid = jnp.asarray([[bool(out)] * hist.shape[1]])
                codes[i] = int(self.choose(k, logits, audio, jnp.asarray(hist), valid))
            out.append(codes)
            ids[0, n], mask[0, n] = t.audio_pad_token_id, 1
            hidden, cache = self.step(self.state, jnp.asarray([[t.audio_pad_token_id]]), jnp.asarray(codes[None, None]),
                                      jnp.asarray([[n + 1]]), jnp.asarray(mask), cache, n)
            n += 1
        segment = np.stack(out)
        if on_segment is not None:
            on_segment(segment)
        return [segment]


# ----------------------------------------------------------------------------- measurements

def engine_run(engine: DecodingEngine, prompt, text_tokens, frames, seed, on_segment=None):
    protocol = il.Protocol(text=text_tokens > 0, speech=True, first_text_max_tokens=max(text_tokens, 1),
                           audio_max_frames=frames, later_stop_strings=())
    start = "text" if text_tokens else "audio"
    p = prompt if text_tokens else np.concatenate([prompt, [engine.cfg.tokens.audiogen_start_token_id]])
    req = Request(p.astype(np.int32), start=start, sampling=PhaseSampling(TEXT, TEXT, AUDIO), seed=seed,
                  max_new_tokens=text_tokens + frames)
    return engine.generate([req], protocol, on_segment=None if on_segment is None else lambda r, c: on_segment(c))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(size: str, frames: int, repeats: int) -> list[dict]:
    cfg = config(size)
    llm = build(cfg)
    speech = speech_decoder(cfg)
    engine = DecodingEngine(llm)
    sides = {"engine": None, "reference": ReferenceLoop(llm, compiled=False),
             "reference+jit": ReferenceLoop(llm, compiled=True)}
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 400, PROMPT_TOKENS).astype(np.int32)
    key = jax.random.key(0)

    def to_wave(codes):
        return codes_to_wave(speech, codes, key=key)

    short = max(2, frames // 5)

    def run(side, text_tokens, n, on_segment=None):
        if side == "engine":
            return engine_run(engine, prompt, text_tokens, n, 1, on_segment)
        return sides[side].generate(prompt, text_tokens, n, 1, on_segment)

    first_frames = min(frames, 25)
    for side in sides:  # warm-up: compile everything each side uses
        run(side, 0, frames)
        run(side, 0, short)
        run(side, TEXT_TOKENS, first_frames, to_wave)
    times = {s: {"long": [], "short": [], "first": []} for s in sides}
    for _ in range(repeats):
        for side in sides:
            times[side]["long"].append(timed(lambda: run(side, 0, frames)))
            times[side]["short"].append(timed(lambda: run(side, 0, short)))
            t0, stamps = time.perf_counter(), []

            def on_segment(codes):
                if not stamps:
                    to_wave(codes)  # the first chunk's audio
                    stamps.append(time.perf_counter() - t0)

            run(side, TEXT_TOKENS, first_frames, on_segment)
            times[side]["first"].append(stamps[0])
    rows = []
    for side in sides:
        long, short_t = statistics.median(times[side]["long"]), statistics.median(times[side]["short"])
        per_frame = (long - short_t) / (frames - short)
        rows.append(dict(size=size, side=side, per_frame_ms=per_frame * 1e3, frames_per_s=1 / per_frame,
                         rtf=per_frame / FRAME_SECONDS, first_chunk_s=statistics.median(times[side]["first"])))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
          f"{args.frames} frames, prompt {PROMPT_TOKENS} tokens, first chunk after {TEXT_TOKENS} text tokens + "
          f"{min(args.frames, 25)} frames + waveform; median of {args.repeats}")
    table = []
    for size in args.sizes.split(","):
        rows = measure(size, args.frames, args.repeats)
        base = {r["side"]: r for r in rows}
        for r in rows:
            speed = base["reference"]["per_frame_ms"] / r["per_frame_ms"]
            first = base["reference"]["first_chunk_s"] / r["first_chunk_s"]
            print(f"{size:6s} {r['side']:14s} {r['per_frame_ms']:9.2f} ms/frame  {r['frames_per_s']:8.1f} frames/s  "
                  f"RTF {r['rtf']:7.3f}  first chunk {r['first_chunk_s']:6.2f} s   x{speed:6.1f} per frame, "
                  f"x{first:5.1f} first chunk vs reference")
            table.append(f"| {size} | {r['side']} | {r['per_frame_ms']:.2f} ms ({r['frames_per_s']:.0f} frames/s) | "
                         f"{r['rtf']:.3f} | {r['first_chunk_s']:.2f} s | ×{speed:.1f} / ×{first:.1f} | `{COMMAND}` |")
    print("\nREADME rows (size | side | per frame | RTF | first audio chunk | speed-up vs reference per frame / "
          "first chunk | command):")
    print("\n".join(table))


if __name__ == "__main__":
    main()
