"""``baichuan-audio detokenize``: codes (``.npz`` from ``tokenize``) -> audio-decoder outputs.

The command is a pipeline of stages over each input: read the codes and split them into
segments, decode every segment with the audio tokenizer runtime, then hand the per-segment
results to each output writer in :func:`writers`. A further output (e.g. a waveform through the
flow-matching decoder and the vocoder) is one more writer.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

HELP = ("Decode codes back to the audio decoder's outputs. Reads .npz files written by `tokenize` (codes "
        "int32 [N, 8]; their 30 s chunks are decoded as separate segments, as they were encoded) and writes "
        "<name>.mel.npz with hidden_before_dconv2 (the flow-matching input, 50 Hz), coarse_mel (100 Hz) and "
        "refined_mel (62.5 Hz), each concatenated over segments, plus per-segment lengths.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="CODES.npz", help="code files written by `tokenize`")
    p.add_argument("--config", required=True, help="model config (configs/*.py or a reference config.json)")
    p.add_argument("--weights", help="reference-layout weights (as for `tokenize`); random if omitted")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=8, help="segments per jitted decoder call")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed when --weights is omitted")


def read_segments(path: str, max_tokens: int) -> list:
    """Code segments of a ``tokenize`` output: one per encoded chunk (``chunk_tokens``), else pieces
    of at most ``max_tokens``."""
    import numpy as np

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


def write_mel(out_dir: str, name: str, segments: list[dict]) -> str:
    import numpy as np

    target = os.path.join(out_dir, f"{name}.mel.npz")
    cat = lambda key: np.concatenate([s[key] for s in segments], axis=0)
    np.savez(target, hidden_before_dconv2=cat("hidden_before_dconv2"), coarse_mel=cat("coarse_mel"),
             refined_mel=cat("refined_mel"),
             segment_tokens=np.asarray([s["lengths"]["tokens"] for s in segments], np.int32),
             segment_hidden_frames=np.asarray([s["lengths"]["hidden"] for s in segments], np.int32),
             segment_mel_frames=np.asarray([s["lengths"]["mel"] for s in segments], np.int32))
    return target


def writers(args: argparse.Namespace) -> list[Callable[[str, str, list[dict]], str]]:
    """Output stages, each ``(out_dir, name, decoded segments) -> written path``."""
    return [write_mel]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.cli.tokenize import build_runtime

    runtime = build_runtime(args)
    outputs = writers(args)
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
                bar.write(f"{path} -> {write(args.out, name, decoded)}")
    return 0
