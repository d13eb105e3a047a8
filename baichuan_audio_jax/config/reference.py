"""The reference ``config.json`` (Hugging Face config of ``OmniForCausalLM``) and back.

:func:`model_config_from_reference` reads a released ``config.json`` (also the ``tiny_config`` of a
parity manifest) into the project's ``model`` section; :func:`reference_config_from_model` writes
one for an exported model.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import ml_collections

from baichuan_audio_jax.config.model import (
    _AUDIO_CONFIG_TOKEN_FIELDS,
    REAL_CODEBOOK_SIZES,
    REAL_TOKEN_IDS,
    FlowMatchingConfig,
    ModelConfig,
    VocoderConfig,
    _freeze,
    model_config_dict,
)
from baichuan_audio_jax.config.released import RELEASED_CONFIG


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


def reference_config_from_model(cfg: ModelConfig, torch_dtype: str = "bfloat16") -> dict:
    """A reference-format ``config.json`` for ``cfg`` (what :func:`model_config_from_reference` reads
    back to the same model).

    It carries every key of the released checkpoint's ``config.json`` (recursively, with the same
    JSON types), so the public reference code constructs the model from it: what the model
    determines is written from ``cfg``, options this package implements one way get the supported
    value, and the rest (training-only switches, the disabled vision towers, Hugging Face
    bookkeeping) keep the released values. ``torch_dtype`` names the dtype of the written tensors.
    """
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
    # The legacy 16 kHz mel path; its audio length follows the audio encoder's, as in the reference configs.
    vocoder = dict(enable=True, num_mel_bins=dec.num_mel_bins, channels=list(dec.post_net_channels),
                   sampling_rate=dec.mel_sampling_rate, hop_length=dec.mel_hop_length, n_fft=dec.mel_n_fft,
                   max_audio_seconds=enc.max_audio_seconds)
    fm_dict = {f.name: getattr(fm, f.name) for f in dataclasses.fields(FlowMatchingConfig)
               if f.name not in ("sigma_min", "t_scheduler", "training_cfg_rate", "inference_cfg_rate")}
    fm_dict["channels"] = list(fm.channels)
    fm_dict.update({k: supported[0] for k, supported in _FM_SUPPORTED.items() if k not in fm_dict})
    fm_dict.update(enable=True, max_audio_seconds=enc.max_audio_seconds,
                   cfm_params=dict(sigma_min=fm.sigma_min, solver="euler", t_scheduler=fm.t_scheduler,
                                   training_cfg_rate=fm.training_cfg_rate, inference_cfg_rate=fm.inference_cfg_rate))
    # The vision towers are not part of this model: disabled, their projection width the LLM's.
    vision = dict(enable=False, hidden_size=c.hidden_size)
    out = dict(
        architectures=["OmniForCausalLM"], model_type="omni", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, hidden_act="silu", rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings, attention_qkv_pack=True,
        attention_qkv_bias=c.qkv_bias, tie_word_embeddings=c.tie_word_embeddings, use_norm_head=False,
        use_sliding_window=False, max_window_layers=c.num_layers, sparse_attention_layers=[],
        pad_token_id=c.pad_token_id, eos_token_id=cfg.tokens.eos_token_id,
        multimodal_special_token_list=_multimodal_special_tokens(cfg),
        torch_dtype=torch_dtype, audio_config=audio, vocoder_config=vocoder, flow_matching_config=fm_dict,
        visual_config=dict(vision), video_config=dict(vision))
    return _with_released_defaults(json.loads(json.dumps(out)), RELEASED_CONFIG)


def complete_reference_config(ref: Mapping[str, Any], cfg: ModelConfig, torch_dtype: str = "bfloat16") -> dict:
    """``ref`` (e.g. a reference ``config.json`` carried in a bundle) with every key of the released
    ``config.json`` it lacks added, valued as :func:`reference_config_from_model` writes it for
    ``cfg``; its own keys and values are kept as they are."""
    def released_keys(generated, released):
        return {k: released_keys(generated[k], v) if isinstance(v, Mapping) else generated[k]
                for k, v in released.items()}

    template = released_keys(reference_config_from_model(cfg, torch_dtype), RELEASED_CONFIG)
    return _with_missing_keys(json.loads(json.dumps(dict(ref))), template)


def _multimodal_special_tokens(cfg: ModelConfig) -> list:
    """The released ``multimodal_special_token_list`` moved to the model's audio ids when they keep
    the released layout (one offset, as the tiny configs do), else the model's audio ids alone."""
    released = RELEASED_CONFIG["audio_config"]
    offsets = {getattr(cfg.tokens, k) - released[k] for k in _AUDIO_CONFIG_TOKEN_FIELDS}
    if len(offsets) == 1:
        (offset,) = offsets
        shifted = [t + offset for t in RELEASED_CONFIG["multimodal_special_token_list"]]
        if 0 <= min(shifted) and max(shifted) < cfg.llm.vocab_size:
            return shifted
    return sorted({getattr(cfg.tokens, k) for k in _AUDIO_CONFIG_TOKEN_FIELDS})


def _with_missing_keys(ref: dict, template: Mapping[str, Any]) -> dict:
    """Adds to ``ref`` (recursively) every key of ``template`` it lacks, with the template's value."""
    for k, t in template.items():
        if k not in ref:
            ref[k] = json.loads(json.dumps(t))
        elif isinstance(t, Mapping) and isinstance(ref[k], dict):
            _with_missing_keys(ref[k], t)
    return ref


def _with_released_defaults(ref: dict, released: Mapping[str, Any]) -> dict:
    """Missing keys of ``released`` added to ``ref`` with the released values; where the released
    value is a float, an integer written from the model becomes that float (``1`` -> ``1.0``)."""
    _with_missing_keys(ref, released)

    def conform(value, template):
        if isinstance(template, Mapping) and isinstance(value, dict):
            return {k: conform(v, template[k]) if k in template else v for k, v in value.items()}
        if isinstance(template, list) and isinstance(value, list) and template:
            return [conform(v, template[0]) for v in value]
        if isinstance(template, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    return conform(ref, released)
