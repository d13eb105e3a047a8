"""The run sections of a config: what ``train`` (and the tools around it) read besides ``model``.

Every section is a dataclass whose fields carry their default and a one-line doc; this is the one
place a run setting is declared. :func:`default_run_config` composes them into the
``ml_collections.ConfigDict`` that ``configs/*.py`` start from, and
:func:`baichuan_audio_jax.config.loading.load_config` resolves a config file against it, so an
unknown or misplaced key fails with the closest valid name. ``baichuan-audio train --config C
--print-config`` lists every field with its value and doc.

Sections (top level: :class:`RunSection`):

* ``mesh`` (:class:`MeshSection`): device mesh sizes.
* ``init_from`` (:class:`InitFromSection`): parts of the model that start from trained weights.
* ``data`` (:class:`DataSection`, ``data.prompts``: :class:`PromptsSection`): batch geometry and
  the data pipelines' settings.
* ``train`` (:class:`TrainSection`): optimiser, schedule and loss options; task sections below it:
  ``train.tokenizer`` (:class:`TokenizerSection`, task ``audio_tokenizer``), ``train.vocoder``
  (:class:`VocoderTrainSection`, task ``vocoder``).
* ``checkpoint`` (:class:`CheckpointSection`).
* ``eval`` (:class:`EvalSection`): the suite ``train`` runs every ``eval_every`` steps.

A new task with settings of its own adds a section class here and a field of that type to the
section it belongs under (usually :class:`TrainSection`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections


def setting(default: Any, doc: str) -> Any:
    """A section field: its default and its one-line doc (lists and dicts are copied per config)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def section(cls: type, doc: str) -> Any:
    """A field holding a nested section."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc})


def _copy(v: Any) -> Any:
    if isinstance(v, list):
        return [_copy(x) for x in v]
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    return v


@dataclasses.dataclass
class MeshSection:
    """``mesh``: device mesh sizes (their product is the device count; one may be -1: fills)."""

    data: int = setting(-1, "data-parallel axis (batch rows)")
    fsdp: int = setting(1, "fully sharded data-parallel axis (batch rows and parameter shards)")
    tensor: int = setting(1, "tensor-parallel axis (heads, MLP and vocabulary)")


@dataclasses.dataclass
class InitFromSection:
    """``init_from``: parts of this run's model that start from trained weights (training/
    initial_weights.py): a training run (``RUN``, ``RUN#part``) or a bundle (``BUNDLE#part``);
    '' = random. The common parts are declared; a config file may add any other part path of the
    model (e.g. ``init_from["tokenizer/audio_encoder"]``), checked against the model when the run
    starts."""

    model: str = setting("", "this run's whole model, e.g. 'runs/stage1#' for stage 2, 'BUNDLE#llm'")
    llm: str = setting("", "the language model part (tasks whose model has one), e.g. 'runs/llm_text#'")
    tokenizer: str = setting("", "the audio tokenizer part, e.g. 'runs/tokenizer_tiny'")


@dataclasses.dataclass
class PromptsSection:
    """``data.prompts``: instructions the data pipelines put before task inputs."""

    asr: str = setting("将语音转录为文本:", "ASR instruction")
    aqa: str = setting("", "audio question answering instruction")
    s2tt: str = setting("将语音翻译为{target_language}:", "speech translation instruction ({target_language} filled)")
    system: str = setting("", "system prompt of every conversation ('' = none)")


@dataclasses.dataclass
class DataSection:
    """``data``: batch geometry plus the settings of the data sources (docs/data.md)."""

    source: str = setting("synthetic", "registered data source: synthetic | grain | grain_audio")
    batch_size: int = setting(8, "GLOBAL rows per optimizer step")
    seq_len: int = setting(512, "positions per row (audio tasks: log-mel frames per row)")
    seed: int = setting(0, "shuffling and synthetic-data seed")
    sources: list = setting([], "grain: manifest/shard paths, or {path|name, kind, weight, split, data_dir} mappings")
    tokenizer: str = setting("", "text tokenizer: tokenizer.json or a sentencepiece .model")
    audio_tokenizer: str = setting("", "'module:factory' giving codes for JSONL audio on the fly ('' = pre-tokenized)")
    prompts: PromptsSection = section(PromptsSection, "task instructions")
    packing: str = setting("first_fit", "packing of sequences into rows: first_fit | best_fit | none")
    packing_bins: int = setting(0, "rows packed together (0: the per-host batch rows)")
    shuffle: bool = setting(True, "shuffle records every epoch")
    num_epochs: int = setting(0, "passes over the data (0: repeat forever)")
    max_audio_seconds: float = setting(300.0, "on-the-fly audio longer than this is skipped")
    read_threads: int = setting(4, "threads reading records")
    prefetch: int = setting(128, "records read ahead")
    worker_count: int = setting(0, "grain worker processes (0: in the training process)")
    max_consecutive_skips: int = setting(10_000, "stop when this many records in a row are skipped")
    segments_per_row: int = setting(2, "synthetic: packed segments per row")
    audio_fraction: float = setting(0.5, "synthetic: share of audio frames in a segment")
    text_len: int = setting(0, "grain_audio (audio_tokenizer task): transcript ids + EOS per row")
    speed_perturb: list = setting([], "grain_audio: speed factors drawn per record, e.g. [0.9, 1.0, 1.1] ([]: off)")


@dataclasses.dataclass
class TokenizerSection:
    """``train.tokenizer`` (task ``audio_tokenizer``): codebook learning and loss weights (paper §3.1)."""

    ema_decay: float = setting(0.99, "EMA decay α of the codebook statistics")
    l2_beta: float = setting(0.01, "β of the L2-norm constraint c = (1 − β)·c′")
    laplace_eps: float = setting(1e-5, "Laplace smoothing of the EMA cluster sizes")
    restart_after: int = setting(20, "steps a code may stay unused before it is restarted")
    gumbel_temperature: float = setting(0.5, "Gumbel-softmax sampling of codes in training (0: nearest)")
    layer_dropout: float = setting(0.1, "per-instance probability of dropping RVQ stages 2..8")
    replace_schedule: list = setting([[0, 0.1], [360, 1.0]],
                                     "[[step, share], ...]: share of instances whose encoder output is quantised")
    commit_weight_schedule: list = setting([[0, 0.02], [360, 0.1]], "[[step, weight], ...]: commitment loss weight")
    recon_weight: float = setting(1.0, "λ1: mel reconstruction loss weight (eq. 1)")
    multiscale_weight: float = setting(1.0, "multi-scale mel loss weight")
    llm_weight: float = setting(0.2, "λ2: alignment loss weight (the frozen LLM reads the codes)")


@dataclasses.dataclass
class VocoderTrainSection:
    """``train.vocoder`` (task ``vocoder``): HiFi-GAN loss weights and the discriminators."""

    mel_weight: float = setting(45.0, "generator loss = mel_weight · 24 kHz log-mel L1 + ...")
    feature_weight: float = setting(2.0, "... + feature_weight · discriminator feature matching + ...")
    adversarial_weight: float = setting(1.0, "... + adversarial_weight · least-squares adversarial loss")
    adversarial_start_step: int = setting(0, "steps before it: the generator learns from the mel loss alone")
    discriminator_learning_rate: float = setting(0.0, "peak LR of the discriminators' AdamW (0: learning_rate)")
    periods: list = setting([2, 3, 5, 7, 11], "multi-period discriminator: one sub-discriminator per period")
    resolutions: list = setting([[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]],
                                "multi-resolution spectrogram discriminator: one per [n_fft, hop, window]")


@dataclasses.dataclass
class EncoderASRSection:
    """``train.encoder_asr`` (task ``encoder_asr``): SpecAugment-style masks (0 masks: off)."""

    freq_masks: int = setting(2, "bands of mel bins masked per row")
    freq_width: int = setting(15, "widest band (mel bins)")
    time_masks: int = setting(2, "spans of frames masked per row")
    time_width: float = setting(0.08, "widest span, as a fraction of the row's valid frames")


@dataclasses.dataclass
class TrainSection:
    """``train``: AdamW with a warmup + cosine schedule, clipping, accumulation and loss options."""

    learning_rate: float = setting(3e-4, "peak learning rate")
    min_learning_rate: float = setting(3e-5, "learning rate at the end of the cosine decay")
    warmup_steps: int = setting(100, "linear warmup steps")
    decay_steps: int = setting(0, "cosine decay steps (0: `steps`)")
    b1: float = setting(0.9, "AdamW β1")
    b2: float = setting(0.95, "AdamW β2")
    eps: float = setting(1e-8, "AdamW ε")
    weight_decay: float = setting(0.1, "AdamW weight decay (matrices only)")
    max_grad_norm: float = setting(1.0, "global gradient-norm clipping (0: off)")
    grad_accum_steps: int = setting(1, "microbatches per optimizer step (the global batch is split)")
    audio_loss_weight: float = setting(1.0, "loss = text CE + audio_loss_weight · audio CE")
    max_audio_positions: int = setting(0, "audio-head positions evaluated per row (0: seq_len)")
    loss_chunk_size: int = setting(0, "positions per chunk of the vocabulary CE (0: one chunk)")
    peak_flops_per_device: float = setting(0.0, "device peak FLOP/s for model FLOPs utilisation (0: not reported)")
    embed_dropout: float = setting(0.0, "audio LLM: dropout on the input embeddings (0: off)")
    residual_dropout: float = setting(0.0, "audio LLM: dropout on attention and MLP outputs before the residual add")
    mlp_dropout: float = setting(0.0, "audio LLM: dropout on the MLP's hidden activations")
    nonfinite: str = setting("stop", "NaN/inf loss or gradient: stop (exit naming the step) | skip (update skipped)")
    spike_factor: float = setting(3.0, "log a loss / grad-norm spike above this times its running average (0: off)")
    tokenizer: TokenizerSection = section(TokenizerSection, "task audio_tokenizer")
    vocoder: VocoderTrainSection = section(VocoderTrainSection, "task vocoder")
    encoder_asr: EncoderASRSection = section(EncoderASRSection, "task encoder_asr")


@dataclasses.dataclass
class CheckpointSection:
    """``checkpoint``: how checkpoints are kept."""

    max_to_keep: int = setting(3, "checkpoints kept in WORKDIR/checkpoints")
    async_save: bool = setting(True, "save in the background while training goes on")


@dataclasses.dataclass
class EvalSection:
    """``eval``: the evaluation suite ``train`` runs every ``eval_every`` steps (docs/evaluation.md)."""

    suite: str = setting("", "evaluation suite file; results under WORKDIR/eval/step_<N>")
    speech_bundle: str = setting("", "bundle whose audio tokenizer encodes audio inputs ('': text-only tasks)")
    batch_size: int = setting(8, "records decoded or scored together")
    heldout: list = setting([], "held-out data (data.sources entries) for the held-out loss ([]: none)")
    heldout_batches: int = setting(4, "batches of held-out data per evaluation")


@dataclasses.dataclass
class RunSection:
    """The top level of a run config (``model`` is added by the config file; see config/model.py)."""

    task: str = setting("audio_llm", "what train trains: audio_llm | audio_tokenizer | flow_matching")
    seed: int = setting(0, "parameter initialisation and dropout seed")
    steps: int = setting(1000, "total optimizer steps")
    log_every: int = setting(10, "steps between metric lines")
    checkpoint_every: int = setting(500, "steps between checkpoints")
    eval_every: int = setting(0, "run the eval suite every N steps on the live parameters (0: never)")
    stage: int = setting(0, "0: train everything; 1: audio embeddings + audio head; 2: all but text "
                            "embedding and LM head (paper §3.3)")
    init_from: InitFromSection = section(InitFromSection, "trained weights to start from")
    mesh: MeshSection = section(MeshSection, "device mesh")
    data: DataSection = section(DataSection, "input data")
    train: TrainSection = section(TrainSection, "optimisation")
    checkpoint: CheckpointSection = section(CheckpointSection, "checkpoints")
    eval: EvalSection = section(EvalSection, "periodic evaluation")


def to_config_dict(sec: Any) -> ml_collections.ConfigDict:
    """A section instance as a ConfigDict (nested sections become nested ConfigDicts)."""
    out = {}
    for f in dataclasses.fields(sec):
        v = getattr(sec, f.name)
        out[f.name] = to_config_dict(v) if dataclasses.is_dataclass(v) else v
    return ml_collections.ConfigDict(out)


def default_run_config() -> ml_collections.ConfigDict:
    """Every run section with its defaults (no ``model`` section: config files add it)."""
    return to_config_dict(RunSection())


def default_data_config() -> ml_collections.ConfigDict:
    """The ``data`` section with its defaults."""
    return to_config_dict(DataSection())


def field_docs(cls: type = RunSection, prefix: str = "") -> dict[str, str]:
    """``{"a.b": doc}`` for every field of a section class and of its nested sections."""
    docs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        docs[key] = f.metadata.get("doc", "")
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            docs.update(field_docs(sub, key + "."))
    return docs
