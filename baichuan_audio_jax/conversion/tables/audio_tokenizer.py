"""Reference names of the audio tokenizer: encoder, VQ bridge, audio decoder (§3.3–3.5).

NNX paths are relative to the :class:`~baichuan_audio_jax.models.audio_tokenizer.AudioTokenizer`
(``audio_encoder/...``, ``vq_bridge/...``, ``audio_decoder/...``); pass ``prefix`` when the
tokenizer sits deeper in a larger model. The sinusoid position tables are persistent buffers in
the reference and are loaded like parameters; the codebooks' EMA statistics (``cluster_size``,
``embed_avg``) are mapped too, so conversions carry them bit-exactly.
"""
from __future__ import annotations

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.mapping import Conv, ConvTranspose, Entry, Linear, MappingTable, Vector

REFERENCE_PREFIX = "audio_tokenizer."


def whisper_layer_entries(torch_prefix: str, jax_prefix: str) -> list[Entry]:
    """One Whisper-style layer ({i} = stacked slot): q/v/out with bias, k without, two LayerNorms."""
    t, j = torch_prefix + "layers.{i}.", jax_prefix + "layers/"
    entries = []
    for name in ("q", "k", "v"):
        entries.append(Entry(t + f"self_attn.{name}_proj.weight", j + f"attn/{name}_proj/kernel@{{i}}", Linear()))
        if name != "k":
            entries.append(Entry(t + f"self_attn.{name}_proj.bias", j + f"attn/{name}_proj/bias@{{i}}", Vector()))
    entries += [
        Entry(t + "self_attn.out_proj.weight", j + "attn/out_proj/kernel@{i}", Linear(n_in=2)),
        Entry(t + "self_attn.out_proj.bias", j + "attn/out_proj/bias@{i}"),
        Entry(t + "self_attn_layer_norm.weight", j + "attn_norm/scale@{i}"),
        Entry(t + "self_attn_layer_norm.bias", j + "attn_norm/bias@{i}"),
        Entry(t + "fc1.weight", j + "mlp/fc1/kernel@{i}", Linear()),
        Entry(t + "fc1.bias", j + "mlp/fc1/bias@{i}"),
        Entry(t + "fc2.weight", j + "mlp/fc2/kernel@{i}", Linear()),
        Entry(t + "fc2.bias", j + "mlp/fc2/bias@{i}"),
        Entry(t + "final_layer_norm.weight", j + "mlp_norm/scale@{i}"),
        Entry(t + "final_layer_norm.bias", j + "mlp_norm/bias@{i}"),
    ]
    return entries


def whisper_encoder_entries(torch_prefix: str, positions: str, jax_prefix: str = "audio_encoder/") -> list[Entry]:
    """A Whisper-style encoder: sinusoid positions (named ``positions`` on the torch side), two
    convolutions, the layers and the final LayerNorm. The reference's ``audio_model`` and Hugging
    Face's ``WhisperEncoder`` differ only in the name of the position table."""
    t, j = torch_prefix, jax_prefix
    return [
        Entry(t + positions, j + "positional_embedding"),
        Entry(t + "conv1.weight", j + "conv1/kernel", Conv()),
        Entry(t + "conv1.bias", j + "conv1/bias"),
        Entry(t + "conv2.weight", j + "conv2/kernel", Conv()),
        Entry(t + "conv2.bias", j + "conv2/bias"),
        *whisper_layer_entries(t, j),
        Entry(t + "layer_norm.weight", j + "layer_norm/scale"),
        Entry(t + "layer_norm.bias", j + "layer_norm/bias"),
    ]


def audio_encoder_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    entries = whisper_encoder_entries(REFERENCE_PREFIX + "audio_model.", "positional_embedding")
    return MappingTable("audio_encoder", tuple(entries), {"i": cfg.audio_encoder.num_layers}, prefix=prefix)


def vq_bridge_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    t, j = REFERENCE_PREFIX + "audio_bridge_model.", "vq_bridge/"
    entries = (
        Entry(t + "gate_proj.weight", j + "gate_proj/kernel", Conv()),
        Entry(t + "up_proj.weight", j + "up_proj/kernel", Conv()),
        Entry(t + "down_proj.weight", j + "down_proj/kernel", Linear()),
        Entry(t + "layer_norm.weight", j + "layer_norm/scale"),
        Entry(t + "layer_norm.bias", j + "layer_norm/bias"),
        Entry(t + "proj_decoder.weight", j + "proj_decoder/kernel", Linear()),
        Entry(t + "proj_decoder.bias", j + "proj_decoder/bias"),
        Entry(t + "vq_list.{k}.codebook.embed", j + "quantizers/{k}/embed"),
        Entry(t + "vq_list.{k}.codebook.cluster_size", j + "quantizers/{k}/cluster_size"),
        Entry(t + "vq_list.{k}.codebook.embed_avg", j + "quantizers/{k}/embed_avg"),
    )
    return MappingTable("vq_bridge", entries, {"k": len(cfg.codebook_sizes)}, prefix=prefix)


def audio_decoder_table(cfg: ModelConfig, prefix: tuple = ()) -> MappingTable:
    t, j = REFERENCE_PREFIX + "audio_decoder.", "audio_decoder/"
    entries = [
        Entry(t + "positional_embedding", j + "positional_embedding"),
        Entry(t + "dconv1.conv.weight", j + "dconv1/conv/kernel", ConvTranspose()),
        Entry(t + "dconv1.conv.bias", j + "dconv1/conv/bias"),
        Entry(t + "dconv1.norm.weight", j + "dconv1/norm/scale"),
        Entry(t + "dconv1.norm.bias", j + "dconv1/norm/bias"),
        *whisper_layer_entries(t, j),
        Entry(t + "layer_norm.weight", j + "layer_norm/scale"),
        Entry(t + "layer_norm.bias", j + "layer_norm/bias"),
        Entry(t + "dconv2.conv.weight", j + "dconv2/conv/kernel", ConvTranspose()),
        Entry(t + "dconv2.conv.bias", j + "dconv2/conv/bias"),
        Entry(t + "dconv2.norm.weight", j + "dconv2/norm/scale"),
        Entry(t + "dconv2.norm.bias", j + "dconv2/norm/bias"),
    ]
    # post_net.layers: blocks of (Conv1d, GroupNorm, Mish) at indices 3b, 3b+1, 3b+2; projector last.
    blocks = len(cfg.audio_decoder.post_net_channels) - 1
    for b in range(blocks):
        entries += [
            Entry(t + f"post_net.layers.{3 * b}.weight", j + f"post_net/convs/{b}/kernel", Conv()),
            Entry(t + f"post_net.layers.{3 * b}.bias", j + f"post_net/convs/{b}/bias"),
            Entry(t + f"post_net.layers.{3 * b + 1}.weight", j + f"post_net/norms/{b}/scale"),
            Entry(t + f"post_net.layers.{3 * b + 1}.bias", j + f"post_net/norms/{b}/bias"),
        ]
    entries += [
        Entry(t + f"post_net.layers.{3 * blocks}.weight", j + "post_net/proj/kernel", Conv()),
        Entry(t + f"post_net.layers.{3 * blocks}.bias", j + "post_net/proj/bias"),
    ]
    return MappingTable("audio_decoder", tuple(entries), {"i": cfg.audio_decoder.num_layers}, prefix=prefix)


def audio_tokenizer_tables(cfg: ModelConfig, prefix: tuple = ()) -> tuple[MappingTable, ...]:
    """The three tables of a whole :class:`AudioTokenizer`."""
    return (audio_encoder_table(cfg, prefix), vq_bridge_table(cfg, prefix), audio_decoder_table(cfg, prefix))
