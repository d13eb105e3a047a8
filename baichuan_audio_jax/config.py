"""Configuration: ml_collections for users, frozen dataclasses for modules.

A run is described by one ``ml_collections.ConfigDict`` (``configs/*.py`` return one from
``get_config()``), overridable on the command line with ``--config.a.b=value``. Its ``model``
section has one sub-section per component, with the same field names in every config:

* ``llm``: the Qwen2.5-style decoder (``hidden_size``, ``num_layers``, ...);
* ``audio_head``: the depth transformer over the RVQ codebooks;
* ``audio_encoder``, ``vq_bridge``, ``audio_decoder``: the audio tokenizer;
* ``flow_matching``: prenet, U-Net estimator and CFM sampler;
* ``vocoder``: the 24 kHz HiFT generator;
* ``tokens``: special token ids.

Modules never read a ConfigDict: ``ModelConfig.from_config(config.model)`` turns the section into
hashable frozen dataclasses, which are safe to keep as static module attributes under ``jax.jit``.

A reference-format ``config.json`` (the Hugging Face config of the released checkpoint, also the
``tiny_config`` of a parity manifest) is read by :func:`model_config_from_reference`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

# Real special ids (reference §6.1); the tiny configs use their own small ids.
REAL_TOKEN_IDS = dict(
    eos_token_id=151643,
    pad_token_id=151643,
    im_start_token_id=151644,
    im_end_token_id=151645,
    system_token_id=151665,  # <B_SYS>
    user_system_token_id=151666,  # <B_USYS>
    user_token_id=151667,  # <C_Q>
    assistant_token_id=151668,  # <C_A>
    audio_start_token_id=151676,
    audio_end_token_id=151677,
    audio_pad_token_id=151678,
    audio_delim_token_id=151693,
    audiotext_start_token_id=151697,
    audiotext_end_token_id=151698,
    audiotext_pad_token_id=151699,
    audiogen_start_token_id=151700,
    audiogen_end_token_id=151701,
)
TOKEN_FIELDS = tuple(REAL_TOKEN_IDS)
# Token ids stored in the reference audio_config (the rest of the vocabulary lives in the tokenizer).
_AUDIO_CONFIG_TOKEN_FIELDS = (
    "audio_start_token_id", "audio_end_token_id", "audio_pad_token_id", "audio_delim_token_id",
    "audiotext_start_token_id", "audiotext_end_token_id", "audiotext_pad_token_id",
    "audiogen_start_token_id", "audiogen_end_token_id",
)
REAL_CODEBOOK_SIZES = (8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024)


# --------------------------------------------------------------------------------------------
# Frozen dataclasses used by modules.
# --------------------------------------------------------------------------------------------

class _FromDict:
    """Mixin: build a dataclass from a mapping, ignoring unknown keys, converting lists."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in dict(d).items():
            if k not in names:
                continue
            kw[k] = _freeze(v)
        return cls(**kw)


def _freeze(v):
    if isinstance(v, ml_collections.ConfigDict):
        v = v.to_dict()
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


@dataclasses.dataclass(frozen=True)
class LLMConfig(_FromDict):
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    qkv_bias: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int = 0


@dataclasses.dataclass(frozen=True)
class AudioHeadConfig(_FromDict):
    num_layers: int = 3
    head_dim: int = 128  # num_heads = hidden_size // head_dim (the reference's rule)
    rms_norm_eps: float = 1e-6  # fixed default in the reference, not llm.rms_norm_eps
    ffn_multiplier: int = 2


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig(_FromDict):
    num_mel_bins: int = 128
    d_model: int = 1280
    num_layers: int = 32
    num_heads: int = 20
    ffn_dim: int = 5120
    kernel_size: int = 3
    stride_size: int = 2
    max_source_positions: int = 1500
    sampling_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    max_audio_seconds: int = 30
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class VQBridgeConfig(_FromDict):
    d_model: int = 1280
    avg_pooler: int = 4
    codebook_sizes: tuple = REAL_CODEBOOK_SIZES
    layer_norm_eps: float = 1e-5

    @property
    def intermediate_dim(self) -> int:
        return self.d_model * self.avg_pooler


@dataclasses.dataclass(frozen=True)
class AudioDecoderConfig(_FromDict):
    d_model: int = 1280
    num_layers: int = 8
    num_heads: int = 20
    ffn_dim: int = 5120
    kernel_size: int = 3  # dconv2 kernel (decoder_kernel_size)
    stride_size: int = 2  # dconv2 stride (decoder_stride_size)
    avg_pooler: int = 4  # dconv1 stride
    max_source_positions: int = 3000
    num_mel_bins: int = 80  # coarse/refined mel bins (vocoder_config.num_mel_bins)
    post_net_channels: tuple = (256, 256, 256, 256, 256)
    mel_sampling_rate: int = 16000  # legacy refined-mel path (vocoder_config)
    mel_hop_length: int = 256
    encoder_hop_length: int = 160
    encoder_sampling_rate: int = 16000
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class FlowMatchingConfig(_FromDict):
    prenet_in_dim: int = 1280
    prenet_out_dim: int = 80
    prenet_d_model: int = 512
    prenet_attention_heads: int = 8
    prenet_ffn_dim: int = 2048
    prenet_nlayers: int = 12
    prenet_max_source_positions: int = 5000
    prenet_target_mel_length_scale_ratio: float = 1.0
    in_channels: int = 80
    spk_emb_dim: int = 0
    channels: tuple = (256,)
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    attention_head_dim: int = 64
    static_chunk_size: int = 100
    diffusion_steps: int = 10
    sigma_min: float = 1e-6
    t_scheduler: str = "cosine"
    training_cfg_rate: float = 0.2
    inference_cfg_rate: float = 0.7
    sampling_rate: int = 24000
    hop_length: int = 480
    n_fft: int = 1920
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float = 8000.0
    prenet_loss_weight: float = 1.0
    loss_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class VocoderConfig(_FromDict):
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple = (8, 5, 3)
    upsample_kernel_sizes: tuple = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop_len: int = 4
    resblock_kernel_sizes: tuple = (3, 7, 11)
    resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple = (7, 7, 11)
    source_resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512
    f0_num_class: int = 1


@dataclasses.dataclass(frozen=True)
class SpecialTokens(_FromDict):
    eos_token_id: int = REAL_TOKEN_IDS["eos_token_id"]
    pad_token_id: int = REAL_TOKEN_IDS["pad_token_id"]
    im_start_token_id: int = REAL_TOKEN_IDS["im_start_token_id"]
    im_end_token_id: int = REAL_TOKEN_IDS["im_end_token_id"]
    system_token_id: int = REAL_TOKEN_IDS["system_token_id"]
    user_system_token_id: int = REAL_TOKEN_IDS["user_system_token_id"]
    user_token_id: int = REAL_TOKEN_IDS["user_token_id"]
    assistant_token_id: int = REAL_TOKEN_IDS["assistant_token_id"]
    audio_start_token_id: int = REAL_TOKEN_IDS["audio_start_token_id"]
    audio_end_token_id: int = REAL_TOKEN_IDS["audio_end_token_id"]
    audio_pad_token_id: int = REAL_TOKEN_IDS["audio_pad_token_id"]
    audio_delim_token_id: int = REAL_TOKEN_IDS["audio_delim_token_id"]
    audiotext_start_token_id: int = REAL_TOKEN_IDS["audiotext_start_token_id"]
    audiotext_end_token_id: int = REAL_TOKEN_IDS["audiotext_end_token_id"]
    audiotext_pad_token_id: int = REAL_TOKEN_IDS["audiotext_pad_token_id"]
    audiogen_start_token_id: int = REAL_TOKEN_IDS["audiogen_start_token_id"]
    audiogen_end_token_id: int = REAL_TOKEN_IDS["audiogen_end_token_id"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything a model module needs, hashable."""

    llm: LLMConfig = LLMConfig()
    audio_head: AudioHeadConfig = AudioHeadConfig()
    audio_encoder: AudioEncoderConfig = AudioEncoderConfig()
    vq_bridge: VQBridgeConfig = VQBridgeConfig()
    audio_decoder: AudioDecoderConfig = AudioDecoderConfig()
    flow_matching: FlowMatchingConfig = FlowMatchingConfig()
    vocoder: VocoderConfig = VocoderConfig()
    tokens: SpecialTokens = SpecialTokens()
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # master weights
    scan_layers: bool = True  # lax.scan over stacked layers (False: unrolled Python loop)
    remat_policy: str = "none"  # see baichuan_audio_jax.layers.remat.REMAT_POLICIES

    @property
    def codebook_sizes(self) -> tuple:
        return tuple(self.vq_bridge.codebook_sizes)

    @classmethod
    def from_config(cls, model: Mapping[str, Any]) -> "ModelConfig":
        m = model.to_dict() if isinstance(model, ml_collections.ConfigDict) else dict(model)
        sections = dict(
            llm=LLMConfig, audio_head=AudioHeadConfig, audio_encoder=AudioEncoderConfig,
            vq_bridge=VQBridgeConfig, audio_decoder=AudioDecoderConfig,
            flow_matching=FlowMatchingConfig, vocoder=VocoderConfig, tokens=SpecialTokens)
        kw = {name: klass.from_dict(m.get(name, {})) for name, klass in sections.items()}
        for k in ("dtype", "param_dtype", "scan_layers", "remat_policy"):
            if k in m:
                kw[k] = m[k]
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# ConfigDict construction.
# --------------------------------------------------------------------------------------------

def _dc_to_dict(dc) -> dict:
    out = {}
    for f in dataclasses.fields(dc):
        v = getattr(dc, f.name)
        out[f.name] = [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
    return out


def model_config_dict(**overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The ``model`` section with real (7B) defaults, updated section by section."""
    base = ModelConfig()
    d = {name: _dc_to_dict(getattr(base, name)) for name in (
        "llm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching",
        "vocoder", "tokens")}
    d.update(dtype=base.dtype, param_dtype=base.param_dtype, scan_layers=base.scan_layers,
             remat_policy=base.remat_policy)
    for section, values in overrides.items():
        if isinstance(values, Mapping):
            unknown = set(values) - set(d[section])
            if unknown:
                raise KeyError(f"unknown field(s) {sorted(unknown)} in model.{section}")
            d[section].update({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
        else:
            d[section] = values
    return ml_collections.ConfigDict(d)


def model_config_from_reference(ref: Mapping[str, Any] | str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads a reference-format ``config.json`` (dict or path) into the project's model section.

    Missing fields keep the reference defaults of the released model (Whisper-config defaults
    for the audio sub-configs, reference §0.1). The real special ids of keys absent from the
    reference file (EOS, role prefixes) are kept; a tiny config's ``pad_token_id``/``eos_token_id``
    are taken from its top level.
    """
    if not isinstance(ref, Mapping):
        path = os.fspath(ref)
        try:
            with open(path) as f:
                ref = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read reference config {path}: {e}") from e
    ref = dict(ref)
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in required if k not in ref]
    if missing:
        raise KeyError(f"reference config lacks required field(s) {missing}")
    audio = dict(ref.get("audio_config", {}))
    voc = dict(ref.get("vocoder_config", {}))
    fm = dict(ref.get("flow_matching_config", {}))
    heads = ref["num_attention_heads"]
    llm = dict(
        vocab_size=ref["vocab_size"], hidden_size=ref["hidden_size"],
        intermediate_size=ref["intermediate_size"], num_layers=ref["num_hidden_layers"],
        num_heads=heads, num_kv_heads=ref.get("num_key_value_heads", heads),
        head_dim=ref.get("head_dim") or ref["hidden_size"] // heads,
        rope_theta=float(ref.get("rope_theta", 1e6)), rms_norm_eps=float(ref.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=ref.get("max_position_embeddings", 8192),
        qkv_bias=bool(ref.get("attention_qkv_bias", True)),
        tie_word_embeddings=bool(ref.get("tie_word_embeddings", False)),
        pad_token_id=ref.get("pad_token_id", 0) or 0,
    )
    if ref.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {ref['hidden_act']!r} is not supported (only silu)")
    sampling_rate = audio.get("sampling_rate", 16000)
    hop = audio.get("hop_length", 160)
    stride = audio.get("stride_size", 2)
    max_seconds = audio.get("max_audio_seconds", 30)
    enc_positions = max_seconds * sampling_rate // hop // stride
    codebooks = audio.get("vq_config", {}).get("codebook_sizes", list(REAL_CODEBOOK_SIZES))
    d_model = audio.get("d_model", 1280)
    pooler = audio.get("avg_pooler", 4)
    sections = dict(
        llm=llm,
        audio_head=dict(num_layers=audio.get("audio_head_transformer_layers", 3)),
        audio_encoder=dict(
            num_mel_bins=audio.get("num_mel_bins", 128), d_model=d_model,
            num_layers=audio.get("encoder_layers", 32), num_heads=audio.get("encoder_attention_heads", 20),
            ffn_dim=audio.get("encoder_ffn_dim", 5120), kernel_size=audio.get("kernel_size", 3),
            stride_size=stride, max_source_positions=enc_positions, sampling_rate=sampling_rate,
            n_fft=audio.get("n_fft", 400), hop_length=hop, max_audio_seconds=max_seconds),
        vq_bridge=dict(d_model=d_model, avg_pooler=pooler, codebook_sizes=list(codebooks)),
        audio_decoder=dict(
            d_model=d_model, num_layers=audio.get("decoder_layers", 8),
            num_heads=audio.get("decoder_attention_heads", 20), ffn_dim=audio.get("decoder_ffn_dim", 5120),
            kernel_size=audio.get("decoder_kernel_size", 3), stride_size=audio.get("decoder_stride_size", 2),
            avg_pooler=pooler, max_source_positions=2 * enc_positions,
            num_mel_bins=voc.get("num_mel_bins", 80),
            post_net_channels=list(voc.get("channels", [256] * 5)),
            mel_sampling_rate=voc.get("sampling_rate", 16000), mel_hop_length=voc.get("hop_length", 256),
            encoder_hop_length=hop, encoder_sampling_rate=sampling_rate),
        tokens={k: audio[k] for k in _AUDIO_CONFIG_TOKEN_FIELDS if k in audio},
    )
    if "pad_token_id" in ref and ref["pad_token_id"] is not None:
        sections["tokens"]["pad_token_id"] = ref["pad_token_id"]
    if "eos_token_id" in ref and isinstance(ref["eos_token_id"], int) and ref["vocab_size"] < 151643:
        sections["tokens"]["eos_token_id"] = ref["eos_token_id"]
    fm_fields = {f.name for f in dataclasses.fields(FlowMatchingConfig)}
    flow = {k: v for k, v in fm.items() if k in fm_fields}
    cfm = fm.get("cfm_params", {})
    for k in ("sigma_min", "t_scheduler", "training_cfg_rate", "inference_cfg_rate"):
        if k in cfm:
            flow[k] = cfm[k]
    if flow:
        sections["flow_matching"] = flow
    return model_config_dict(**sections)


# --------------------------------------------------------------------------------------------
# Loading config files and command-line overrides.
# --------------------------------------------------------------------------------------------

def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``configs/*.py`` (``get_config()``) or a reference ``config.json``; applies overrides.

    A ``.json`` file yields a config whose ``model`` section is read from it and whose other
    sections are those of ``configs/tiny.py``'s run defaults (see :func:`default_run_config`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if path.endswith(".json"):
        cfg = default_run_config()
        cfg.model = model_config_from_reference(path)
    else:
        spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise AttributeError(f"config file {path} defines no get_config()")
        cfg = module.get_config()
    apply_overrides(cfg, overrides)
    return cfg


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (list, tuple)):
        try:
            v = json.loads(text)
        except json.JSONDecodeError:
            v = [x for x in text.split(",") if x]
            if current:
                v = [type(current[0])(x) for x in v]
        return list(v)
    if current is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies ``a.b=value`` (or ``--config.a.b=value``) strings, typed by the current value."""
    for item in overrides:
        s = item[2:] if item.startswith("--") else item
        if s.startswith("config."):
            s = s[len("config."):]
        if "=" not in s:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = s.split("=", 1)
        parts = key.split(".")
        node = cfg
        for p in parts[:-1]:
            if p not in node:
                raise KeyError(f"override {item!r}: no config field {key!r}")
            node = node[p]
        leaf = parts[-1]
        if leaf not in node:
            raise KeyError(f"override {item!r}: no config field {key!r}")
        try:
            value = _parse_value(text, node[leaf])
        except ValueError as e:
            raise ValueError(f"override {item!r}: {e}") from e
        with node.ignore_type():
            node[leaf] = value


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.x=y`` items from the rest of a command line."""
    overrides, rest = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return overrides, rest


def default_run_config() -> ml_collections.ConfigDict:
    """Non-model sections shared by every config (training, mesh, data, checkpointing).

    Top level: ``task`` (what ``train`` trains, see ``baichuan_audio_jax.training.tasks``),
    ``seed``, ``steps`` (total optimizer steps), ``log_every``, ``checkpoint_every`` and
    ``stage`` (0 = train everything; 1 = audio embeddings + audio head only; 2 = everything but
    the text embedding and LM head; paper §3.3).

    * ``mesh``: device mesh sizes ``data`` × ``fsdp`` × ``tensor`` (one may be -1: fills).
    * ``data``: ``source`` (a registered data source: ``synthetic``, ``grain``), ``batch_size``
      (GLOBAL rows per optimizer step), ``seq_len``, ``seed``; sources add their own fields.
    * ``train``: AdamW + warmup/cosine schedule, clipping, gradient accumulation, loss options and
      the peak FLOP/s per device that model FLOPs utilisation is measured against.
    * ``checkpoint``: how many checkpoints to keep and whether saving is asynchronous.
    """
    cfg = ml_collections.ConfigDict()
    cfg.task = "audio_llm"
    cfg.seed = 0
    cfg.steps = 1000
    cfg.log_every = 10
    cfg.checkpoint_every = 500
    cfg.stage = 0
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.data = ml_collections.ConfigDict(dict(
        source="synthetic", batch_size=8, seq_len=256, seed=0,
        # synthetic source: packed segments per row and the share of audio frames in a segment.
        segments_per_row=2, audio_fraction=0.5))
    cfg.train = ml_collections.ConfigDict(dict(
        learning_rate=3e-4, min_learning_rate=3e-5, warmup_steps=100, decay_steps=0,  # 0: `steps`
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0,
        grad_accum_steps=1,  # microbatches per optimizer step (the global batch is split)
        audio_loss_weight=1.0,  # loss = text CE + audio_loss_weight * audio CE
        max_audio_positions=0,  # audio-head positions evaluated per row (0: seq_len)
        loss_chunk_size=0,  # positions per chunk of the vocabulary CE (0: one chunk)
        peak_flops_per_device=0.0,  # for model FLOPs utilisation (0: not reported)
    ))
    cfg.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3, async_save=True))
    return cfg
