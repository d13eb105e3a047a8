"""Sample-rate conversion by band-limited (windowed-sinc) interpolation.

This is the resampler of the reference's audio loading (torchaudio's ``functional.resample`` with
its default Hann-windowed sinc), restated from the algorithm:

* Reduce the rates by their gcd to ``orig`` input and ``new`` output samples per period.
* The low-pass cutoff is ``base = min(orig, new) · rolloff`` (in those reduced units); the filter
  reaches ``width = ceil(lowpass_filter_width · orig / base)`` input samples on each side.
* Output phase ``p`` (0 ≤ p < new) sits at input time ``p · orig / new``. Its kernel, over the
  ``2·width + orig`` input offsets ``i`` from ``−width``, is
  ``h_p(i) = (base/orig) · sinc(base·(i/orig − p/new)) · w``, where the argument is clamped to
  ±``lowpass_filter_width`` zero crossings and ``w = cos²(π·arg / (2·lowpass_filter_width))`` is
  the Hann taper.
* The input is zero-padded by ``width`` on the left and ``width + orig`` on the right; output
  frame ``j`` of phase ``p`` is the dot product of ``h_p`` with the padded input from
  ``j·orig``. Frames are interleaved phase-minor and cut to ``ceil(n · new / orig)`` samples.

``lowpass_filter_width`` trades sharpness against cost: the reference's 16 kHz encoder path uses
128, torchaudio's default elsewhere (e.g. 24 kHz targets) is 6. Kernels are built in float64.

Two evaluations of the same sums, chosen by cost: a matrix product of the kernels with strided
windows of the input (in float32 blocks, so memory stays bounded), good when there are many
phases or few taps (44.1 → 16 kHz); and, when the kernel is long and the reduced rates are small
(48 → 16 kHz at width 128: one phase of 779 taps), the polyphase decomposition
``y_p[j] = Σ_r Σ_q x[(j + q)·orig + r] · h_p[q·orig + r]`` evaluated as ``orig`` correlations by FFT
in float64 — several times faster, equal up to float rounding.
"""
from __future__ import annotations

import functools
import math

import numpy as np

DEFAULT_LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
_BLOCK = 16384  # output frames per matrix product


@functools.lru_cache(maxsize=16)
def sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float = ROLLOFF
                ) -> tuple[np.ndarray, int]:
    """([new, 2·width + orig] float64 polyphase kernels, width) for gcd-reduced rates."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    offsets = np.arange(-width, width + orig, dtype=np.float64) / orig
    phases = -np.arange(new, dtype=np.float64)[:, None] / new
    t = np.clip((phases + offsets[None, :]) * base, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = sinc * window * (base / orig)
    kernel.setflags(write=False)
    return kernel, width


def resampled_length(n: int, orig_sr: int, target_sr: int) -> int:
    """ceil(n · target / orig): the number of output samples."""
    g = math.gcd(int(orig_sr), int(target_sr))
    orig, new = orig_sr // g, target_sr // g
    return -(-n * new // orig)


def _by_matmul(rows: np.ndarray, kernel: np.ndarray, width: int, orig: int) -> np.ndarray:
    """[R, frames, new]: each frame's strided input window times every phase's kernel."""
    taps, new = kernel.shape[1], kernel.shape[0]
    padded = np.pad(rows, ((0, 0), (width, width + orig)))
    frames = (padded.shape[1] - taps) // orig + 1
    kt = np.ascontiguousarray(kernel.T.astype(np.float32))  # [taps, new]
    out = np.empty((rows.shape[0], frames, new), np.float32)
    for r in range(rows.shape[0]):
        view = np.lib.stride_tricks.sliding_window_view(padded[r], taps)[::orig]
        for s in range(0, frames, _BLOCK):
            out[r, s:s + _BLOCK] = view[s:s + _BLOCK] @ kt
    return out


def _fast_length(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n (an FFT size pocketfft handles at full speed)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _by_fft(rows: np.ndarray, kernel: np.ndarray, width: int, orig: int) -> np.ndarray:
    """Same as :func:`_by_matmul`, as ``orig`` FFT correlations of the input's polyphase columns."""
    new, taps = kernel.shape
    q = -(-taps // orig)
    frames = (rows.shape[1] + 2 * width + orig - taps) // orig + 1
    m = frames + q - 1
    size = _fast_length(m)
    padded = np.zeros((new, q * orig))
    padded[:, :taps] = kernel
    spectra = np.fft.rfft(padded.reshape(new, q, orig), size, axis=1).conj()  # [new, bins, orig]
    out = np.empty((rows.shape[0], frames, new), np.float32)
    for r in range(rows.shape[0]):
        x = np.zeros(m * orig)
        x[width:width + rows.shape[1]] = rows[r]
        cols = np.fft.rfft(x.reshape(m, orig), size, axis=0)  # [bins, orig]
        out[r] = np.fft.irfft(np.einsum("fr,pfr->fp", cols, spectra), size, axis=0)[:frames]
    return out


def _fft_is_cheaper(orig: int, new: int, taps: int) -> bool:
    return orig * new <= 16 and taps >= 64 * orig


def resample(x: np.ndarray, orig_sr: int, target_sr: int, *,
             lowpass_filter_width: int = DEFAULT_LOWPASS_FILTER_WIDTH) -> np.ndarray:
    """Resamples along the last axis (any leading shape; float32 out).

    ``lowpass_filter_width``: zero crossings of the sinc on each side (128 reproduces the
    reference's 16 kHz encoder input; 6 is torchaudio's default).
    """
    x = np.asarray(x, np.float32)
    if int(orig_sr) <= 0 or int(target_sr) <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return x.copy()
    g = math.gcd(int(orig_sr), int(target_sr))
    orig, new = int(orig_sr) // g, int(target_sr) // g
    kernel, width = sinc_kernel(orig, new, int(lowpass_filter_width))
    lead, n = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, n)
    apply = _by_fft if _fft_is_cheaper(orig, new, kernel.shape[1]) else _by_matmul
    out = apply(rows, kernel, width, orig)
    length = resampled_length(n, orig_sr, target_sr)
    return out.reshape(rows.shape[0], -1)[:, :length].reshape(*lead, length)
