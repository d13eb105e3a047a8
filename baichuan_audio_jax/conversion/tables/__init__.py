"""Mapping tables, one module per component; :data:`TABLES` names them all.

Each table function takes the :class:`~baichuan_audio_jax.config.ModelConfig` and the NNX path
prefix of the component inside the model being loaded (``()`` when the component is the model);
``vocoder`` takes the :class:`~baichuan_audio_jax.config.VocoderConfig` (the vocoder is a separate
checkpoint, ``hift.pt``).
"""
from baichuan_audio_jax.conversion.tables.audio_llm import audio_embed_table, audio_head_table, llm_table
from baichuan_audio_jax.conversion.tables.audio_tokenizer import (
    audio_decoder_table,
    audio_encoder_table,
    vq_bridge_table,
)
from baichuan_audio_jax.conversion.tables.flow_matching import flow_matching_table
from baichuan_audio_jax.conversion.tables.hf_qwen2 import hf_qwen2_table
from baichuan_audio_jax.conversion.tables.hf_whisper import hf_whisper_table
from baichuan_audio_jax.conversion.tables.vocoder import vocoder_table

TABLES = {
    "llm": llm_table,
    "audio_embed": audio_embed_table,
    "audio_head": audio_head_table,
    "hf_qwen2": hf_qwen2_table,
    "audio_encoder": audio_encoder_table,
    "vq_bridge": vq_bridge_table,
    "audio_decoder": audio_decoder_table,
    "hf_whisper": hf_whisper_table,
    "flow_matching": flow_matching_table,
    "vocoder": vocoder_table,
}
