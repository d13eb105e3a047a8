"""Hugging Face ``Qwen2ForCausalLM`` names -> the audio LLM's text decoder.

Qwen2/Qwen2.5 checkpoints store separate q/k/v projections (the reference's
``attention_qkv_pack = false`` layout); the LM head may be tied to the embedding.
"""
from __future__ import annotations

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.mapping import Entry, Linear, MappingTable, Vector


def hf_qwen2_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    p = "model.layers.{i}."
    entries = [Entry("model.embed_tokens.weight", "embed_tokens/embedding")]
    for name in ("q", "k", "v"):
        entries.append(Entry(p + f"self_attn.{name}_proj.weight", f"layers/attn/{name}_proj/kernel@{{i}}", Linear()))
        if cfg.llm.qkv_bias:
            entries.append(Entry(p + f"self_attn.{name}_proj.bias", f"layers/attn/{name}_proj/bias@{{i}}", Vector()))
    entries += [
        Entry(p + "self_attn.o_proj.weight", "layers/attn/o_proj/kernel@{i}", Linear(n_in=2)),
        Entry(p + "mlp.gate_proj.weight", "layers/mlp/gate_proj/kernel@{i}", Linear()),
        Entry(p + "mlp.up_proj.weight", "layers/mlp/up_proj/kernel@{i}", Linear()),
        Entry(p + "mlp.down_proj.weight", "layers/mlp/down_proj/kernel@{i}", Linear()),
        Entry(p + "input_layernorm.weight", "layers/input_norm/scale@{i}"),
        Entry(p + "post_attention_layernorm.weight", "layers/post_attn_norm/scale@{i}"),
        Entry("model.norm.weight", "norm/scale"),
    ]
    if not cfg.llm.tie_word_embeddings:
        entries.append(Entry("lm_head.weight", "lm_head/kernel", Linear()))
    return MappingTable("hf_qwen2", tuple(entries), {"i": cfg.llm.num_layers}, prefix=prefix)
