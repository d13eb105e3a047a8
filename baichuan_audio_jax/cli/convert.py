"""``baichuan-audio convert``: reference PyTorch checkpoints (the model and the vocoder) <-> model
bundles, coverage checks, initialisation from Hugging Face Qwen2 and Whisper."""
from __future__ import annotations

import argparse
import re
import sys

HELP = ("Convert checkpoints between the reference PyTorch layout and model bundles (Orbax), both ways, "
        "streaming one tensor at a time. "
        "--from torch --input SRC --to orbax --output BUNDLE [--config CFG]: SRC is a Hugging Face style "
        "directory (model.safetensors or model-XXXXX-of-YYYYY.safetensors + index), a .safetensors file or a "
        ".pt/.bin state_dict (needs torch); repeat --input for a union of files. --component vocoder converts "
        "hift.pt (or a .safetensors copy) into the bundle's vocoder/; an existing bundle gets the other kind "
        "added (its config is used; --config.model.vocoder.* overrides may set the vocoder's). "
        "--from orbax --input BUNDLE --to torch --output DIR: writes the reference names, shapes and dtypes as "
        "sharded safetensors + index + config.json; with --component vocoder, --output hift.safetensors or "
        "hift.pt (torch). "
        "--dry-run --shapes FILE.json | --input SRC [--config CFG]: map every key without weights (safetensors: "
        "headers only), check every shape against the config, print 'mapped K/K' per component (the model and, "
        "in a shapes listing, the vocoder); exit 1 on any unknown, missing, mis-shaped or non-float key. "
        "--init-from-qwen2 DIR --init-from-whisper DIR --output BUNDLE --config CFG: a bundle for new "
        "pretraining, LLM from Qwen2/Qwen2.5, audio encoder from Whisper, other parts freshly initialised. "
        "Outputs are written to a hidden staging location and renamed when complete.")
ACCEPTS_CONFIG_OVERRIDES = True

DTYPES = ("source", "bfloat16", "float16", "float32")


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 5GB, 500MB, 1000000)")
    unit = (m.group(2) or "").upper().rstrip("B")
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src_format", choices=("torch", "orbax"), help="format of --input")
    p.add_argument("--to", dest="dst_format", choices=("torch", "orbax"), help="format of --output")
    p.add_argument("--input", action="append", default=[], help="source checkpoint (repeatable for torch input)")
    p.add_argument("--output", help="destination directory (must not exist unless --overwrite)")
    p.add_argument("--config", help="model config: configs/*.py, a reference or bundle config.json, or a bundle "
                                    "(default: the output bundle's when adding to one, else the input directory's "
                                    "config.json; for the vocoder, the released model's settings)")
    p.add_argument("--component", choices=("model", "vocoder"), default="model",
                   help="which reference checkpoint: the model (OmniForCausalLM) or the vocoder (hift.pt)")
    p.add_argument("--components", help="comma-separated components of the model checkpoint to convert or check "
                                        "(default: all: llm,audio_tokenizer,flow_matching); keys of the others are "
                                        "skipped and reported")
    p.add_argument("--dtype", choices=DTYPES, default="source",
                   help="dtype of the written arrays (default: each tensor keeps its dtype; on export, the dtype "
                        "recorded from the reference checkpoint)")
    p.add_argument("--tokenizer", help="tokenizer file or directory to put in the bundle (default: tokenizer "
                                       "files found beside the input weights)")
    p.add_argument("--max-shard-size", type=_size, default="5GB", help="safetensors shard size on export")
    p.add_argument("--dry-run", action="store_true", help="check coverage only; write nothing")
    p.add_argument("--shapes", help="name -> shape JSON listing for --dry-run (e.g. real_config_shapes.json)")
    p.add_argument("--init-from-qwen2", metavar="DIR", help="Hugging Face Qwen2/Qwen2.5 checkpoint for the LLM")
    p.add_argument("--init-from-whisper", metavar="DIR", help="Hugging Face Whisper checkpoint for the audio encoder")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh parameters (--init-from-*)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (or the bundle's checkpoint of this kind) once the new one is "
                        "complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _model_config(args, fallback_reference=None, where: str = ""):
    """--config (+ overrides), else the output bundle's config when adding to it, else the input's
    reference config.json, else (vocoder) the released model's defaults."""
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import (
        apply_overrides,
        default_run_config,
        load_config,
        model_config_dict,
        model_config_from_reference,
    )
    from baichuan_audio_jax.conversion.bundle import bundle_model_config, is_bundle

    if args.config:
        return load_config(args.config, args.config_overrides).model
    cfg = default_run_config()
    if getattr(args, "output", None) and args.src_format == "torch" and is_bundle(args.output):
        cfg.model = bundle_model_config(args.output)
        where = f"{args.output} (the existing bundle written into)"
    elif fallback_reference is not None:
        cfg.model = model_config_from_reference(fallback_reference)
    elif args.component == "vocoder":
        cfg.model = model_config_dict()
        where = "the released model's defaults (pass --config or --config.model.vocoder.* to change them)"
    else:
        raise CLIError("no model config: pass --config (a configs/*.py file, a config.json or a bundle)")
    apply_overrides(cfg, args.config_overrides)
    print(f"config: {where}")
    return cfg.model


def _components(args):
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.conversion.components import components_of

    if not args.components:
        return None
    names = [n.strip() for n in args.components.split(",") if n.strip()]
    try:
        components_of(args.component, names)
    except KeyError as e:
        raise CLIError(f"--components: {e.args[0]}") from e
    return names


def _dtype(args):
    return None if args.dtype == "source" else args.dtype


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.conversion.bundle import BundleError
    from baichuan_audio_jax.conversion.convert import ConversionError
    from baichuan_audio_jax.conversion.orbax_io import StreamError
    from baichuan_audio_jax.conversion.torch_io import CheckpointError

    try:
        if args.dry_run:
            return _dry_run(args)
        if args.init_from_qwen2 or args.init_from_whisper:
            return _init(args)
        return _convert(args)
    except (ConversionError, CheckpointError, BundleError, StreamError, FileExistsError, IsADirectoryError) as e:
        raise CLIError(str(e)) from e


def _dry_run(args) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import ModelConfig
    from baichuan_audio_jax.conversion.components import open_reference
    from baichuan_audio_jax.conversion.convert import check_listing
    from baichuan_audio_jax.conversion.torch_io import read_shape_listing

    if bool(args.shapes) == bool(args.input):
        raise CLIError("--dry-run needs exactly one of --shapes FILE.json or --input SRC")
    components = _components(args)
    if args.shapes:
        listing = read_shape_listing(args.shapes)
        model_config = _model_config(args, listing.reference_config, f"{args.shapes} (omni_config)")
        parts = [("model", listing.model, args.shapes)]
        if listing.vocoder is not None:
            parts.append(("vocoder", listing.vocoder, args.shapes))
    else:
        if args.src_format == "orbax":
            raise CLIError("--dry-run checks reference (torch) checkpoints; a bundle carries its own config")
        src = open_reference(args.input, args.component)
        model_config = _model_config(args, src.config if args.component == "model" else None, src.config_path)
        parts = [(args.component, src.listing(), ", ".join(args.input))]
    cfg = ModelConfig.from_config(model_config)
    ok = True
    for checkpoint, listing, where in parts:
        cov = check_listing(cfg, listing, checkpoint, source=where,
                            components=components if checkpoint == args.component else None)
        print("\n".join(cov.lines()))
        ok &= not cov.has_problems
    return 0 if ok else 1


def _convert(args) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.conversion.components import open_reference
    from baichuan_audio_jax.conversion.convert import bundle_to_torch, torch_to_bundle

    if not args.src_format or not args.dst_format:
        raise CLIError("say what to convert: --from torch --to orbax, --from orbax --to torch, --dry-run or "
                       "--init-from-qwen2/--init-from-whisper")
    if args.src_format == args.dst_format:
        raise CLIError(f"--from and --to are both {args.src_format}")
    if not args.input:
        raise CLIError("--input is required")
    if not args.output:
        raise CLIError("--output is required")
    progress = not args.no_progress
    if args.src_format == "torch":
        components = _components(args)
        src = open_reference(args.input, args.component)
        model_config = _model_config(args, src.config if args.component == "model" else None, src.config_path)
        result = torch_to_bundle(src, args.output, model_config, checkpoint=args.component, components=components,
                                 dtype=_dtype(args), tokenizer=args.tokenizer, overwrite=args.overwrite,
                                 progress=progress)
        print("\n".join(result.coverage.lines()))
    else:
        if len(args.input) != 1:
            raise CLIError("--from orbax takes one bundle as --input")
        if args.config:
            raise CLIError("--from orbax: the bundle carries its config; --config is not used")
        if args.components:
            raise CLIError("--from orbax: every component of the bundle is written; --components is not used")
        result = bundle_to_torch(args.input[0], args.output, checkpoint=args.component, dtype=_dtype(args),
                                 max_shard_bytes=args.max_shard_size, overwrite=args.overwrite, progress=progress)
    for note in result.notes:
        print(f"note: {note}")
    for warning in result.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(result.summary())
    return 0


def _init(args) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.conversion.hf_init import init_from_hf

    if not args.output:
        raise CLIError("--output is required")
    if not args.config:
        raise CLIError("--init-from-* needs --config (the geometry of the model to build)")
    if args.input or args.src_format or args.dst_format:
        raise CLIError("--init-from-* takes its sources from --init-from-qwen2/--init-from-whisper, not --input/"
                       "--from/--to")
    sources = {}
    if args.init_from_qwen2:
        sources["qwen2"] = args.init_from_qwen2
    if args.init_from_whisper:
        sources["whisper"] = args.init_from_whisper
    model_config = _model_config(args)
    result = init_from_hf(sources, args.output, model_config, seed=args.seed, dtype=_dtype(args),
                          tokenizer=args.tokenizer, overwrite=args.overwrite, progress=not args.no_progress)
    for note in result.notes:
        print(f"note: {note}")
    for warning in result.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(result.summary())
    return 0
