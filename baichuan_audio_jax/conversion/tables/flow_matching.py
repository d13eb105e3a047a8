"""Reference names of the flow-matching decoder (§3.6): prenet and U-Net estimator.

Reference prefix ``audio_tokenizer.audio_flow_matching_decoder.``; JAX paths are those of
:class:`~baichuan_audio_jax.models.flow_matching.FlowMatchingDecoder` (``prenet/...``,
``estimator/...``). Stacked axes: prenet layers ``{j}``; transformer blocks ``{b}`` of each
U-Net stage; mid blocks ``{m}`` (their transformer blocks are slot ``{m},{b}``).
"""
from __future__ import annotations

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.mapping import Conv, Entry, Linear, MappingTable, Same, Vector

PREFIX = "audio_tokenizer.audio_flow_matching_decoder."


def _prenet_entries() -> list[Entry]:
    p = "prenet.transformer_layers.{j}."
    q = "prenet/layers/"
    return [
        Entry("prenet.positional_embedding", "prenet/positional_embedding"),
        Entry("prenet.in_mlp.0.weight", "prenet/in_fc1/kernel", Linear()),
        Entry("prenet.in_mlp.0.bias", "prenet/in_fc1/bias"),
        Entry("prenet.in_mlp.2.weight", "prenet/in_fc2/kernel", Linear()),
        Entry("prenet.in_mlp.2.bias", "prenet/in_fc2/bias"),
        Entry(p + "self_attn.q_proj.weight", q + "attn/q_proj/kernel@{j}", Linear()),
        Entry(p + "self_attn.q_proj.bias", q + "attn/q_proj/bias@{j}", Vector()),
        Entry(p + "self_attn.k_proj.weight", q + "attn/k_proj/kernel@{j}", Linear()),
        Entry(p + "self_attn.v_proj.weight", q + "attn/v_proj/kernel@{j}", Linear()),
        Entry(p + "self_attn.v_proj.bias", q + "attn/v_proj/bias@{j}", Vector()),
        Entry(p + "self_attn.out_proj.weight", q + "attn/out_proj/kernel@{j}", Linear(n_in=2)),
        Entry(p + "self_attn.out_proj.bias", q + "attn/out_proj/bias@{j}"),
        Entry(p + "self_attn_layer_norm.weight", q + "attn_norm/scale@{j}"),
        Entry(p + "fc1.weight", q + "mlp/fc1/kernel@{j}", Linear()),
        Entry(p + "fc1.bias", q + "mlp/fc1/bias@{j}"),
        Entry(p + "fc2.weight", q + "mlp/fc2/kernel@{j}", Linear()),
        Entry(p + "fc2.bias", q + "mlp/fc2/bias@{j}"),
        Entry(p + "final_layer_norm.weight", q + "mlp_norm/scale@{j}"),
        Entry("prenet.final_norm.weight", "prenet/final_norm/scale"),
        Entry("prenet.out_proj.weight", "prenet/out_proj/kernel", Linear()),
    ]


def _causal_block(torch: str, jax: str, slot: str) -> list[Entry]:
    return [
        Entry(torch + "block.0.weight", jax + "conv/kernel" + slot, Conv()),
        Entry(torch + "block.0.bias", jax + "conv/bias" + slot),
        Entry(torch + "block.2.weight", jax + "norm/scale" + slot),
        Entry(torch + "block.2.bias", jax + "norm/bias" + slot),
    ]


def _resnet(torch: str, jax: str, slot: str = "") -> list[Entry]:
    return [
        Entry(torch + "mlp.1.weight", jax + "time_proj/kernel" + slot, Linear()),
        Entry(torch + "mlp.1.bias", jax + "time_proj/bias" + slot),
        *_causal_block(torch + "block1.", jax + "block1/", slot),
        *_causal_block(torch + "block2.", jax + "block2/", slot),
        Entry(torch + "res_conv.weight", jax + "res_conv/kernel" + slot, Conv()),
        Entry(torch + "res_conv.bias", jax + "res_conv/bias" + slot),
    ]


def _transformer(torch: str, jax: str, slot: str) -> list[Entry]:
    return [
        Entry(torch + "norm1.weight", jax + "attn_norm/scale" + slot),
        Entry(torch + "norm1.bias", jax + "attn_norm/bias" + slot),
        Entry(torch + "attn1.to_q.weight", jax + "attn/q_proj/kernel" + slot, Linear()),
        Entry(torch + "attn1.to_k.weight", jax + "attn/k_proj/kernel" + slot, Linear()),
        Entry(torch + "attn1.to_v.weight", jax + "attn/v_proj/kernel" + slot, Linear()),
        Entry(torch + "attn1.to_out.0.weight", jax + "attn/out_proj/kernel" + slot, Linear(n_in=2)),
        Entry(torch + "attn1.to_out.0.bias", jax + "attn/out_proj/bias" + slot),
        Entry(torch + "norm3.weight", jax + "mlp_norm/scale" + slot),
        Entry(torch + "norm3.bias", jax + "mlp_norm/bias" + slot),
        Entry(torch + "ff.net.0.proj.weight", jax + "mlp/fc1/kernel" + slot, Linear()),
        Entry(torch + "ff.net.0.proj.bias", jax + "mlp/fc1/bias" + slot),
        Entry(torch + "ff.net.2.weight", jax + "mlp/fc2/kernel" + slot, Linear()),
        Entry(torch + "ff.net.2.bias", jax + "mlp/fc2/bias" + slot),
    ]


def _estimator_entries() -> list[Entry]:
    t, j = "conditional_decoder.", "estimator/"
    entries = [
        Entry(t + "time_mlp.linear_1.weight", j + "time_mlp/linear_1/kernel", Linear()),
        Entry(t + "time_mlp.linear_1.bias", j + "time_mlp/linear_1/bias"),
        Entry(t + "time_mlp.linear_2.weight", j + "time_mlp/linear_2/kernel", Linear()),
        Entry(t + "time_mlp.linear_2.bias", j + "time_mlp/linear_2/bias"),
    ]
    for torch_stage, jax_stage in (("down_blocks.0.", "down/"), ("up_blocks.0.", "up/")):
        entries += _resnet(t + torch_stage + "0.", j + jax_stage + "resnet/")
        entries += _transformer(t + torch_stage + "1.{b}.", j + jax_stage + "transformers/", "@{b}")
        entries += [Entry(t + torch_stage + "2.weight", j + jax_stage + "conv/kernel", Conv()),
                    Entry(t + torch_stage + "2.bias", j + jax_stage + "conv/bias")]
    entries += _resnet(t + "mid_blocks.{m}.0.", j + "mid/resnet/", "@{m}")
    entries += _transformer(t + "mid_blocks.{m}.1.{b}.", j + "mid/transformers/", "@{m},{b}")
    entries += _causal_block(t + "final_block.", j + "final_block/", "")
    entries += [Entry(t + "final_proj.weight", j + "final_proj/kernel", Conv()),
                Entry(t + "final_proj.bias", j + "final_proj/bias", Same())]
    return entries


def flow_matching_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    fm = cfg.flow_matching
    entries = tuple(Entry(PREFIX + e.torch, e.jax, e.transform) for e in _prenet_entries() + _estimator_entries())
    return MappingTable("flow_matching", entries,
                        {"j": fm.prenet_nlayers, "b": fm.n_blocks, "m": fm.num_mid_blocks}, prefix=prefix)
