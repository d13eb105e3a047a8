"""``baichuan-audio serve``: the speech server (OpenAI-style endpoints, spoken-chat WebSocket, web page)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

HELP = ("Serve a model bundle over HTTP: POST /v1/audio/transcriptions (speech recognition), POST "
        "/v1/audio/speech (speech synthesis, streamed), a spoken-chat WebSocket at /v1/audio/chat, a voice-chat "
        "page at /, GET /health and GET /metrics (Prometheus). Concurrent requests are decoded together in "
        "batches; the batch sizes' programs are compiled at start-up.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model bundle (written by `convert` or "
                                                                      "exported by `train`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start-up)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most")
    p.add_argument("--batch-sizes", help="compiled batch sizes, comma-separated (default: powers of two up to "
                                         "--max-batch); a batch is padded to the next one")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch's first request waits for others to join")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests at most; more get 503")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take in all; then 504")
    p.add_argument("--max-upload-seconds", type=float, default=60.0, help="longest accepted input audio")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest accepted upload")
    p.add_argument("--max-new-tokens", type=int, help="new-token limit per request (default: each mode's)")
    p.add_argument("--max-context", type=int, help="longest sequence in tokens (default: the model's)")
    p.add_argument("--stream-steps", type=int, default=8,
                   help="decoding steps between hand-overs of new text to the clients")
    p.add_argument("--chat-text-tokens", type=int,
                   help="spoken chat: text tokens written per segment before speaking it (default: the reference's 50)")
    p.add_argument("--no-warm-up", action="store_true", help="compile on first use instead of at start-up")
    p.add_argument("--warm-up-audio-seconds", type=float, default=5.0,
                   help="input audio length the start-up compiles for; other lengths may compile on first use")


def settings_from_args(args, CLIError):
    from baichuan_audio_jax.serve.app import ServeSettings  # lazy: keeps `--help` fast

    sizes = None
    if args.batch_sizes:
        try:
            sizes = tuple(int(s) for s in args.batch_sizes.split(","))
        except ValueError:
            raise CLIError(f"--batch-sizes {args.batch_sizes!r}: expected integers separated by commas") from None
        if min(sizes) < 1 or max(sizes) < args.max_batch:
            raise CLIError(f"--batch-sizes {args.batch_sizes}: sizes must be ≥ 1 and reach --max-batch "
                           f"{args.max_batch}")
    for name in ("max_batch", "max_queue", "stream_steps"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be ≥ 1")
    for name in ("timeout", "max_upload_seconds", "max_upload_mb"):
        if getattr(args, name) <= 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive")
    return ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         batch_sizes=sizes, request_timeout=args.timeout, max_upload_seconds=args.max_upload_seconds,
                         max_upload_mb=args.max_upload_mb, max_new_tokens=args.max_new_tokens,
                         stream_steps=args.stream_steps, warm_up=not args.no_warm_up,
                         warm_up_audio_seconds=args.warm_up_audio_seconds, chat_text_tokens=args.chat_text_tokens)


def run(args: argparse.Namespace) -> int:
    from baichuan_audio_jax.cli.main import CLIError  # lazy: CLI start-up

    settings = settings_from_args(args, CLIError)
    if not os.path.isdir(args.checkpoint):
        raise CLIError(f"checkpoint {args.checkpoint} is not a directory (a model bundle)")
    import uvicorn  # lazy: keeps `--help` fast

    from baichuan_audio_jax.inference.generator import Generator  # lazy: keeps `--help` fast
    from baichuan_audio_jax.serve.app import create_app  # lazy: keeps `--help` fast

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(f"serve: loading {args.checkpoint}", file=sys.stderr)
    gen = Generator.from_bundle(args.checkpoint, max_context=args.max_context)
    app = create_app(gen, settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", ws="websockets-sansio")
    uvicorn.Server(config).run()
    return 0
