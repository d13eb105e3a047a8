"""Hugging Face Whisper encoder names -> the audio encoder (initialisation from Whisper-large-v3).

The paper initialises the audio encoder from Whisper-large-v3, whose encoder has the reference
encoder's exact structure (128 mels, 1280 wide, 32 layers of 20 heads, k_proj without bias,
1500 sinusoid positions). A ``WhisperEncoder`` state dict has the names below with no prefix; a
``WhisperModel`` checkpoint prefixes them with ``encoder.`` and ``WhisperForConditionalGeneration``
with ``model.encoder.`` (:func:`whisper_encoder_prefix` finds which); the decoder's tensors are not
used. ``embed_positions.weight`` is Whisper's sinusoid table, loaded into the encoder's position
buffer.

Conventions differ in one way that matters for comparing outputs: the HF encoder requires the
full window (``2 × max_source_positions`` mel frames, 3000 for 30 s) and attends over all of it,
padding included, whereas the reference and this encoder attend only within each sample's valid
frames. The two agree exactly when the whole window is valid, and differ (by design) on shorter
audio.
"""
from __future__ import annotations

from typing import Iterable

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.mapping import MappingTable
from baichuan_audio_jax.conversion.tables.audio_tokenizer import whisper_encoder_entries

HF_ENCODER_PREFIXES = ("model.encoder.", "encoder.", "")


def whisper_encoder_prefix(names: Iterable[str]) -> str:
    """The prefix of the encoder's tensors in a HF Whisper checkpoint (by its conv1 weight)."""
    names = set(names)
    for p in HF_ENCODER_PREFIXES:
        if p + "conv1.weight" in names:
            return p
    raise KeyError("no Whisper encoder in these tensors (looked for conv1.weight under "
                   f"{[p or '(no prefix)' for p in HF_ENCODER_PREFIXES]})")


def hf_whisper_table(cfg: ModelConfig, prefix: tuple = (), source_prefix: str = "encoder.") -> MappingTable:
    """HF encoder names (under ``source_prefix``) -> ``audio_encoder/...`` of an AudioTokenizer."""
    entries = whisper_encoder_entries(source_prefix, "embed_positions.weight")
    return MappingTable("hf_whisper", tuple(entries), {"i": cfg.audio_encoder.num_layers}, prefix=prefix)


def encoder_config_from_hf(hf_config: dict) -> dict:
    """The ``model.audio_encoder`` fields a HF ``WhisperConfig`` (as a dict) implies."""
    act = hf_config.get("activation_function", "gelu")
    if act != "gelu":
        raise ValueError(f"Whisper activation {act!r} is not supported (the audio encoder uses exact gelu)")
    if hf_config.get("scale_embedding"):
        raise ValueError("Whisper configs with scale_embedding=True are not supported")
    return dict(num_mel_bins=hf_config["num_mel_bins"], d_model=hf_config["d_model"],
                num_layers=hf_config["encoder_layers"], num_heads=hf_config["encoder_attention_heads"],
                ffn_dim=hf_config["encoder_ffn_dim"], max_source_positions=hf_config["max_source_positions"])
