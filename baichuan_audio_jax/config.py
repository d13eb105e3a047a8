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
import math
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
    mel_n_fft: int = 1024  # refined-mel STFT size (vocoder_config n_fft): the tokenizer's training target
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
    rms_norm_eps: float = 1e-6  # prenet RMSNorms (the audio-side RMSNorm default)
    layer_norm_eps: float = 1e-5  # U-Net LayerNorms
    ffn_multiplier: int = 4  # U-Net feed-forward width = ffn_multiplier × channels
    time_embed_scale: float = 1000.0  # the sinusoidal time embedding sees scale·t
    # Sampler: one estimator call on the stacked [conditional; unconditional] batch per Euler step
    # (about 2x faster on CPU; equal to the reference's two calls up to float32 rounding) or the
    # reference's two calls (conditional first).
    batched_guidance: bool = True

    @property
    def estimator_in_channels(self) -> int:
        """U-Net input width: x and µ concatenated (plus a speaker embedding when spk_emb_dim > 0)."""
        return 2 * self.in_channels + self.spk_emb_dim

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.channels[0]


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
    f0_num_layers: int = 5  # weight-normed conv + ELU pairs of the F0 predictor

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (480 for the released vocoder)."""
        return math.prod(self.upsample_rates) * self.istft_hop_len


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
    for the audio sub-configs, reference §0.1). Audio special ids come from ``audio_config``; the
    role prefixes and EOS keep their real ids unless the vocabulary is too small to hold them.
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
            mel_n_fft=voc.get("n_fft", 1024), encoder_hop_length=hop, encoder_sampling_rate=sampling_rate),
        tokens={k: audio[k] for k in _AUDIO_CONFIG_TOKEN_FIELDS if k in audio},
    )
    if ref["vocab_size"] <= max(REAL_TOKEN_IDS.values()):
        # A reduced vocabulary (e.g. a parity fixture's tiny model) cannot hold the real EOS/PAD
        # id 151643: its config's own eos/pad ids are the ones its sequences use. With the real
        # vocabulary, EOS and prompt padding are <|endoftext|> as in the released
        # generation config (the config.json's pad_token_id 0 is only the embedding padding_idx).
        for k in ("eos_token_id", "pad_token_id"):
            if isinstance(ref.get(k), int):
                sections["tokens"][k] = ref[k]
    flow = flow_matching_fields_from_reference(fm)
    if flow:
        sections["flow_matching"] = flow
    return model_config_dict(**sections)


# Reference flow_matching_config keys that only switch behaviours this package implements one way
# (the released model's): the value must be the supported one, or reading the config fails.
_FM_SUPPORTED = dict(
    enable=(True,), use_hidden_states_before_dconv2=(True,), prenet_activation_function=("gelu",),
    act_fn=("gelu",), unet_use_omni_attn=(False,), spk_emb_dim=(0,), dropout=(0, 0.0))
# Keys read by training code elsewhere or irrelevant to the model's computation.
_FM_IGNORED = ("use_hires_mel", "max_audio_seconds", "split_overlap", "cal_mel_mae", "cfm_params")
_CFM_SUPPORTED = dict(solver=("euler",), t_scheduler=("cosine", "linear"))


def flow_matching_fields_from_reference(fm: Mapping[str, Any]) -> dict:
    """``flow_matching_config`` of a reference config.json -> :class:`FlowMatchingConfig` fields.

    Keys with the same name are copied; ``cfm_params`` supplies the sampler settings. A key that
    selects a behaviour other than the released model's (e.g. ``act_fn``, ``solver``) must hold the
    supported value; unknown keys are an error so that a new reference option is never ignored.
    """
    fields = {f.name for f in dataclasses.fields(FlowMatchingConfig)}
    flow = {}
    for k, v in fm.items():
        if k in _FM_SUPPORTED:
            if v not in _FM_SUPPORTED[k]:
                raise ValueError(f"flow_matching_config.{k} = {v!r} is not supported "
                                 f"(supported: {list(_FM_SUPPORTED[k])})")
            if k in fields:
                flow[k] = v
        elif k in fields:
            flow[k] = _freeze(v)
        elif k not in _FM_IGNORED:
            raise ValueError(f"flow_matching_config.{k} is not a known flow-matching option")
    channels = flow.get("channels")
    if channels is not None and len(channels) != 1:
        raise ValueError(f"flow_matching_config.channels = {list(channels)}: only a single-resolution U-Net "
                         "(one entry, as released) is supported")
    cfm = dict(fm.get("cfm_params", {}))
    for k, v in cfm.items():
        if k in _CFM_SUPPORTED and v not in _CFM_SUPPORTED[k]:
            raise ValueError(f"flow_matching_config.cfm_params.{k} = {v!r} is not supported "
                             f"(supported: {list(_CFM_SUPPORTED[k])})")
    for k in ("sigma_min", "t_scheduler", "training_cfg_rate", "inference_cfg_rate"):
        if k in cfm:
            flow[k] = cfm[k]
    return flow


def vocoder_config_from_reference(block: Mapping[str, Any]) -> VocoderConfig:
    """The HiFT generator's constructor arguments (as ``Cosy24kVocoder`` passes them, e.g. a parity
    manifest's ``components.hift_vocoder.config``) -> :class:`VocoderConfig`.

    ``istft_params`` and ``f0_predictor`` are nested in the reference; missing keys keep the
    released vocoder's values. Unknown keys are an error, except descriptive ones (``note``,
    ``real_widths_replaced``).
    """
    b = dict(block)
    fields = {f.name for f in dataclasses.fields(VocoderConfig)}
    out: dict[str, Any] = {}
    istft = dict(b.pop("istft_params", {}))
    if "n_fft" in istft:
        out["istft_n_fft"] = istft.pop("n_fft")
    if "hop_len" in istft:
        out["istft_hop_len"] = istft.pop("hop_len")
    if istft:
        raise ValueError(f"vocoder config: unknown istft_params key(s) {sorted(istft)}")
    f0 = dict(b.pop("f0_predictor", {}))
    if "cond_channels" in f0:
        out["f0_cond_channels"] = f0.pop("cond_channels")
    if "num_class" in f0:
        out["f0_num_class"] = f0.pop("num_class")
    f0_in = f0.pop("in_channels", b.get("in_channels", 80))
    if f0:
        raise ValueError(f"vocoder config: unknown f0_predictor key(s) {sorted(f0)}")
    for k in ("note", "real_widths_replaced"):
        b.pop(k, None)
    unknown = sorted(k for k in b if k not in fields)
    if unknown:
        raise ValueError(f"vocoder config: unknown key(s) {unknown}")
    out.update({k: _freeze(v) for k, v in b.items()})
    cfg = VocoderConfig.from_dict(out)
    if f0_in != cfg.in_channels:
        raise ValueError(f"vocoder config: f0_predictor.in_channels {f0_in} differs from in_channels "
                         f"{cfg.in_channels}")
    if cfg.f0_num_class != 1:
        raise ValueError(f"vocoder config: f0_predictor.num_class {cfg.f0_num_class} (only 1 is supported)")
    return cfg


# --------------------------------------------------------------------------------------------
# The model section as JSON (model bundles) and back to the reference format.
# --------------------------------------------------------------------------------------------

MODEL_CONFIG_FORMAT = "baichuan-audio-model-config"
MODEL_CONFIG_VERSION = 1
_MODEL_SECTIONS = ("llm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching",
                   "vocoder", "tokens")


def model_config_to_json(model: ml_collections.ConfigDict | Mapping[str, Any]) -> dict:
    """The ``model`` section as a JSON-able dict tagged with this package's format."""
    m = model.to_dict() if isinstance(model, ml_collections.ConfigDict) else dict(model)
    m = json.loads(json.dumps(m))  # tuples -> lists, a plain copy
    return {"format": MODEL_CONFIG_FORMAT, "version": MODEL_CONFIG_VERSION, "model": m}


def model_config_from_json(data: Mapping[str, Any], where: str = "config") -> ml_collections.ConfigDict:
    """Inverse of :func:`model_config_to_json`; unknown sections or fields are errors naming them."""
    if data.get("format") != MODEL_CONFIG_FORMAT:
        raise ValueError(f"{where}: not a {MODEL_CONFIG_FORMAT} file")
    if data.get("version") != MODEL_CONFIG_VERSION:
        raise ValueError(f"{where}: model config version {data.get('version')} is not supported "
                         f"(this version reads {MODEL_CONFIG_VERSION})")
    model = dict(data.get("model") or {})
    scalars = ("dtype", "param_dtype", "scan_layers", "remat_policy")
    unknown = sorted(set(model) - set(_MODEL_SECTIONS) - set(scalars))
    if unknown:
        raise ValueError(f"{where}: unknown model section(s) {unknown}")
    try:
        out = model_config_dict(**{k: v for k, v in model.items() if k in _MODEL_SECTIONS})
    except KeyError as e:
        raise ValueError(f"{where}: {e.args[0]}") from e
    for k in scalars:
        if k in model:
            out[k] = model[k]
    return out


def reference_config_from_model(cfg: ModelConfig) -> dict:
    """A reference-format ``config.json`` for ``cfg`` (what :func:`model_config_from_reference` reads
    back to the same model). Fields the reference fixes in code are not written."""
    c, enc, bridge, dec, fm = cfg.llm, cfg.audio_encoder, cfg.vq_bridge, cfg.audio_decoder, cfg.flow_matching
    audio = dict(
        enable=True, audio_head_transformer_layers=cfg.audio_head.num_layers, avg_pooler=bridge.avg_pooler,
        d_model=enc.d_model, encoder_layers=enc.num_layers, encoder_attention_heads=enc.num_heads,
        encoder_ffn_dim=enc.ffn_dim, decoder_layers=dec.num_layers, decoder_attention_heads=dec.num_heads,
        decoder_ffn_dim=dec.ffn_dim, decoder_kernel_size=dec.kernel_size, decoder_stride_size=dec.stride_size,
        kernel_size=enc.kernel_size, stride_size=enc.stride_size, hop_length=enc.hop_length, n_fft=enc.n_fft,
        num_mel_bins=enc.num_mel_bins, sampling_rate=enc.sampling_rate, max_audio_seconds=enc.max_audio_seconds,
        split_overlap=0.0, activation_function="gelu", scale_embedding=False,
        vq_config=dict(enable=True, codebook_sizes=list(bridge.codebook_sizes)),
        **{k: getattr(cfg.tokens, k) for k in _AUDIO_CONFIG_TOKEN_FIELDS})
    vocoder = dict(enable=True, num_mel_bins=dec.num_mel_bins, channels=list(dec.post_net_channels),
                   sampling_rate=dec.mel_sampling_rate, hop_length=dec.mel_hop_length, n_fft=dec.mel_n_fft)
    fm_dict = {f.name: getattr(fm, f.name) for f in dataclasses.fields(FlowMatchingConfig)
               if f.name not in ("sigma_min", "t_scheduler", "training_cfg_rate", "inference_cfg_rate")}
    fm_dict["channels"] = list(fm.channels)
    fm_dict.update(enable=True, cfm_params=dict(sigma_min=fm.sigma_min, solver="euler", t_scheduler=fm.t_scheduler,
                                                training_cfg_rate=fm.training_cfg_rate,
                                                inference_cfg_rate=fm.inference_cfg_rate))
    return dict(
        architectures=["OmniForCausalLM"], model_type="omni", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, hidden_act="silu", rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings, attention_qkv_pack=True,
        attention_qkv_bias=c.qkv_bias, tie_word_embeddings=c.tie_word_embeddings, use_norm_head=False,
        pad_token_id=c.pad_token_id, eos_token_id=cfg.tokens.eos_token_id,
        torch_dtype="bfloat16", audio_config=audio, vocoder_config=vocoder, flow_matching_config=fm_dict,
        visual_config=dict(enable=False), video_config=dict(enable=False))


# --------------------------------------------------------------------------------------------
# Loading config files and command-line overrides.
# --------------------------------------------------------------------------------------------

def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``configs/*.py`` (``get_config()``), a ``config.json`` or a model bundle; applies overrides.

    A ``.json`` file is either this package's model config (as written into model bundles, see
    :func:`model_config_to_json`) or a reference-format ``config.json``; a directory is read as a
    model bundle (its ``config.json``). Either yields a config whose ``model`` section is read from
    the file and whose other sections are the run defaults (see :func:`default_run_config`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if os.path.isdir(path):
        bundle_config = os.path.join(path, "config.json")
        if not os.path.exists(os.path.join(path, "bundle.json")) or not os.path.exists(bundle_config):
            raise FileNotFoundError(f"{path} is a directory but not a model bundle (no bundle.json + config.json)")
        path = bundle_config
    if path.endswith(".json"):
        cfg = default_run_config()
        data = _read_json(path)
        if isinstance(data, Mapping) and data.get("format") == MODEL_CONFIG_FORMAT:
            cfg.model = model_config_from_json(data, where=path)
        else:
            cfg.model = model_config_from_reference(data)
    else:
        spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise AttributeError(f"config file {path} defines no get_config()")
        cfg = module.get_config()
    apply_overrides(cfg, overrides)
    return cfg


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from e


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
    # Parts of the model that start from trained weights (training/initial_weights.py); "model":
    # the whole model, e.g. "runs/stage1#" for stage 2, "BUNDLE#llm" for a converted LLM.
    cfg.init_from = ml_collections.ConfigDict(dict(model=""))
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.data = default_data_config()
    cfg.train = ml_collections.ConfigDict(dict(
        learning_rate=3e-4, min_learning_rate=3e-5, warmup_steps=100, decay_steps=0,  # 0: `steps`
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0,
        grad_accum_steps=1,  # microbatches per optimizer step (the global batch is split)
        audio_loss_weight=1.0,  # loss = text CE + audio_loss_weight * audio CE
        max_audio_positions=0,  # audio-head positions evaluated per row (0: seq_len)
        loss_chunk_size=0,  # positions per chunk of the vocabulary CE (0: one chunk)
        peak_flops_per_device=0.0,  # for model FLOPs utilisation (0: not reported)
        nonfinite="stop",  # NaN/inf loss or gradient: "stop" (exit 3 naming the step) | "skip" (update skipped)
        spike_factor=3.0,  # log a loss / grad-norm spike above this times its running average (0: off)
    ))
    cfg.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3, async_save=True))
    return cfg


def default_data_config() -> ml_collections.ConfigDict:
    """The ``data`` section: batch geometry plus the fields of the ``grain`` pipelines
    (``data_pipelines``; the README's data section explains each)."""
    return ml_collections.ConfigDict(dict(
        source="synthetic",  # registered data source: "synthetic" or "grain"
        batch_size=8,  # GLOBAL rows per step
        seq_len=512,
        seed=0,
        # grain: list of manifest/shard paths, or {"path"|"name", "kind", "weight", "split", "data_dir"}
        sources=[],
        tokenizer="",  # tokenizer.json or sentencepiece .model
        audio_tokenizer="",  # "module:factory" for on-the-fly tokenization of JSONL audio
        prompts=dict(asr="将语音转录为文本:", aqa="", s2tt="将语音翻译为{target_language}:", system=""),
        packing="first_fit",  # first_fit | best_fit | none
        packing_bins=0,  # rows packed together (0: the per-host batch rows)
        shuffle=True,
        num_epochs=0,  # 0: repeat forever
        max_audio_seconds=300.0,  # on-the-fly audio longer than this is skipped
        read_threads=4,
        prefetch=128,
        worker_count=0,  # > 0: grain worker processes
        max_consecutive_skips=10_000,
        # synthetic source: packed segments per row and the share of audio frames in a segment
        segments_per_row=2,
        audio_fraction=0.5,
    ))
