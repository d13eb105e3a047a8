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

Decoding limits (``--dtypes``, ``--batches``), measured in the same run:

* **memory bandwidth**: a jitted sum over a 256 MiB float32 array (bytes read / s);
* **bytes of a frame**: the weights one audio frame reads (every LLM layer and the final norm
  once; the audio head's attention weights and norms once per codebook, its FFN slices and
  classifiers once; the embedding tables and the LM head are not read while speaking) in the
  decoding dtype — the frame time over (bytes / bandwidth) says how close decoding is to the
  memory-bandwidth limit;
* the per-frame time and rows × frames/s of the engine at each batch size in each dtype;
* **bfloat16 vs float32 greedy codes** over 24 frames: free running (one different code changes
  every later frame) and teacher forced (each frame predicted from the float32 frames before it).

    python benchmarks/generation_latency.py [--sizes tiny,small] [--frames 50] [--repeats 3]
        [--sides engine,reference,reference+jit] [--dtypes float32,bfloat16] [--batches 1,4,16]
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
from baichuan_audio_jax.models.audio_head import NUM_CODEBOOKS  # noqa: E402
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


def measure(size: str, frames: int, repeats: int, side_names=("engine", "reference", "reference+jit")
            ) -> list[dict]:
    cfg = config(size)
    llm = build(cfg)
    speech = speech_decoder(cfg)
    engine = DecodingEngine(llm)
    sides = {"engine": None, "reference": ReferenceLoop(llm, compiled=False),
             "reference+jit": ReferenceLoop(llm, compiled=True)}
    sides = {k: v for k, v in sides.items() if k in side_names}
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


# ----------------------------------------------------------------------------- decoding limits

def memory_bandwidth(mib: int = 256, repeats: int = 10) -> float:
    """Bytes/s read by a jitted sum over a float32 array of ``mib`` MiB (median of ``repeats``)."""
    x = jnp.ones((mib * (1 << 20) // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return x.nbytes / statistics.median(times)


def frame_bytes(engine: DecodingEngine) -> tuple[int, int]:
    """(bytes one audio frame reads, bytes of every weight) of the engine's parameters."""
    total, frame = 0, 0
    for path, x in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(engine.state))[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        n = int(x.size) * x.dtype.itemsize
        total += n
        if keys[0] in ("embed_tokens", "audio_embed", "lm_head"):
            continue  # one row gathered per step, or not used while speaking
        if keys[:2] == ["audio_head", "layers"] and "ffn" not in keys:  # (layers may be unstacked)
            n *= NUM_CODEBOOKS  # the depth attention and norms run once per codebook
        frame += n
    return frame, total


def audio_only(engine: DecodingEngine, prompt: np.ndarray, frames: int, rows: int, sampling: SamplingParams,
               prompt_codes: np.ndarray | None = None, seed: int = 1) -> list:
    protocol = il.Protocol(text=False, speech=True, audio_max_frames=frames)
    reqs = [Request(prompt.astype(np.int32), prompt_codes=prompt_codes, start="audio",
                    sampling=PhaseSampling(sampling, sampling, sampling), seed=seed + r, max_new_tokens=frames)
            for r in range(rows)]
    return engine.generate(reqs, protocol)


def decode_limits(size: str, frames: int, repeats: int, dtypes, batches) -> dict:
    cfg = config(size)
    llm = build(cfg)
    bw = memory_bandwidth()
    rng = np.random.default_rng(0)
    prompt = np.concatenate([rng.integers(3, 400, PROMPT_TOKENS), [cfg.tokens.audiogen_start_token_id]])
    short = max(2, frames // 5)
    out = {"bandwidth": bw, "rows": []}
    engines = {dt: DecodingEngine(llm, dtype=dt) for dt in dtypes}
    for dt, engine in engines.items():
        fb, total = frame_bytes(engine)
        for rows in batches:
            audio_only(engine, prompt, frames, rows, AUDIO)  # compile
            audio_only(engine, prompt, short, rows, AUDIO)
            longs, shorts = [], []
            for _ in range(repeats):
                longs.append(timed(lambda: audio_only(engine, prompt, frames, rows, AUDIO)))
                shorts.append(timed(lambda: audio_only(engine, prompt, short, rows, AUDIO)))
            per_frame = (statistics.median(longs) - statistics.median(shorts)) / (frames - short)
            out["rows"].append(dict(size=size, dtype=dt, batch=rows, per_frame_ms=per_frame * 1e3,
                                    row_frames_per_s=rows / per_frame, frame_bytes=fb, weight_bytes=total,
                                    read_ms=fb / bw * 1e3, all_read_ms=total / bw * 1e3))
    if "float32" in engines and "bfloat16" in engines:
        greedy = SamplingParams(do_sample=False)
        n = 24
        ref = audio_only(engines["float32"], prompt, n, 1, greedy)[0].segments[0]
        free = audio_only(engines["bfloat16"], prompt, n, 1, greedy)[0].segments[0]
        m = min(len(ref), len(free))
        out["free_equal"] = float(np.mean(np.all(ref[:m] == free[:m], -1)))
        tf = {}
        for dt in ("float32", "bfloat16"):
            same = []
            for t in range(n):  # frame t from the float32 frames before it
                ids = np.concatenate([prompt, np.full(t, cfg.tokens.audio_pad_token_id)])
                codes = np.zeros((len(ids), NUM_CODEBOOKS), np.int32)
                codes[len(prompt):] = ref[:t]
                got = audio_only(engines[dt], ids, 1, 1, greedy, prompt_codes=codes)[0].segments[0]
                same.append(bool(len(got) and np.all(got[0] == ref[t])))
            tf[dt] = float(np.mean(same))
        out["teacher_forced_equal"] = tf
    return out


def report_limits(res: dict, command: str) -> list[str]:
    bw = res["bandwidth"]
    print(f"\nmemory bandwidth (jitted sum over 256 MiB): {bw / 1e9:.1f} GB/s")
    table = []
    base = {(r["size"], r["batch"]): r for r in res["rows"] if r["dtype"] == "float32"}
    for r in res["rows"]:
        f32 = base.get((r["size"], r["batch"]))
        speed = f32["per_frame_ms"] / r["per_frame_ms"] if f32 else float("nan")
        print(f"{r['size']:6s} {r['dtype']:9s} batch {r['batch']:3d}: {r['per_frame_ms']:8.2f} ms/frame, "
              f"{r['row_frames_per_s']:8.1f} rows×frames/s; a frame reads {r['frame_bytes'] / 1e6:.0f} MB = "
              f"{r['read_ms']:.2f} ms at the measured bandwidth -> x{r['per_frame_ms'] / r['read_ms']:.2f} of that "
              f"limit (all weights once: {r['all_read_ms']:.2f} ms, x{r['per_frame_ms'] / r['all_read_ms']:.2f}); "
              f"x{speed:.2f} vs float32")
        table.append(f"| {r['size']} | {r['dtype']} | {r['batch']} | {r['per_frame_ms']:.2f} ms | "
                     f"{r['row_frames_per_s']:.0f} | x{r['per_frame_ms'] / r['read_ms']:.2f} | x{speed:.2f} | "
                     f"`{command}` |")
    if "free_equal" in res:
        tf = res["teacher_forced_equal"]
        print(f"bfloat16 vs float32 greedy codes over 24 frames: {100 * res['free_equal']:.0f}% of frames equal "
              f"free running; teacher forced {100 * tf['bfloat16']:.0f}% (float32 against itself: "
              f"{100 * tf['float32']:.0f}%)")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sides", default="engine,reference,reference+jit", help="'' skips the side-by-side")
    p.add_argument("--dtypes", default="float32,bfloat16", help="decoding dtypes of the limits section ('' skips)")
    p.add_argument("--batches", default="1,4,16")
    args = p.parse_args()
    command = COMMAND + "".join(f" {a}" for a in sys.argv[1:])
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
          f"{args.frames} frames, prompt {PROMPT_TOKENS} tokens, first chunk after {TEXT_TOKENS} text tokens + "
          f"{min(args.frames, 25)} frames + waveform; median of {args.repeats}")
    table, limits = [], []
    for size in args.sizes.split(","):
        if args.dtypes:
            limits += report_limits(decode_limits(size, args.frames, args.repeats, args.dtypes.split(","),
                                                  [int(b) for b in args.batches.split(",")]), command)
        if not args.sides:
            continue
        rows = measure(size, args.frames, args.repeats, tuple(args.sides.split(",")))
        base = {r["side"]: r for r in rows}
        for r in rows:
            ref = base.get("reference", r)
            speed = ref["per_frame_ms"] / r["per_frame_ms"]
            first = ref["first_chunk_s"] / r["first_chunk_s"]
            print(f"{size:6s} {r['side']:14s} {r['per_frame_ms']:9.2f} ms/frame  {r['frames_per_s']:8.1f} frames/s  "
                  f"RTF {r['rtf']:7.3f}  first chunk {r['first_chunk_s']:6.2f} s   x{speed:6.1f} per frame, "
                  f"x{first:5.1f} first chunk vs reference")
            table.append(f"| {size} | {r['side']} | {r['per_frame_ms']:.2f} ms ({r['frames_per_s']:.0f} frames/s) | "
                         f"{r['rtf']:.3f} | {r['first_chunk_s']:.2f} s | ×{speed:.1f} / ×{first:.1f} | `{COMMAND}` |")
    print("\nREADME rows (size | side | per frame | RTF | first audio chunk | speed-up vs reference per frame / "
          "first chunk | command):")
    print("\n".join(table))
    if limits:
        print("\ndocs rows (size | dtype | batch | per frame | rows × frames/s | x the weight-read time | "
              "speed-up vs float32 | command):")
        print("\n".join(limits))


if __name__ == "__main__":
    main()
