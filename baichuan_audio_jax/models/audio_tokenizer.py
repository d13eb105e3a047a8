"""The audio tokenizer: log-mel -> 8-codebook tokens at 12.5 Hz -> decoder hidden states and mel.

Composes the three reference sub-models under the attribute names that are also their NNX path
prefixes in the full model (``audio_encoder``, ``vq_bridge``, ``audio_decoder``; reference prefixes
``audio_tokenizer.audio_model``, ``.audio_bridge_model``, ``.audio_decoder``). Everything works on
padded batches with per-sample lengths and each sample's result is independent of the batch.
"""
from __future__ import annotations

import jax
from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.models.audio_decoder import AudioDecoder, DecoderOutput
from baichuan_audio_jax.models.audio_encoder import AudioEncoder
from baichuan_audio_jax.models.vq_bridge import VQBridge


class AudioTokenizer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.audio_encoder = AudioEncoder(cfg, rngs=rngs)
        self.vq_bridge = VQBridge(cfg, rngs=rngs)
        self.audio_decoder = AudioDecoder(cfg, rngs=rngs)

    def encode(self, features: jax.Array, feature_lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """log-mel [B, L, n_mels] with lengths L -> (codes int32 [B, N_max, 8], N [B]); codes past
        N_b are −1."""
        hidden, lengths = self.audio_encoder(features, feature_lengths)
        return self.vq_bridge(hidden, lengths)

    def decode(self, codes: jax.Array, lengths: jax.Array) -> DecoderOutput:
        """codes [B, N_max, 8] with lengths N -> decoder outputs (hidden states before dconv2 for
        flow matching, coarse and refined mel)."""
        return self.audio_decoder(self.vq_bridge.decode(codes), lengths)
