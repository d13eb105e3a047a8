"""``baichuan-audio vocode``: 24 kHz log-mel -> waveform with the HiFT vocoder."""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

HELP = ("Synthesise a 24 kHz WAV with the HiFT vocoder. The mel is computed from an audio file "
        "(any format soundfile reads, resampled to 24 kHz: an analysis-resynthesis check of a "
        "vocoder checkpoint) or read from a .npy array [frames, 80]. Weights come from --vocoder "
        "(hift.pt or .safetensors, either weight-norm naming) or are random from the config.")
ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="audio file to analyse into a 24 kHz mel")
    src.add_argument("--mel", help=".npy file holding a [frames, 80] natural-log 24 kHz mel")
    p.add_argument("--vocoder", help="vocoder checkpoint (hift.pt or .safetensors) or a model bundle with a vocoder; "
                                     "random weights if omitted")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.py"),
                   help="config for random weights and mel parameters (default: configs/tiny.py)")
    p.add_argument("--out", required=True, help="output WAV path")
    p.add_argument("--seed", type=int, default=0, help="seed of the source randomness (and random weights)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="refuse longer input audio")


def run(args: argparse.Namespace) -> int:

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    import jax
    from flax import nnx

    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.audio.io import AudioError, load_audio
    from baichuan_audio_jax.audio.mel24k import log_mel_24k
    from baichuan_audio_jax.cli.main import CLIError
    from baichuan_audio_jax.config import ModelConfig, load_config
    from baichuan_audio_jax.conversion.bundle import BundleError, is_bundle, load_bundle
    from baichuan_audio_jax.conversion.components import open_reference
    from baichuan_audio_jax.conversion.mapping import MappingError
    from baichuan_audio_jax.conversion.torch_io import CheckpointError
    from baichuan_audio_jax.conversion.vocoder import load_vocoder
    from baichuan_audio_jax.inference.waveform import SAMPLE_RATE, mel_to_wave, write_wav
    from baichuan_audio_jax.models.hift import HiFTGenerator
    from baichuan_audio_jax.models.pure import init_model

    cfg = ModelConfig.from_config(load_config(args.config, args.config_overrides).model)
    fm = cfg.flow_matching
    if fm.sampling_rate != SAMPLE_RATE:
        raise CLIError(f"config flow_matching.sampling_rate is {fm.sampling_rate}; the vocoder writes {SAMPLE_RATE} Hz")
    if args.vocoder:
        try:
            if is_bundle(args.vocoder):
                vocoder = load_bundle(args.vocoder, components=[], vocoder=True).vocoder
            else:
                vocoder = load_vocoder(open_reference(args.vocoder, "vocoder"))
        except (BundleError, CheckpointError, MappingError, ValueError) as e:
            raise CLIError(f"{args.vocoder}: {e}") from e
        origin = args.vocoder
    else:
        vocoder = init_model(lambda: HiFTGenerator(cfg.vocoder, rngs=nnx.Rngs(args.seed)))
        origin = "random weights"
    n_mels = vocoder.cfg.in_channels
    if args.audio:
        try:
            wave = load_audio(args.audio, fm.sampling_rate, min_samples=fm.hop_length,
                              max_seconds=args.max_seconds)
        except AudioError as e:
            raise CLIError(str(e)) from e
        mel = np.asarray(log_mel_24k(wave, fm, n_mels))
    else:
        if not os.path.exists(args.mel):
            raise CLIError(f"mel file not found: {args.mel}")
        try:
            mel = np.load(args.mel)
        except ValueError as e:
            raise CLIError(f"{args.mel}: not a .npy array ({e})") from e
        if mel.ndim != 2 or mel.shape[1] != n_mels or mel.shape[0] == 0:
            raise CLIError(f"{args.mel}: expected a [frames, {n_mels}] mel, got shape {mel.shape}")
    t0 = time.perf_counter()
    out, _ = mel_to_wave(vocoder, mel[None].astype(np.float32), key=jax.random.key(args.seed))
    out = np.asarray(out[0])
    elapsed = time.perf_counter() - t0
    write_wav(args.out, out, SAMPLE_RATE)
    seconds = len(out) / SAMPLE_RATE
    print(f"vocoded {mel.shape[0]} mel frames -> {len(out)} samples ({seconds:.2f} s at {SAMPLE_RATE} Hz) "
          f"with {origin} in {elapsed:.1f}s (incl. compilation); wrote {args.out}")
    return 0
