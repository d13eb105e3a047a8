"""``baichuan-audio tokenize``: audio files or a JSONL manifest -> 8-codebook codes."""
from __future__ import annotations

import argparse
import json
import os
import sys

HELP = ("Tokenize audio into 8-codebook codes at 12.5 Hz. Files mode (FILES...) writes <name>.npz per "
        "file (codes int32 [N, 8], chunk_tokens, num_samples, source); an unreadable file stops the run "
        "with an error naming it. Manifest mode (--manifest M.jsonl) writes ArrayRecord shards of "
        "tokenized records (the manifest line plus one code matrix per \"audio\" reference), skips records "
        "whose audio cannot be read and prints a JSON summary with the skips counted by reason. Chunks of "
        "several files are batched and run jitted with bucketed lengths, so compilation does not repeat "
        "per file; progress shows files/s and audio seconds per second.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="FILE", help="audio files (any soundfile format)")
    p.add_argument("--manifest", help="JSONL manifest whose \"audio\" values are paths (relative to it)")
    p.add_argument("--config", required=True, help="model config (configs/*.py or a reference config.json)")
    p.add_argument("--weights", help="reference-layout weights: a Hugging Face style directory (sharded or not), a "
                                     "directory of .safetensors files, a .safetensors file or a .pt/.bin state_dict "
                                     "(needs torch); only the audio_tokenizer.* tensors are read; random if omitted")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=8, help="encoder rows (30 s chunks) per jitted call")
    p.add_argument("--files-per-step", type=int, default=16, help="files loaded and encoded together")
    p.add_argument("--records-per-shard", type=int, default=10_000, help="manifest mode: records per shard")
    p.add_argument("--load-workers", type=int, default=None,
                   help="threads reading and resampling audio (default: the CPU count, at most 8)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed when --weights is omitted")


def build_runtime(args: argparse.Namespace):
    """The tokenizer runtime of ``--config``/``--weights`` (shared with ``detokenize``)."""
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import ModelConfig, load_config
    from baichuan_audio_jax.conversion.mapping import MappingError
    from baichuan_audio_jax.conversion.torch_io import CheckpointError
    from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime

    cfg = ModelConfig.from_config(load_config(args.config, args.config_overrides).model)
    if args.weights:
        try:
            return AudioTokenizerRuntime.from_weights_file(cfg, args.weights, batch_size=args.batch_size)
        except CheckpointError as e:  # names the file itself
            raise CLIError(f"--weights: {e}") from e
        except MappingError as e:
            raise CLIError(f"--weights {args.weights}: {e}") from e
    print("warning: no --weights given: the tokenizer is randomly initialised and its codes are meaningless "
          "(use them only to test pipelines)", file=sys.stderr)
    return AudioTokenizerRuntime.random(cfg, seed=args.seed, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.audio.io import AudioError
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.inference.tokenize_corpus import tokenize_files, tokenize_manifest

    if bool(args.inputs) == bool(args.manifest):
        raise CLIError("give either audio FILEs or --manifest M.jsonl (exactly one of them)")
    if args.manifest and not os.path.isfile(args.manifest):
        raise CLIError(f"manifest {args.manifest} does not exist")
    if args.files_per_step < 1:
        raise CLIError(f"--files-per-step must be ≥ 1, got {args.files_per_step}")
    runtime = build_runtime(args)
    if args.manifest:
        summary = tokenize_manifest(runtime, args.manifest, args.out, files_per_step=args.files_per_step,
                                    records_per_shard=args.records_per_shard, load_workers=args.load_workers)
        printed = {k: v for k, v in summary.items() if k != "skipped_items"}
        print(json.dumps(printed, indent=1, ensure_ascii=False))
        return 0
    try:
        summary = tokenize_files(runtime, args.inputs, args.out, files_per_step=args.files_per_step,
                                 load_workers=args.load_workers)
    except AudioError as e:
        raise CLIError(str(e)) from e
    print(json.dumps({k: v for k, v in summary.items() if k != "outputs"}, indent=1))
    print(f"wrote {len(summary['outputs'])} file(s) to {args.out}")
    return 0
