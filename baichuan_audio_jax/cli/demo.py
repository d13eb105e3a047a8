"""``baichuan-audio demo``: the embedded default job (``make demo``)."""
from __future__ import annotations

import argparse
import json
import os

HELP = ("Train every model from scratch on the bundled demo corpus (audio tokenizer, flow-matching "
        "decoder, audio LLM stage 1 and 2 on ASR/TTS/ITTS), assemble them into a model bundle "
        "(OUT/model, usable by `generate --checkpoint`), transcribe the held-out utterances, speak a few "
        "held-out sentences (OUT/eval/tts/*.wav) and write OUT/report.json (word error rates, tokenizer mel "
        "MAE, losses and wall time per stage). Runs resume: a second run into OUT evaluates again.")
ACCEPTS_CONFIG_OVERRIDES = True
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.path.normpath(DEFAULT_CONFIG), help="demo config (configs/demo.py)")
    p.add_argument("--out", default="demo_out", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")


def run(args: argparse.Namespace) -> int:
    # lazy: CLI start-up (`baichuan-audio --help` imports every subcommand module)
    from baichuan_audio_jax.config import load_config
    from baichuan_audio_jax.demo.pipeline import REPORT_FILE, Demo

    config = load_config(args.config, args.config_overrides, run=False)
    report = Demo(config, args.out, progress=not args.no_progress).run()
    ev = report["evaluation"]
    print(json.dumps({
        "heldout_asr_wer": ev["asr"]["wer"], "tts_round_trip_wer": ev["tts"]["round_trip_wer"],
        "tokenizer_heldout_mel_mae": report["audio_tokenizer"]["heldout_mel_mae"],
        "wall_seconds": report["wall_seconds"], "model": report["model"],
        "report": os.path.join(os.path.abspath(args.out), REPORT_FILE)}, indent=1))
    return 0
