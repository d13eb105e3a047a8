"""Load on the speech server: 1, 4 and 16 concurrent clients against the same requests served one at a time.

    python benchmarks/serve_load.py --checkpoint BUNDLE [--clients 4,16] [--requests 32] [--max-batch 16]

Starts the server in this process on 127.0.0.1 (compiling its batch sizes first), then runs the
same request list — ASR of a recording and streamed TTS of a sentence, alternating — once with
one client issuing them one at a time (the baseline) and once per concurrency level with that many
clients sharing the list. For each run it prints throughput (requests/s, seconds of speech
generated and transcribed per second), latency p50/p95 per kind, time to the first audio chunk of
TTS, and the ratios against the one-at-a-time run: throughput ×, and p95 latency over the
one-at-a-time p50 (the single-request latency). ``--json`` writes every number.

The target (2 CPU cores): ≥ 3x throughput at 16 clients with p95 latency ≤ 2x the single-request
latency.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time

import httpx
import numpy as np
import soundfile as sf

from baichuan_audio_jax.inference.generator import Generator
from baichuan_audio_jax.serve.app import ServeSettings, create_app
from baichuan_audio_jax.serve.runner import ServerThread

SENTENCE = "你好，今天天气不错。"


def default_audio() -> bytes:
    """3 s of a tone, as a WAV."""
    t = np.arange(48000) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


async def one(client: httpx.AsyncClient, kind: str, audio: bytes, max_new: int) -> dict:
    t0 = time.perf_counter()
    if kind == "asr":
        r = await client.post("/v1/audio/transcriptions", files={"file": ("q.wav", audio, "audio/wav")},
                              data={"max_new_tokens": str(max_new)})
        r.raise_for_status()
        return dict(kind=kind, latency=time.perf_counter() - t0, audio_in=sf.info(io.BytesIO(audio)).duration)
    first, size = None, 0
    async with client.stream("POST", "/v1/audio/speech", json={"input": SENTENCE, "stream": True,
                                                              "response_format": "pcm",
                                                              "max_new_tokens": max_new}) as r:
        r.raise_for_status()
        async for part in r.aiter_bytes():
            if first is None:
                first = time.perf_counter() - t0
            size += len(part)
    return dict(kind=kind, latency=time.perf_counter() - t0, first_audio=first, audio_out=size / 2 / 24000)


async def load(url: str, clients: int, kinds: list[str], audio: bytes, max_new: int) -> dict:
    todo = list(enumerate(kinds))
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async def client_loop(c: httpx.AsyncClient):
        while todo:
            _, kind = todo.pop(0)
            results.append(await one(c, kind, audio, max_new))

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return summarize(results, wall, clients)


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(results: list[dict], wall: float, clients: int) -> dict:
    lat = [r["latency"] for r in results]
    out = dict(clients=clients, requests=len(results), wall_seconds=wall, requests_per_second=len(results) / wall,
               audio_out_per_second=sum(r.get("audio_out", 0.0) for r in results) / wall,
               audio_in_per_second=sum(r.get("audio_in", 0.0) for r in results) / wall,
               latency_p50=pct(lat, 50), latency_p95=pct(lat, 95))
    for kind in ("asr", "tts"):
        k = [r["latency"] for r in results if r["kind"] == kind]
        out[f"{kind}_p50"], out[f"{kind}_p95"] = pct(k, 50), pct(k, 95)
    fa = [r["first_audio"] for r in results if r.get("first_audio") is not None]
    out["first_audio_p50"], out["first_audio_p95"] = pct(fa, 50), pct(fa, 95)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="model bundle (e.g. the one `make demo` assembles)")
    p.add_argument("--clients", default="4,16", help="concurrency levels besides the one-at-a-time baseline")
    p.add_argument("--requests", type=int, default=32, help="requests per run (half ASR, half TTS)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-sizes", default="1,4,16", help="compiled batch sizes")
    p.add_argument("--max-wait-ms", type=float, default=20.0)
    p.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--audio", help="recording to transcribe (default: a 3 s tone)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if not os.path.isdir(args.checkpoint):
        print(f"serve_load: error: checkpoint {args.checkpoint} is not a directory (a model bundle)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.clients.split(",")]
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    audio = open(args.audio, "rb").read() if args.audio else default_audio()
    kinds = ["asr" if i % 2 == 0 else "tts" for i in range(args.requests)]
    gen = Generator.from_bundle(args.checkpoint)
    seconds = sf.info(io.BytesIO(audio)).duration
    settings = ServeSettings(max_batch=args.max_batch, batch_sizes=sizes, max_wait_ms=args.max_wait_ms,
                             max_new_tokens=args.max_new_tokens, max_queue=4 * max(levels + [1]) + 8,
                             request_timeout=1200, warm_up_audio_seconds=seconds, warm_up_modes=("asr", "tts"))
    t0 = time.perf_counter()
    with ServerThread(create_app(gen, settings)) as server:
        print(f"serve_load: server ready in {time.perf_counter() - t0:.1f} s (warm-up compiles batch sizes {sizes})",
              flush=True)
        def compiled() -> int:
            return httpx.get(server.url + "/health").json()["compiled_programs"]

        asyncio.run(load(server.url, 1, kinds[:2], audio, args.max_new_tokens))  # settle
        runs = []
        for n in [1] + levels:
            before = compiled()
            runs.append(asyncio.run(load(server.url, n, kinds, audio, args.max_new_tokens)))
            runs[-1]["compiled_during_run"] = compiled() - before
            print(f"serve_load: {n} client(s) done in {runs[-1]['wall_seconds']:.1f} s", flush=True)
            if runs[-1]["compiled_during_run"]:
                print(f"serve_load: warning: {runs[-1]['compiled_during_run']} decoding program(s) compiled during "
                      "this run: its numbers include compilation", flush=True)
        total_compiled = compiled()
    base = runs[0]
    print(f"\n{args.requests} requests per run (ASR of {sf.info(io.BytesIO(audio)).duration:.1f} s / streamed TTS), "
          f"max {args.max_new_tokens} new tokens each; compiled programs at the end: {total_compiled}")
    head = ("clients", "req/s", "x serial", "speech out s/s", "speech in s/s", "p50 s", "p95 s", "p95/single",
            "asr p50", "tts p50", "1st audio p50", "1st audio p95")
    print(" | ".join(head))
    for r in runs:
        print(" | ".join([
            f"{r['clients']:>3}" + (" (one at a time)" if r is base else ""), f"{r['requests_per_second']:.2f}",
            f"{r['requests_per_second'] / base['requests_per_second']:.2f}", f"{r['audio_out_per_second']:.2f}",
            f"{r['audio_in_per_second']:.2f}", f"{r['latency_p50']:.2f}", f"{r['latency_p95']:.2f}",
            f"{r['latency_p95'] / base['latency_p50']:.2f}", f"{r['asr_p50']:.2f}", f"{r['tts_p50']:.2f}",
            f"{r['first_audio_p50']:.2f}", f"{r['first_audio_p95']:.2f}"]))
    top = runs[-1]
    speedup = top["requests_per_second"] / base["requests_per_second"]
    ratio = top["latency_p95"] / base["latency_p50"]
    ok = speedup >= 3 and ratio <= 2
    print(f"\nat {top['clients']} clients: {speedup:.2f}x the one-at-a-time throughput (target ≥ 3), p95 latency "
          f"{ratio:.2f}x the single-request latency (target ≤ 2): {'meets' if ok else 'MISSES'} the target")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), runs=runs, compiled_programs=total_compiled), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
