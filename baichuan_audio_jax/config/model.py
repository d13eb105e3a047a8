"""The ``model`` section: frozen dataclasses for modules, ml_collections for users.

A run's ``model`` section has one sub-section per component, with the same field names in every
config:

* ``llm``: the Qwen2.5-style decoder (``hidden_size``, ``num_layers``, ...);
* ``audio_head``: the depth transformer over the RVQ codebooks;
* ``audio_encoder``, ``vq_bridge``, ``audio_decoder``: the audio tokenizer;
* ``flow_matching``: prenet, U-Net estimator and CFM sampler;
* ``vocoder``: the 24 kHz HiFT generator;
* ``tokens``: special token ids.

Modules never read a ConfigDict: ``ModelConfig.from_config(config.model)`` turns the section into
hashable frozen dataclasses, which are safe to keep as static module attributes under ``jax.jit``.
Model bundles store the section as JSON (:func:`model_config_to_json`).
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
import tokenize
from typing import Any, Mapping

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
# RVQ layers: codes per audio frame (the audio head predicts one per codebook).
NUM_CODEBOOKS = len(REAL_CODEBOOK_SIZES)


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
    """``model.llm``: the Qwen2.5-style decoder (reference ``config.json`` top level)."""

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
    attention_impl: str = "auto"  # einsum (reference) | xla (jax.nn.dot_product_attention) | splash (TPU) | auto
    pad_token_id: int = 0


@dataclasses.dataclass(frozen=True)
class AudioHeadConfig(_FromDict):
    """``model.audio_head``: the depth transformer over the RVQ codebooks (``audio_config.audio_head_*``)."""

    num_layers: int = 3
    head_dim: int = 128  # num_heads = hidden_size // head_dim (the reference's rule)
    rms_norm_eps: float = 1e-6  # fixed default in the reference, not llm.rms_norm_eps
    ffn_multiplier: int = 2


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig(_FromDict):
    """``model.audio_encoder``: the Whisper-style encoder of the audio tokenizer (``audio_config``)."""

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
    """``model.vq_bridge``: pooling and the 8-layer RVQ (``audio_config.vq_config``)."""

    d_model: int = 1280
    avg_pooler: int = 4
    codebook_sizes: tuple = REAL_CODEBOOK_SIZES
    layer_norm_eps: float = 1e-5

    @property
    def intermediate_dim(self) -> int:
        return self.d_model * self.avg_pooler


@dataclasses.dataclass(frozen=True)
class AudioDecoderConfig(_FromDict):
    """``model.audio_decoder``: the mel decoder of the audio tokenizer (``audio_config.decoder_*``)."""

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
    """``model.flow_matching``: prenet, U-Net estimator and CFM sampler (``flow_matching_config``)."""

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
    """``model.vocoder``: the 24 kHz HiFT generator (``vocoder_config`` and ``hift.pt``)."""

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
    """``model.tokens``: special token ids (reference §6.1)."""

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
        kw = {name: klass.from_dict(m.get(name, {})) for name, klass in SECTION_CLASSES.items()}
        for k in MODEL_SCALARS:
            if k in m:
                kw[k] = m[k]
        return cls(**kw)


# The model's sections (one frozen dataclass each) and its scalar fields, in the order they are written.
SECTION_CLASSES = dict(llm=LLMConfig, audio_head=AudioHeadConfig, audio_encoder=AudioEncoderConfig,
                       vq_bridge=VQBridgeConfig, audio_decoder=AudioDecoderConfig, flow_matching=FlowMatchingConfig,
                       vocoder=VocoderConfig, tokens=SpecialTokens)
MODEL_SCALARS = ("dtype", "param_dtype", "scan_layers", "remat_policy")


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
    d = {name: _dc_to_dict(getattr(base, name)) for name in SECTION_CLASSES}
    d.update({k: getattr(base, k) for k in MODEL_SCALARS})
    for section, values in overrides.items():
        if isinstance(values, Mapping):
            unknown = set(values) - set(d[section])
            if unknown:
                raise KeyError(f"unknown field(s) {sorted(unknown)} in model.{section}")
            d[section].update({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
        else:
            d[section] = values
    return ml_collections.ConfigDict(d)


# --------------------------------------------------------------------------------------------
# The model section as JSON (model bundles).
# --------------------------------------------------------------------------------------------

MODEL_CONFIG_FORMAT = "baichuan-audio-model-config"
MODEL_CONFIG_VERSION = 1


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
    unknown = sorted(set(model) - set(SECTION_CLASSES) - set(MODEL_SCALARS))
    if unknown:
        raise ValueError(f"{where}: unknown model section(s) {unknown}")
    try:
        out = model_config_dict(**{k: v for k, v in model.items() if k in SECTION_CLASSES})
    except KeyError as e:
        raise ValueError(f"{where}: {e.args[0]}") from e
    for k in MODEL_SCALARS:
        if k in model:
            out[k] = model[k]
    return out



def model_field_docs() -> dict[str, str]:
    """``{"llm.hidden_size": doc}`` for every model field: its trailing comment in this file, or
    its section's summary (which names the reference block it is read from)."""
    comments: dict[tuple[str, str], str] = {}
    cls_name = None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(inspect.getmodule(ModelConfig))).readline):
        line = tok.line
        if line.startswith("class "):
            cls_name = line.split()[1].split("(")[0].rstrip(":")
        if tok.type == tokenize.COMMENT and line.startswith("    ") and ":" in line.split("#")[0]:
            field = line.split(":")[0].strip()
            comments[(cls_name, field)] = tok.string.lstrip("# ").strip()
    docs = {}
    for section, klass in SECTION_CLASSES.items():
        summary = (klass.__doc__ or "").split(":", 1)[-1].strip().rstrip(".")
        for f in dataclasses.fields(klass):
            docs[f"{section}.{f.name}"] = comments.get((klass.__name__, f.name), summary)
    for f in dataclasses.fields(ModelConfig):
        if f.name not in SECTION_CLASSES:
            docs[f.name] = comments.get(("ModelConfig", f.name), "")
    return docs
