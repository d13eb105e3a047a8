"""Frame counts along the audio path (reference §4.12), one small function per quantity.

Each function accepts Python ints, numpy arrays or (traced) JAX arrays and returns the same kind.

=========================  =================================================  ======  ======
quantity                   formula (real config)                              1 s     30 s
=========================  =================================================  ======  ======
mel frames L               min(max_frames, n // hop + 1)                      101     3000
encoder frames E           conv1 (k, pad k//2) keeps L; conv2 (stride 2)      51      1500
audio tokens N             E // avg_pooler                                    12      375
decoder frames (50 Hz)     (N − 1)·4 + 3 = 4N − 1   (dconv1, nothing trimmed) 47      1499
coarse mel (100 Hz)        (T − 1)·2 + 3 − 1 = 2T   (dconv2, 1 frame trimmed)  94      2998
refined mel (62.5 Hz)      int(f32(C)·160/16000·16000/256)                    58      1873
=========================  =================================================  ======  ======
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def max_mel_frames(sampling_rate: int, hop_length: int, max_audio_seconds: float) -> int:
    """Frames of one full chunk (3000 for 30 s at hop 160): the log-mel padding length."""
    return int(max_audio_seconds * sampling_rate) // hop_length


def mel_frames(num_samples, hop_length: int, max_frames: int):
    """L: valid log-mel frames of a chunk of ``num_samples`` 16 kHz samples."""
    n = num_samples // hop_length + 1
    return min(n, max_frames) if isinstance(n, int) else _xp(n).minimum(n, max_frames)


def conv_frames(length, kernel_size: int, stride: int, padding: int):
    """Output length of a Conv1d (PyTorch formula, dilation 1)."""
    return (length + 2 * padding - kernel_size) // stride + 1


def encoder_frames(mel_length, kernel_size: int = 3, stride: int = 2):
    """E: the encoder's conv1 (stride 1) then conv2 (``stride``), both padded by kernel // 2."""
    pad = kernel_size // 2
    return conv_frames(conv_frames(mel_length, kernel_size, 1, pad), kernel_size, stride, pad)


def audio_tokens(encoder_length, avg_pooler: int = 4):
    """N: 12.5 Hz tokens; a trailing partial group of encoder frames is dropped."""
    return encoder_length // avg_pooler


def transposed_conv_frames(length, kernel_size: int, stride: int):
    """Valid frames after the decoder's causal transposed conv: (T − 1)·s + k, right-trimmed by
    max(0, k − s). Zero stays zero."""
    out = (length - 1) * stride + kernel_size - max(0, kernel_size - stride)
    return out * (length > 0) if not isinstance(length, int) else (out if length > 0 else 0)


def decoder_frames(num_tokens, avg_pooler: int = 4, kernel_size: int = 3):
    """4N − 1: the audio decoder's 50 Hz frames (dconv1 of stride ``avg_pooler``)."""
    return transposed_conv_frames(num_tokens, kernel_size, avg_pooler)


def coarse_mel_frames(decoder_length, kernel_size: int = 3, stride: int = 2):
    """2T: coarse mel frames after dconv2."""
    return transposed_conv_frames(decoder_length, kernel_size, stride)


def refined_mel_frames(coarse_length, encoder_hop: int = 160, encoder_sr: int = 16000,
                       mel_sr: int = 16000, mel_hop: int = 256):
    """M: the post-net's frames, ``int(f32(C)·hop/sr·mel_sr/mel_hop)`` evaluated left to right in
    float32 and truncated, exactly as the reference computes it."""
    if isinstance(coarse_length, int):
        coarse_length = np.int64(coarse_length)
        return int(refined_mel_frames(np.asarray(coarse_length), encoder_hop, encoder_sr, mel_sr, mel_hop))
    xp = _xp(coarse_length)
    f = coarse_length.astype(xp.float32)
    for op, v in (("mul", encoder_hop), ("div", encoder_sr), ("mul", mel_sr), ("div", mel_hop)):
        v = xp.float32(v)
        f = f * v if op == "mul" else f / v
    return f.astype(coarse_length.dtype)
