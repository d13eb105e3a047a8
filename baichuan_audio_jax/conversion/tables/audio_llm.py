"""Reference names of the LLM, its audio embeddings and the audio head (§3.1–3.2)."""
from __future__ import annotations

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.mapping import Custom, Entry, Linear, MappingTable, Same, SplitRows, Unused, Vector

_QKV = ("{p}/q_proj/{w}@{i}", "{p}/k_proj/{w}@{i}", "{p}/v_proj/{w}@{i}")


def _qkv(path: str, what: str, layer: str = "i") -> tuple[str, ...]:
    return tuple(t.replace("{p}", path).replace("{w}", what).replace("{i}", "{" + layer + "}") for t in _QKV)


def llm_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    entries = [
        Entry("model.embed_tokens.weight", "embed_tokens/embedding"),
        Entry("model.layers.{i}.self_attn.W_pack.weight", _qkv("layers/attn", "kernel"), SplitRows(Linear())),
        Entry("model.layers.{i}.self_attn.o_proj.weight", "layers/attn/o_proj/kernel@{i}", Linear(n_in=2)),
        Entry("model.layers.{i}.mlp.gate_proj.weight", "layers/mlp/gate_proj/kernel@{i}", Linear()),
        Entry("model.layers.{i}.mlp.up_proj.weight", "layers/mlp/up_proj/kernel@{i}", Linear()),
        Entry("model.layers.{i}.mlp.down_proj.weight", "layers/mlp/down_proj/kernel@{i}", Linear()),
        Entry("model.layers.{i}.input_layernorm.weight", "layers/input_norm/scale@{i}"),
        Entry("model.layers.{i}.post_attention_layernorm.weight", "layers/post_attn_norm/scale@{i}"),
        Entry("model.norm.weight", "norm/scale"),
    ]
    if cfg.llm.qkv_bias:
        entries.insert(2, Entry("model.layers.{i}.self_attn.W_pack.bias", _qkv("layers/attn", "bias"),
                                SplitRows(Vector())))
    if not cfg.llm.tie_word_embeddings:
        entries.append(Entry("lm_head.weight", "lm_head/kernel", Linear()))
    return MappingTable("llm", tuple(entries), {"i": cfg.llm.num_layers}, prefix=prefix)


def audio_embed_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    return MappingTable("audio_embed", (Entry("model.audio_embed_layers.{k}.weight", "audio_embed/{k}/embedding"),),
                        {"k": len(cfg.codebook_sizes)}, prefix=prefix)


def _depth_forward(t, s):
    # [out, depth·in] -> [depth, in, out] (position l uses columns l·in .. (l+1)·in)
    return t.reshape(s[2], s[0], s[1]).transpose(1, 2, 0)


def _depth_backward(a):
    return a.transpose(2, 0, 1).reshape(a.shape[2], -1)


DEPTH_FFN = Custom(_depth_forward, _depth_backward, lambda s: (s[2], s[0] * s[1]))


def audio_head_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    h = cfg.llm.hidden_size
    p = "audio_head.transformer_layers.{l}."
    entries = (
        Entry(p + "self_attention.in_proj_weight", _qkv("audio_head/layers/attn", "kernel", "l"), SplitRows(Linear())),
        Entry(p + "self_attention.in_proj_bias", _qkv("audio_head/layers/attn", "bias", "l"), SplitRows(Vector())),
        Entry(p + "self_attention.out_proj.weight", "audio_head/layers/attn/out_proj/kernel@{l}", Linear(n_in=2)),
        Entry(p + "self_attention.out_proj.bias", "audio_head/layers/attn/out_proj/bias@{l}"),
        Entry(p + "layernorm1.weight", "audio_head/layers/norm1/scale@{l}"),
        Entry(p + "layernorm2.weight", "audio_head/layers/norm2/scale@{l}"),
        Entry(p + "linear1.weight", "audio_head/layers/ffn/w1@{l}", DEPTH_FFN),
        Entry(p + "linear2.weight", "audio_head/layers/ffn/w2@{l}", DEPTH_FFN),
        Unused(p + "linear1.bias", lambda d: (2 * d["hidden"],)),
        Unused(p + "linear2.bias", lambda d: (d["hidden"],)),
        Entry("audio_head.headnorm.weight", "audio_head/headnorm/scale", Same()),
        Entry("audio_head.heads.{k}.weight", "audio_head/heads/{k}/kernel", Linear()),
        Entry("audio_head.heads.{k}.bias", "audio_head/heads/{k}/bias", Same()),
    )
    return MappingTable("audio_head", entries, {"l": cfg.audio_head.num_layers, "k": len(cfg.codebook_sizes)},
                        dims={"hidden": h}, prefix=prefix)
