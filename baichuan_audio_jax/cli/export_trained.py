"""``baichuan-audio export-trained --workdir RUN --out DIR``: a trained tokenizer / flow-matching /
vocoder run in the reference PyTorch layout."""
from __future__ import annotations

import argparse
import json

HELP = ("Export the latest (or --step) checkpoint of an audio_tokenizer, flow_matching or vocoder training run "
        "to the reference PyTorch layout: DIR/model.safetensors with the reference tensor names "
        "(audio_tokenizer.audio_model.*, .audio_bridge_model.* incl. codebooks and EMA statistics, "
        ".audio_decoder.*, .audio_flow_matching_decoder.*) and DIR/config.json in the reference format. "
        "A vocoder run is written as one hift.pt-layout file (DIR/hift.safetensors or --vocoder-file hift.pt). "
        "Training-only parts (alignment LLM, adapter, usage counters, discriminators) are not exported.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training run directory (config.json + checkpoints/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="tensor dtype")
    p.add_argument("--vocoder-file", default="hift.safetensors",
                   help="file name of a vocoder run's export in DIR: hift.safetensors, or hift.pt (needs torch)")


def run(args: argparse.Namespace) -> int:

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.training.export import export_run

    try:
        summary = export_run(args.workdir, args.out, step=args.step, dtype=args.dtype,
                             vocoder_file=args.vocoder_file)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    print(json.dumps(summary))
    return 0
