"""``baichuan-audio detokenize``: codes (``.npz`` from ``tokenize``) -> audio-decoder outputs and,
with ``--wav``, 24 kHz speech.

The command is a pipeline of stages over each input: read the codes and split them into
segments, decode every segment with the audio tokenizer runtime, then hand the segments and
their decoder outputs to each output writer in :func:`writers` (the mel file; with ``--wav``
the waveform through flow matching and the vocoder,
:func:`~baichuan_audio_jax.inference.waveform.codes_to_wave`).
"""
from __future__ import annotations

import argparse
import os
import zlib
from typing import Callable

import numpy as np

HELP = ("Decode codes back to the audio decoder's outputs and, with --wav, to 24 kHz speech. Reads .npz files "
        "written by `tokenize` (codes int32 [N, 8]; their 30 s chunks are decoded as separate segments, as they "
        "were encoded) and writes <name>.mel.npz with hidden_before_dconv2 (the flow-matching input, 50 Hz), "
        "coarse_mel (100 Hz) and refined_mel (62.5 Hz), each concatenated over segments, plus per-segment "
        "lengths. --wav also writes <name>.wav: each segment through flow matching (CFM) and the HiFT vocoder "
        "(480 samples per 4N - 1 mel frames), joined with the reference's 240-sample cross-fade. Models come "
        "from --bundle, or from --weights (reference layout) and --vocoder (hift.pt); missing parts are random.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="CODES.npz", help="code files written by `tokenize`")
    p.add_argument("--config", help="model config (configs/*.py or a reference config.json); not with --bundle")
    p.add_argument("--weights", help="reference-layout weights (as for `tokenize`); random if omitted")
    p.add_argument("--bundle", help="a model bundle (audio_tokenizer, flow_matching and, for --wav, a vocoder) "
                                    "instead of --config/--weights/--vocoder")
    p.add_argument("--wav", action="store_true", help="also write <name>.wav (24 kHz, 16-bit PCM)")
    p.add_argument("--vocoder", help="--wav: vocoder checkpoint (hift.pt or .safetensors); random if omitted")
    p.add_argument("--steps", type=int, help="--wav: Euler steps of the CFM sampler (default: the config's)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=8, help="segments per jitted decoder call")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (per file) and of random weights")


def read_segments(path: str, max_tokens: int) -> list:
    """Code segments of a ``tokenize`` output: one per encoded chunk (``chunk_tokens``), else pieces
    of at most ``max_tokens``."""

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError

    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such code file")
    try:
        with np.load(path) as d:
            if "codes" not in d.files:
                raise CLIError(f"{path}: no 'codes' array (it has {d.files})")
            codes = d["codes"]
            chunks = d["chunk_tokens"].tolist() if "chunk_tokens" in d.files else None
    except (OSError, ValueError) as e:
        raise CLIError(f"{path}: not a readable .npz file ({e})") from e
    if codes.ndim != 2:
        raise CLIError(f"{path}: codes must be [N, 8], got shape {codes.shape}")
    if chunks is None or sum(chunks) != codes.shape[0]:
        chunks = [min(max_tokens, codes.shape[0] - s) for s in range(0, codes.shape[0], max_tokens)]
    bounds = np.cumsum([0, *chunks])
    return [codes[bounds[i]:bounds[i + 1]] for i in range(len(chunks))]


Writer = Callable[[str, str, list, list[dict]], str]


def write_mel(out_dir: str, name: str, segments: list, decoded: list[dict]) -> str:

    target = os.path.join(out_dir, f"{name}.mel.npz")
    cat = lambda key: np.concatenate([s[key] for s in decoded], axis=0)
    np.savez(target, hidden_before_dconv2=cat("hidden_before_dconv2"), coarse_mel=cat("coarse_mel"),
             refined_mel=cat("refined_mel"),
             segment_tokens=np.asarray([s["lengths"]["tokens"] for s in decoded], np.int32),
             segment_hidden_frames=np.asarray([s["lengths"]["hidden"] for s in decoded], np.int32),
             segment_mel_frames=np.asarray([s["lengths"]["mel"] for s in decoded], np.int32))
    return target


def wav_writer(speech, seed: int, steps: int | None) -> Writer:
    """The ``--wav`` stage: codes -> waveform with noise from ``fold_in(key(seed), crc32(name))``, so a
    file's audio does not depend on which other files are in the run."""

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    import jax

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.inference.waveform import SAMPLE_RATE, codes_to_wave, write_wav

    def write(out_dir: str, name: str, segments: list, decoded: list[dict]) -> str:
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
        wave = codes_to_wave(speech, segments, key=key, steps=steps, decoded=decoded)
        return write_wav(os.path.join(out_dir, f"{name}.wav"), wave, SAMPLE_RATE)

    return write


def writers(args: argparse.Namespace, speech=None) -> list[Writer]:
    """Output stages, each ``(out_dir, name, code segments, decoded segments) -> written path``."""
    out = [write_mel]
    if args.wav:
        out.append(wav_writer(speech, args.seed, args.steps))
    return out


def build(args: argparse.Namespace):
    """(tokenizer runtime, speech decoder or None) from --bundle or --config/--weights/--vocoder."""
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.cli.tokenize import build_runtime
    from baichuan_audio_jax.config import ModelConfig, load_config
    from baichuan_audio_jax.conversion.bundle import BundleError
    from baichuan_audio_jax.conversion.mapping import MappingError
    from baichuan_audio_jax.conversion.torch_io import CheckpointError
    from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
    from baichuan_audio_jax.inference.waveform import SpeechDecoder

    if args.bundle:
        if args.config or args.weights or args.vocoder:
            raise CLIError("--bundle holds the config and every model; --config/--weights/--vocoder are not used")
        try:
            if args.wav:
                speech = SpeechDecoder.from_bundle(args.bundle, batch_size=args.batch_size)
                return speech.tokenizer, speech
            return AudioTokenizerRuntime.from_bundle(args.bundle, batch_size=args.batch_size), None
        except BundleError as e:
            raise CLIError(str(e)) from e
    if not args.config:
        raise CLIError("pass --config (with --weights and --vocoder) or --bundle")
    if args.vocoder and not args.wav:
        raise CLIError("--vocoder is used only with --wav")
    if not args.wav:
        return build_runtime(args), None
    cfg = ModelConfig.from_config(load_config(args.config, args.config_overrides).model)
    try:
        speech = SpeechDecoder.from_parts(cfg, weights=args.weights, vocoder=args.vocoder, seed=args.seed,
                                          batch_size=args.batch_size)
    except (CheckpointError, MappingError, ValueError) as e:
        raise CLIError(f"{args.weights or args.vocoder}: {e}") from e
    return speech.tokenizer, speech


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from tqdm import tqdm

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError

    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be ≥ 1, got {args.steps}")
    runtime, speech = build(args)
    outputs = writers(args, speech)
    os.makedirs(args.out, exist_ok=True)
    with tqdm(args.inputs, unit="file", desc="detokenize") as bar:
        for path in bar:
            segments = read_segments(path, runtime.max_tokens)
            try:
                decoded = runtime.decode_batch(segments)
            except ValueError as e:
                raise CLIError(f"{path}: {e}") from e
            name = os.path.splitext(os.path.basename(path))[0]
            for write in outputs:
                bar.write(f"{path} -> {write(args.out, name, segments, decoded)}")
    return 0
