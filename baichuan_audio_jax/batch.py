"""The training batch of the audio LLM: one layout shared by data pipelines and train steps.

Every field is a dense array of static shape ``[B, S]`` (plus a codebook axis of 8 where
stated), so a batch crosses ``jax.jit`` without recompilation. Targets are aligned with the
position that *predicts* them (next-token prediction at position t):

==================  =============  ===================================================================
field               dtype, shape   meaning
==================  =============  ===================================================================
``input_ids``       int32 [B,S]    token ids; audio frames are ``audio_pad`` tokens
``audio_codes``     int32 [B,S,8]  codes of the frame at each ``audio_pad`` position (0 elsewhere);
                                   the frame's input embedding is the sum of their code embeddings
``positions``       int32 [B,S]    RoPE positions, restarting at 0 in every packed segment
``segment_ids``     int32 [B,S]    packed example number, 1, 2, ... within a row; 0 = padding.
                                   Attention never crosses segments.
``text_targets``    int32 [B,S]    token the LM head at t must predict (normally input_ids[t+1])
``text_weights``    float32 [B,S]  weight of that text loss term (0 = no loss)
``audio_targets``   int32 [B,S,8]  frame the audio head at t must predict: the codes of the next
                                   position's frame, or the EOS frame ``[C_0, …, C_7]`` after the
                                   last frame of an audio segment. The head is teacher-forced with
                                   these codes (codebook k sees codes < k).
``audio_weights``   float32 [B,S,8] per-codebook weight of the audio loss (0 = no loss); at an EOS
                                   step only codebook 0 carries weight (the reference samples EOS
                                   from codebook 0 only)
==================  =============  ===================================================================

The losses are ``Σ w·CE / Σ w`` over text positions and over audio (position, codebook) pairs;
which positions carry weight is the data pipelines' business (task loss masks).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from baichuan_audio_jax.config import NUM_CODEBOOKS
from baichuan_audio_jax.record_schema import RecordError

FIELDS: dict[str, tuple[type, tuple[int, ...]]] = {
    "input_ids": (np.int32, ()),
    "audio_codes": (np.int32, (NUM_CODEBOOKS,)),
    "positions": (np.int32, ()),
    "segment_ids": (np.int32, ()),
    "text_targets": (np.int32, ()),
    "text_weights": (np.float32, ()),
    "audio_targets": (np.int32, (NUM_CODEBOOKS,)),
    "audio_weights": (np.float32, (NUM_CODEBOOKS,)),
}


def validate_batch(batch: Mapping[str, np.ndarray], *, vocab_size: int | None = None,
                   codebook_sizes: tuple[int, ...] | None = None) -> None:
    """Raises ValueError naming the field if a batch does not follow the layout above."""
    missing = [k for k in FIELDS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks field(s) {missing}")
    lead = np.shape(batch["input_ids"])
    if len(lead) != 2:
        raise ValueError(f"input_ids must be [B, S], got shape {lead}")
    for k, (dtype, suffix) in FIELDS.items():
        shape = np.shape(batch[k])
        if tuple(shape) != tuple(lead) + suffix:
            raise ValueError(f"field {k}: shape {tuple(shape)}, expected {tuple(lead) + suffix}")
        if np.asarray(batch[k]).dtype != np.dtype(dtype):
            raise ValueError(f"field {k}: dtype {np.asarray(batch[k]).dtype}, expected {np.dtype(dtype)}")
    if vocab_size is not None:
        for k in ("input_ids", "text_targets"):
            a = np.asarray(batch[k])
            if a.size and (a.min() < 0 or a.max() >= vocab_size):
                raise ValueError(f"field {k}: token id out of range [0, {vocab_size})")
    if codebook_sizes is not None:
        limit = np.asarray(codebook_sizes)
        for k in ("audio_codes", "audio_targets"):
            a = np.asarray(batch[k])
            if a.size and ((a < 0).any() or (a > limit).any()):
                raise ValueError(f"field {k}: code out of range [0, C_k] for codebook sizes {codebook_sizes}")


def check_codes(codes: np.ndarray, codebook_sizes: tuple[int, ...], where: str) -> np.ndarray:
    """``codes`` as int32 ``[N ≥ 1, 8]`` with code k in ``[0, C_k)``; else :class:`RecordError`."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != NUM_CODEBOOKS or codes.shape[0] < 1:
        raise RecordError("invalid_codes", f"{where}: codes of shape {codes.shape}, expected [N >= 1, {NUM_CODEBOOKS}]")
    if not np.issubdtype(codes.dtype, np.integer):
        raise RecordError("invalid_codes", f"{where}: codes of dtype {codes.dtype}, expected integers")
    codes = codes.astype(np.int32, copy=False)
    limit = np.asarray(codebook_sizes, np.int32)
    if (codes < 0).any() or (codes >= limit).any():
        bad = int(np.argmax(((codes < 0) | (codes >= limit)).any(axis=0)))
        raise RecordError("invalid_codes", f"{where}: codebook {bad} has codes outside [0, {codebook_sizes[bad]})")
    return codes
