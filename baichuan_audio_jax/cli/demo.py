"""``baichuan-audio demo``: the embedded default job.

Builds the tiny audio LLM of ``configs/tiny.py`` with random weights and generates from it with a
jitted, KV-cached greedy decoder: a few text tokens, then audio frames whose 8 codes come from
the incremental audio head, each frame fed back as an ``audio_pad`` position. Prints throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import time

HELP = ("Run the embedded default job. Builds the tiny model and generates text tokens and "
        "audio frames from it with the KV-cached decoder, printing throughput.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.py"))
    p.add_argument("--out", default="demo_out", help="directory for the run summary")
    p.add_argument("--text-tokens", type=int, default=16)
    p.add_argument("--audio-frames", type=int, default=24)


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from baichuan_audio_jax.config import ModelConfig, load_config
    from baichuan_audio_jax.models.audio_llm import AudioLLM
    from baichuan_audio_jax.models.pure import init_model, pure

    cfg = ModelConfig.from_config(load_config(args.config, args.config_overrides).model)
    t0 = time.perf_counter()
    model = init_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)))
    print(f"built tiny audio LLM ({sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))):,} "
          f"parameters) in {time.perf_counter() - t0:.1f}s")
    forward, state = pure(model)
    head_step, _ = pure(model.audio_head, "decode_step")
    head_state = nnx.state(model.audio_head)
    tok = cfg.tokens
    max_len = 8 + args.text_tokens + args.audio_frames + 2

    @jax.jit
    def step(state, ids, codes, cache, index):
        out = forward(state, ids, codes, cache=cache, cache_index=index,
                      attention_mask=jnp.ones((ids.shape[0], max_len), jnp.int32))
        return out.logits[:, -1], out.hidden[:, -1], out.cache

    @jax.jit
    def audio_frame(state, head_state, hidden):
        cache = model.audio_head.init_cache(hidden.shape[0])
        inp, running, codes = hidden, None, []
        for i, size in enumerate(cfg.codebook_sizes):
            logits, cache = head_step(head_state, inp, i, cache)
            logits = logits if i == 0 else logits[:, :size]  # only codebook 0 may emit EOS
            c = jnp.argmax(logits, axis=-1)
            codes.append(c)
            emb = jnp.take(state["audio_embed"][i]["embedding"][...], c, axis=0)
            running = emb if running is None else running + emb  # depth input i+1 = Σ_{m≤i} E_m
            inp = running
        return jnp.stack(codes, axis=-1)

    prompt = np.array([[3, 17, 42, 99, 7, tok.audiogen_start_token_id]], np.int32)
    cache = model.init_cache(1, max_len)
    zeros = jnp.zeros(prompt.shape + (8,), jnp.int32)
    t0 = time.perf_counter()
    logits, hidden, cache = step(state, jnp.asarray(prompt), zeros, cache, 0)
    pos = prompt.shape[1]
    text = []
    for _ in range(args.text_tokens):
        nxt = jnp.argmax(logits, axis=-1)[:, None].astype(jnp.int32)
        text.append(int(nxt[0, 0]))
        logits, hidden, cache = step(state, nxt, jnp.zeros((1, 1, 8), jnp.int32), cache, pos)
        pos += 1
    jax.block_until_ready(logits)
    t_text = time.perf_counter() - t0
    frames = []
    t0 = time.perf_counter()
    for _ in range(args.audio_frames):
        codes = audio_frame(state, head_state, hidden)
        frames.append(np.asarray(codes[0]).tolist())
        pad = jnp.full((1, 1), tok.audio_pad_token_id, jnp.int32)
        logits, hidden, cache = step(state, pad, codes[:, None, :], cache, pos)
        pos += 1
    jax.block_until_ready(hidden)
    t_audio = time.perf_counter() - t0
    print(f"text tokens: {text}  ({len(text) / t_text:.1f} tokens/s incl. compile)")
    print(f"audio frames: {len(frames)} x 8 codes  ({len(frames) / t_audio:.1f} frames/s incl. compile)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"text_tokens": text, "audio_frames": frames}, f)
    print(f"wrote {os.path.join(args.out, 'report.json')}")
    return 0
