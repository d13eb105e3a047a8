"""``baichuan-audio generate``: ASR, TTS and spoken/written chat from a model bundle."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

HELP = ("Generate with a model bundle: asr (speech -> text), tts (text -> speech), s2t (spoken chat answered "
        "in text) or s2s (answered in text-guided speech). Prints the text; speech goes to a 24 kHz WAV "
        "(--out), segment by segment with --stream. Sampling follows the reference demos per mode unless "
        "overridden.")

MODE_INPUTS = {
    "asr": "--audio IN (the speech to transcribe)",
    "tts": "--text T (the text to speak)",
    "s2t": "--chat CHAT.json, or --audio IN and/or --text T (one user turn)",
    "s2s": "--chat CHAT.json, or --audio IN and/or --text T (one user turn)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="model bundle (written by `convert` or exported by `train`)")
    p.add_argument("--mode", required=True, choices=sorted(MODE_INPUTS))
    p.add_argument("--audio", help="input audio file (asr, s2t, s2s)")
    p.add_argument("--text", help="input text (tts; a user message for s2t/s2s)")
    p.add_argument("--chat", metavar="CHAT.json",
                   help="chat history: a list of turns {role, text?, audio?, segments?} (or {\"turns\": [...]}) "
                        "ending with the user's; audio paths relative to the file")
    p.add_argument("--system", help="system prompt for a chat without one ('' for none; default: the reference "
                                    "demo's)")
    p.add_argument("--instruction", help="ASR instruction placed before the audio (default: the reference's)")
    p.add_argument("--out", help="output WAV (24 kHz) for tts and s2s")
    p.add_argument("--stream", action="store_true",
                   help="write --out segment by segment as each audio segment is decoded (the file is a valid, "
                        "growing WAV) and report the latency to the first audio chunk")
    p.add_argument("--chat-out", metavar="FILE", help="write the chat with the new assistant turn appended")
    p.add_argument("--json", metavar="FILE", help="write a JSON summary (text, tokens, segments, timings)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed: the same seed gives the same output")
    p.add_argument("--max-new-tokens", type=int,
                   help="limit on new tokens, text tokens and audio frames together (default per mode: asr 700, "
                        "tts 700 per text piece, s2t 1024, s2s 2048)")
    p.add_argument("--temperature", type=float, help="sampling temperature (every phase)")
    p.add_argument("--top-k", type=int, help="top-k (every phase; 0 = off)")
    p.add_argument("--top-p", type=float, help="top-p (every phase; 1 = off)")
    p.add_argument("--repetition-penalty", type=float, help="repetition penalty (every phase; 1 = off)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--greedy", action="store_true", help="choose the most likely token (chat samples by default)")
    g.add_argument("--sample", action="store_true", help="sample (asr and tts are greedy by default)")
    p.add_argument("--max-context", type=int, help="longest sequence in tokens (default: the model's)")
    p.add_argument("--decode-dtype", choices=("float32", "bfloat16"),
                   help="decode with weights and KV cache in this dtype (bfloat16: about half the bytes per step; "
                        "logits stay float32); default: the bundle's decode_dtype, else the model's dtype")


def _inputs(args, CLIError) -> dict:
    mode = args.mode
    kw: dict = {}
    if mode == "asr":
        if not args.audio or args.text or args.chat:
            raise CLIError(f"--mode asr takes {MODE_INPUTS['asr']}")
        kw["audio"] = args.audio
        if args.instruction is not None:
            kw["instruction"] = args.instruction
    elif mode == "tts":
        if not args.text or args.audio or args.chat:
            raise CLIError(f"--mode tts takes {MODE_INPUTS['tts']}")
        kw["text"] = args.text
    else:
        if args.chat and (args.audio or args.text):
            raise CLIError("give either --chat or --audio/--text, not both")
        if not (args.chat or args.audio or args.text):
            raise CLIError(f"--mode {mode} takes {MODE_INPUTS[mode]}")
        if args.chat:
            kw["chat"] = read_chat(args.chat, CLIError)
            kw["audio_dir"] = os.path.dirname(os.path.abspath(args.chat))
        else:
            if args.audio:
                kw["audio"] = args.audio
            if args.text:
                kw["text"] = args.text
        if args.system is not None:
            kw["system"] = args.system
    return kw


def load_generator(path: str, max_context: int | None = None, decode_dtype: str | None = None):
    """The bundle's generator; kept for the next call in the same process (and bundle version),
    so commands run in-process (scripts, tests) load and compile once."""
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.conversion.bundle import BUNDLE_FILE

    info = os.path.join(path, BUNDLE_FILE)
    stamp = os.stat(info).st_mtime_ns if os.path.exists(info) else None
    return _cached_generator(os.path.abspath(path), stamp, max_context, decode_dtype)


@functools.lru_cache(maxsize=1)
def _cached_generator(path: str, stamp, max_context, decode_dtype=None):
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.inference.generator import Generator

    return Generator.from_bundle(path, max_context=max_context, decode_dtype=decode_dtype)


def check_inputs(inputs: dict, args, CLIError) -> None:
    """Text free of special tokens, a well-formed chat, readable audio files — checked up front."""
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.audio.io import AudioError, read_audio
    from baichuan_audio_jax.inference.prompts import PromptError, check_text, validate_chat

    audio = [inputs["audio"]] if "audio" in inputs else []
    try:
        for key in ("text", "system", "instruction"):
            if inputs.get(key):
                check_text(inputs[key], f"--{key}")
    except PromptError as e:
        raise CLIError(str(e)) from e
    if "chat" in inputs:
        try:
            inputs["chat"] = validate_chat(inputs["chat"])
            for i, turn in enumerate(inputs["chat"]):
                for part in turn.get("segments", [turn]):
                    if "text" in part:
                        check_text(part["text"], f"chat turns[{i}]")
                    if "audio" in part:
                        audio.append(os.path.join(inputs["audio_dir"], part["audio"]))
        except PromptError as e:
            raise CLIError(f"{args.chat}: {e}") from e
    try:
        for path in audio:
            read_audio(path)
    except AudioError as e:
        raise CLIError(str(e)) from e


def read_chat(path: str, CLIError) -> list:
    if not os.path.isfile(path):
        raise CLIError(f"chat file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CLIError(f"{path}: not a JSON file ({e})") from e
    return data["turns"] if isinstance(data, dict) and "turns" in data else data


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.audio.io import AudioError
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.inference.generator import MODES
    from baichuan_audio_jax.inference.prompts import PromptError

    mode = MODES[args.mode]
    inputs = _inputs(args, CLIError)
    if mode.speech_output and not args.out:
        raise CLIError(f"--mode {args.mode} speaks: give --out OUT.wav")
    if not mode.speech_output and (args.out or args.stream):
        raise CLIError(f"--mode {args.mode} writes text only: --out/--stream do not apply")
    check_inputs(inputs, args, CLIError)  # fail on bad input before loading the model
    if not os.path.isdir(args.checkpoint):
        raise CLIError(f"checkpoint {args.checkpoint} is not a directory (a model bundle)")
    options = dict(seed=args.seed, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                   do_sample=False if args.greedy else (True if args.sample else None))
    chunks = []
    if mode.speech_output and args.stream:
        options["stream_to"] = args.out

        def on_chunk(chunk):
            chunks.append(len(chunk))
            print(f"[stream] audio chunk {len(chunks)}: {len(chunk) / 24000:.2f} s -> {args.out}", file=sys.stderr)

        options["on_chunk"] = on_chunk
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from tqdm import tqdm

    gen = load_generator(args.checkpoint, args.max_context, args.decode_dtype)
    bar = tqdm(desc=f"generate {args.mode}", unit="tok", file=sys.stderr, dynamic_ncols=True, leave=False)

    def on_progress(done: int, limit: int) -> None:
        bar.total = limit
        bar.update(done - bar.n)

    try:
        result = gen.generate(args.mode, **inputs, **options, on_progress=on_progress)
    except (AudioError, PromptError) as e:
        raise CLIError(str(e)) from e
    finally:
        bar.close()
    print(result.text)
    if mode.speech_output:
        if not args.stream:
            # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
            from baichuan_audio_jax.inference.waveform import write_wav

            write_wav(args.out, result.waveform, result.sample_rate)
        latency = result.timings.get("first_audio_chunk_seconds")
        print(f"generate: wrote {args.out} ({result.audio_seconds:.2f} s of 24 kHz audio, "
              f"{len(result.segments)} segment(s))" + (f"; first audio chunk after {latency:.2f} s"
                                                       if latency is not None and args.stream else ""),
              file=sys.stderr)
    print(f"generate: {result.status}", file=sys.stderr)
    if args.json:
        write_summary(args.json, result)
    if args.chat_out:
        write_chat(args, inputs, result)
    return 0


def write_summary(path: str, result) -> None:
    summary = dict(mode=result.mode, text=result.text, text_tokens=result.text_tokens,
                   segments=[s.tolist() for s in result.segments], segment_text_ends=result.segment_text_ends,
                   finish_reason=result.finish_reason, status=result.status, new_tokens=result.new_tokens,
                   max_new_tokens=result.max_new_tokens, audio_seconds=result.audio_seconds,
                   sample_rate=result.sample_rate, timings=result.timings)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=1)


def write_chat(args, inputs: dict, result) -> None:
    """The chat so far plus the answer: audio paths relative to the written file."""
    out_dir = os.path.dirname(os.path.abspath(args.chat_out))
    base = inputs.get("audio_dir")

    def rel(p: str, origin: str | None) -> str:
        full = p if os.path.isabs(p) or origin is None else os.path.join(origin, p)
        return os.path.relpath(os.path.abspath(full), out_dir)

    turns = []
    for t in inputs.get("chat") or [dict(role="user", **{k: inputs[k] for k in ("text", "audio") if k in inputs})]:
        t = dict(t)
        if "audio" in t:
            t["audio"] = rel(t["audio"], base)
        if "segments" in t:
            t["segments"] = [dict(s, **({"audio": rel(s["audio"], base)} if "audio" in s else {}))
                             for s in t["segments"]]
        turns.append(t)
    answer = {"role": "assistant"}
    if result.text.strip():
        answer["text"] = result.text
    if args.out and result.segments:
        answer["audio"] = rel(args.out, None)
    turns.append(answer)
    with open(args.chat_out, "w", encoding="utf-8") as f:
        json.dump({"turns": turns}, f, ensure_ascii=False, indent=1)
