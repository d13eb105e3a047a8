"""The demo: every model of the system trained from scratch on a transcribed speech corpus, then
assembled into a model bundle and used for speech recognition and speech synthesis.

Stages (each a function of the demo config, writing under the output directory ``OUT``):

1. ``text_tokenizer``: a sentencepiece model of the transcripts and prompts, its special tokens at
   the model config's ids (``OUT/text_tokenizer.model``);
2. ``llm_text``: the LLM pretrained on the transcripts as pure text (``OUT/runs/llm_text``): the
   stand-in for the pretrained text LLM (Qwen2.5) the paper starts from, which a model built from
   scratch does not have;
3. ``encoder_asr``: the audio encoder pretrained as a speech recogniser (a CTC head over it,
   ``configs/encoder_asr_tiny.py``, with speed perturbation and SpecAugment-style masking;
   ``OUT/runs/encoder_asr``): the stand-in for the pretrained Whisper encoder the paper's
   tokenizer starts from; then its CTC head's held-out word error rate (``encoder_asr_steps=0``
   skips it: the tokenizer's encoder then starts at random);
4. ``audio_tokenizer``: the RVQ tokenizer (``configs/tokenizer_tiny.py``'s recipe, paper §3.1,
   its alignment loss read by that text LLM, frozen; ``OUT/runs/audio_tokenizer``), its encoder
   loaded from step 3 (``init_from``, the path a converted Whisper encoder takes) and kept frozen
   with ``tokenizer_freeze_encoder``; then its held-out mel MAE and code use;
5. ``flow_matching``: the flow-matching decoder on the frozen tokenizer (``configs/flow_tiny.py``,
   §3.2; ``OUT/runs/flow_matching``);
6. ``tokenize``: ASR, TTS and ITTS manifests derived from the corpus (:mod:`.corpus`), tokenized
   to ArrayRecord shards by the trained tokenizer, plus ASR records of two utterances back to back
   (an augmentation against memorising the few hundred utterances; ``OUT/data``);
7. ``llm_stage1`` and ``llm_stage2``: the audio LLM's two pretraining stages (§3.3) on the mixture
   of those shards through the Grain pipeline (``OUT/runs/llm_stage1``, ``OUT/runs/llm_stage2``;
   stage 1 starts from the text LLM, stage 2 from stage 1), with the dropout rates of the config;
8. ``vocoder``: the HiFT vocoder on the corpus audio (``configs/vocoder_demo.py``,
   :mod:`.vocoder_stage`; ``OUT/runs/vocoder``), with its held-out mel L1 (``vocoder_steps=0``,
   the default: skipped);
9. ``bundle``: the trained LLM, audio tokenizer, flow-matching decoder and (when it beats
   Griffin-Lim) vocoder, the text tokenizer and the config as one model bundle (``OUT/model``,
   what ``generate --checkpoint`` reads). Without a vocoder speech is rendered by Griffin-Lim;
10. ``evaluate``: held-out transcription (word error rate), a few held-out sentences spoken
   (``OUT/eval/tts/<line>.wav``) and transcribed back by the same model (round-trip word error rate).

Training runs resume from their checkpoints, so running the demo again into the same ``OUT``
skips finished training and evaluates again. ``OUT/report.json`` holds the numbers and the wall
time of every stage.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Any, Callable

import ml_collections
from flax import nnx

from baichuan_audio_jax import audio_batch
from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.audio.whisper_logmel import ENCODER_LOWPASS_FILTER_WIDTH
from baichuan_audio_jax.config import ModelConfig, load_config
from baichuan_audio_jax.demo.assemble import assemble_bundle
from baichuan_audio_jax.demo.corpus import transcripts, write_concatenated_asr, write_task_manifests
from baichuan_audio_jax.demo.evaluation import evaluate_bundle
from baichuan_audio_jax.demo.vocoder_stage import train_vocoder
from baichuan_audio_jax.evaluation.metrics import wer as word_error_rate
from baichuan_audio_jax.evaluation.tokenizer_metrics import evaluate_manifest
from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
from baichuan_audio_jax.inference.tokenize_corpus import tokenize_manifest
from baichuan_audio_jax.records import read_manifest
from baichuan_audio_jax.text.tokenizer import load_text_tokenizer, train_sentencepiece
from baichuan_audio_jax.training.encoder_asr_task import greedy_decode
from baichuan_audio_jax.training.export import trained_model
from baichuan_audio_jax.training.metrics import read_metrics
from baichuan_audio_jax.training.trainer import train
from data_pipelines.manifest import record_texts

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
REPORT_FILE = "report.json"


def _run_config(name: str, demo: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    cfg = load_config(os.path.join(CONFIGS_DIR, name))
    cfg.model = ml_collections.ConfigDict(demo.model.to_dict())
    cfg.seed = int(demo.seed)
    return cfg


def scaled_schedule(schedule, from_steps: int, to_steps: int) -> list[list[float]]:
    """``[[step, value], ...]`` with its steps scaled from a run of ``from_steps`` to ``to_steps``."""
    return [[int(round(s * to_steps / from_steps)), v] for s, v in schedule]


def encoder_asr_config(demo, workdir_sp: str) -> ml_collections.ConfigDict:
    cfg = _run_config("encoder_asr_tiny.py", demo)
    steps = int(demo.encoder_asr_steps)
    cfg.steps = steps
    cfg.checkpoint_every = steps
    cfg.log_every = max(1, min(int(cfg.log_every), steps // 10 or 1))
    cfg.data.sources = [demo.train_manifest]
    cfg.data.tokenizer = workdir_sp
    cfg.data.speed_perturb = list(demo.encoder_asr_speed_perturb)
    if not demo.encoder_asr_spec_augment:
        cfg.train.encoder_asr.freq_masks = cfg.train.encoder_asr.time_masks = 0
    return cfg


def tokenizer_config(demo, workdir_sp: str, text_llm: str, asr_run: str = "") -> ml_collections.ConfigDict:
    """The audio tokenizer's run; its encoder starts from the ASR-pretrained one (``asr_run``)
    when there is one, and stays frozen with ``demo.tokenizer_freeze_encoder``."""
    cfg = _run_config("tokenizer_tiny.py", demo)
    steps = int(demo.tokenizer_steps)
    tc = cfg.train.tokenizer
    for key in ("replace_schedule", "commit_weight_schedule"):
        tc[key] = scaled_schedule(tc[key], int(cfg.steps), steps)
    tc.llm_weight = float(demo.tokenizer_llm_weight)
    cfg.steps = steps
    cfg.checkpoint_every = steps
    cfg.log_every = max(1, min(int(cfg.log_every), steps // 10 or 1))
    cfg.data.sources = [demo.train_manifest]
    cfg.data.tokenizer = workdir_sp
    cfg.init_from.llm = text_llm + "#"
    if asr_run:
        cfg.init_from["tokenizer/audio_encoder"] = asr_run + "#audio_encoder"
        cfg.stage = 1 if demo.tokenizer_freeze_encoder else 0
    return cfg


def flow_config(demo, tokenizer_run: str) -> ml_collections.ConfigDict:
    cfg = _run_config("flow_tiny.py", demo)
    steps = int(demo.flow_steps)
    cfg.steps = steps
    cfg.checkpoint_every = steps
    cfg.log_every = max(1, min(int(cfg.log_every), steps // 10 or 1))
    cfg.data.sources = [demo.train_manifest]
    cfg.init_from.tokenizer = tokenizer_run
    return cfg


def llm_config(demo, stage: int, shards: dict[str, str], text_tokenizer: str,
               init_from: str = "") -> ml_collections.ConfigDict:
    """Stage 0: pure text (``shards == {"text": manifest}``); stages 1 and 2: the mixture."""
    cfg = _run_config("tiny.py", demo)
    steps = int({0: demo.llm_text_steps, 1: demo.llm_stage1_steps, 2: demo.llm_stage2_steps}[stage])
    cfg.stage = stage
    cfg.steps = steps
    cfg.checkpoint_every = steps
    cfg.log_every = max(1, min(20, steps // 10 or 1))
    cfg.data.source = "grain"
    weights = {"text": 1.0} if stage == 0 else demo.mixture.to_dict()
    missing = [task for task, w in weights.items() if w > 0 and task not in shards]
    if missing:
        raise ValueError(f"mixture names {missing}, which the demo has no data for (it has {sorted(shards)})")
    cfg.data.sources = [{"path": shards[task], "weight": float(w)} for task, w in weights.items() if w > 0]
    cfg.data.tokenizer = text_tokenizer
    cfg.data.batch_size = int(demo.llm_batch_size)
    cfg.data.seq_len = int(demo.llm_seq_len)
    cfg.data.seed = int(demo.seed) + stage
    cfg.data.read_threads = 2
    cfg.data.prefetch = 16
    cfg.train.learning_rate = float(demo.llm_learning_rate)
    cfg.train.min_learning_rate = float(demo.llm_learning_rate) / 10
    cfg.train.warmup_steps = max(1, min(50, steps // 10))
    cfg.train.weight_decay = float(demo.llm_weight_decay)
    if stage > 0:
        cfg.train.embed_dropout = float(demo.llm_embed_dropout)
        cfg.train.residual_dropout = float(demo.llm_residual_dropout)
        cfg.train.mlp_dropout = float(demo.llm_mlp_dropout)
    # the audio head runs only where audio frames carry loss (none in pure text)
    cfg.train.max_audio_positions = 1 if stage == 0 else int(demo.llm_audio_positions)
    cfg.init_from.model = init_from
    return cfg


def loss_summary(workdir: str) -> dict:
    """First and last logged loss (and the other last-logged metrics) of a training run."""

    rows = read_metrics(workdir)
    if not rows:
        return {}
    keep = lambda r: {k: round(v, 4) for k, v in r.items()
                      if k in ("loss", "text_loss", "audio_loss", "mel_mae", "cfm_loss", "prior_loss", "llm_loss",
                              "ctc_loss")}
    return {"steps": rows[-1]["step"], "first": {"step": rows[0]["step"], **keep(rows[0])},
            "last": {"step": rows[-1]["step"], **keep(rows[-1])}}


class Demo:
    """Runs the stages in order, timing each and collecting the report."""

    def __init__(self, config: ml_collections.ConfigDict, out_dir: str, *, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.config = config
        self.out = os.path.abspath(out_dir)
        self.progress = progress
        self.log = log
        self.report: dict[str, Any] = {"wall_seconds": {}}
        os.makedirs(self.out, exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def fresh_dir(self, *parts: str) -> str:
        """A path under the output directory with nothing left from an earlier run (shards are
        stale once the tokenizer that wrote them has changed)."""
        path = self.path(*parts)
        shutil.rmtree(path, ignore_errors=True)
        return path

    @contextlib.contextmanager
    def stage(self, name: str):
        self.log(f"\n=== {name} ===")
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.report["wall_seconds"][name] = round(seconds, 1)
        self.log(f"=== {name}: {seconds:.0f} s ===")
        self.write_report()

    def write_report(self) -> None:
        with open(self.path(REPORT_FILE), "w", encoding="utf-8") as f:
            json.dump(self.report, f, indent=1, ensure_ascii=False)

    def train(self, config, name: str) -> str:
        workdir = self.path("runs", name)
        train(config, workdir, progress=self.progress, log=self.log)
        self.report.setdefault("training", {})[name] = loss_summary(workdir)
        return workdir

    def run(self) -> dict:
        demo, t_start = self.config, time.perf_counter()
        model_cfg = ModelConfig.from_config(demo.model)
        self.report["config"] = demo.to_dict()

        with self.stage("text_tokenizer"):
            sp = self.text_tokenizer(model_cfg)
        with self.stage("llm_text"):
            text_llm = self.train(llm_config(demo, 0, {"text": self.text_manifest()}, sp), "llm_text")
        asr_run = ""
        if int(demo.encoder_asr_steps) > 0:
            with self.stage("encoder_asr"):
                asr_run = self.train(encoder_asr_config(demo, sp), "encoder_asr")
                self.report["encoder_asr"] = self.evaluate_encoder_asr(asr_run, sp, demo.heldout_manifest)
                if demo.extra_heldout_manifest:
                    self.report["encoder_asr"]["extra"] = self.evaluate_encoder_asr(
                        asr_run, sp, demo.extra_heldout_manifest)
        with self.stage("audio_tokenizer"):
            tok_run = self.train(tokenizer_config(demo, sp, text_llm, asr_run), "audio_tokenizer")
            self.report["audio_tokenizer"] = self.evaluate_tokenizer(tok_run)
        with self.stage("flow_matching"):
            flow_run = self.train(flow_config(demo, tok_run), "flow_matching")
        with self.stage("tokenize"):
            shards = self.tokenize(tok_run)
        with self.stage("llm_stage1"):
            stage1 = self.train(llm_config(demo, 1, shards, sp, init_from=text_llm + "#"), "llm_stage1")
        with self.stage("llm_stage2"):
            stage2 = self.train(llm_config(demo, 2, shards, sp, init_from=stage1 + "#"), "llm_stage2")
        with self.stage("vocoder"):
            vocoder_run = train_vocoder(self, CONFIGS_DIR)
        with self.stage("bundle"):
            bundle = assemble_bundle(self.path("model"), demo.model, llm_run=stage2, tokenizer_run=tok_run,
                                     flow_run=flow_run, text_tokenizer=sp, vocoder_run=vocoder_run)
            self.report["model"] = bundle
        with self.stage("evaluate"):
            self.report["evaluation"] = evaluate_bundle(
                bundle, demo.heldout_manifest, self.out, asr_utterances=int(demo.asr_utterances),
                tts_sentences=int(demo.tts_sentences), log=self.log, progress=self.progress)
            if demo.extra_heldout_manifest:
                self.log(f"second held-out set: {demo.extra_heldout_manifest}")
                extra = evaluate_bundle(bundle, demo.extra_heldout_manifest, self.out, tts_sentences=0, log=self.log,
                                        progress=self.progress)
                self.report["evaluation_extra"] = {"manifest": demo.extra_heldout_manifest, "asr": extra["asr"]}
        self.report["wall_seconds"]["total"] = round(time.perf_counter() - t_start, 1)
        self.write_report()
        return self.report

    # ------------------------------------------------------------------ stages

    def text_tokenizer(self, model_cfg) -> str:
        demo = self.config
        prompts = load_config(os.path.join(CONFIGS_DIR, "tiny.py")).data.prompts.to_dict()
        texts = [t for t in prompts.values() if t]
        for _, rec in read_manifest(demo.train_manifest):
            if isinstance(rec, dict):
                texts.extend(record_texts(rec))
        out = self.path("text_tokenizer.model")
        tok = train_sentencepiece(texts, out, model_cfg.tokens, vocab_size=model_cfg.llm.vocab_size)
        self.log(f"sentencepiece model of {len(texts)} texts: {tok.vocab_size} ids -> {out}")
        return out

    def text_manifest(self) -> str:
        """The training transcripts as pure-text records."""

        path = self.path("data", "text.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for _, text in transcripts(self.config.train_manifest):
                f.write(json.dumps({"task": "text", "text": text}, ensure_ascii=False) + "\n")
        return path

    def evaluate_tokenizer(self, tok_run: str) -> dict:
        model, config, step = trained_model(tok_run)
        rep = evaluate_manifest(model.tokenizer, config, self.config.heldout_manifest, progress=self.progress,
                                log=self.log)
        summary = {"step": step, "heldout_mel_mae": round(float(rep["mel_mae"]), 4),
                   "heldout_coarse_mae": round(float(rep["coarse_mae"]), 4),
                   "heldout_codes_used_fraction": round(float(rep["codes_used_fraction"]), 4),
                   "heldout_records": rep["records"], "skipped": rep["skipped"]}
        self.log(f"held-out mel MAE {summary['heldout_mel_mae']}")
        return summary

    def evaluate_encoder_asr(self, asr_run: str, sp: str, manifest: str) -> dict:
        """Word error rate of the ASR-pretrained encoder's CTC head (greedy best path) on a held-out
        manifest: how much of the words the encoder's features carry before the tokenizer trains
        on them."""


        model, config, step = trained_model(asr_run)
        cfg = ModelConfig.from_config(config.model)
        tok = load_text_tokenizer(sp)
        pairs = transcripts(manifest)
        rows = [audio_batch.asr_example(load_audio(a, cfg.audio_encoder.sampling_rate,
                                                   lowpass_filter_width=ENCODER_LOWPASS_FILTER_WIDTH), cfg, [])
                for a, _ in pairs]
        longest = max(int(r["feature_lengths"]) for r in rows)
        batch = audio_batch.pad_rows(rows, audio_batch.asr_row_shapes(cfg, longest, 1))
        hyps = [tok.decode([int(i) for i in ids]).strip() for ids in
                greedy_decode(model, batch["features"], batch["feature_lengths"])]
        wer = round(word_error_rate([t for _, t in pairs], hyps), 4)
        self.log(f"encoder CTC head: WER {wer:.1%} over {len(pairs)} utterances of {manifest}")
        return {"step": step, "heldout_ctc_wer": wer, "utterances": len(pairs),
                "examples": [{"reference": t, "hypothesis": h} for (_, t), h in list(zip(pairs, hyps))[:8]]}

    def tokenize(self, tok_run: str) -> dict[str, str]:
        model, config, _ = trained_model(tok_run)
        runtime = AudioTokenizerRuntime(ModelConfig.from_config(config.model), nnx.state(model.tokenizer))
        derived = write_task_manifests(self.config.train_manifest, self.path("data"),
                                       group=int(self.config.itts_utterances), seed=int(self.config.seed))
        shards, summary = {}, {"records": derived["records"], "manifest_skipped": derived["skipped"], "skipped": {}}
        for task, manifest in derived["manifests"].items():
            out = self.fresh_dir("data", f"{task}_shards")
            result = tokenize_manifest(runtime, manifest, out, verbose=self.progress)
            summary["skipped"][task] = result["skipped"]
            shards[task] = out
        count = int(self.config.concatenated_asr)
        if count > 0:
            out = self.fresh_dir("data", "asr_concatenated_shards")
            write_concatenated_asr(shards["asr"], out, count=count, seed=int(self.config.seed))
            shards["asr_concatenated"] = out
            summary["records"]["asr_concatenated"] = count
        self.report["tokenize"] = summary
        return shards
