"""The server's bucketed speech decoding against the library's exact-length path, with the same
randomness: the flow-matching decoder masks the padding out (mel equal within 1e-5 over the
valid frames), and the vocoder, which is not causal, differs only near the segment's end (within
1e-4 before the last 12 mel frames = 5,760 samples, measured ≈ 11 frames on the tiny model)."""
import jax
import numpy as np
import pytest
from generation_helpers import chat_config, frames_of, speech_parts

from baichuan_audio_jax.inference.waveform import hidden_to_mel, mel_to_wave
from baichuan_audio_jax.serve.speech import HOP, BucketedSpeech

TAIL_FRAMES = 12


@pytest.fixture(scope="module")
def speech(parity_dir):
    return speech_parts(str(parity_dir), chat_config(str(parity_dir)))


def test_bucketed_segment_matches_the_exact_path_but_for_the_tail(speech):
    b = BucketedSpeech(speech, buckets=(16, 200))
    n = 12
    codes = frames_of(n, seed=1, sizes=speech.tokenizer.codebook_sizes)
    padded = b.padded_frames(n)
    assert padded == 16
    rng = np.random.default_rng(0)
    t, tp = 4 * n - 1, 4 * padded - 1
    noise = rng.standard_normal((1, tp, speech.cfg.flow_matching.in_channels)).astype(np.float32)
    nh = speech.vocoder.cfg.nb_harmonics + 1
    phase = rng.uniform(size=(1, nh)).astype(np.float32)
    src = rng.standard_normal((1, HOP * tp, nh)).astype(np.float32)
    wave = b.to_wave(codes, noise=noise[0], source=(phase[0], src[0]))
    assert wave.shape == (HOP * t,) and np.isfinite(wave).all() and np.abs(wave).max() <= 0.99

    hidden = speech.tokenizer.decode_batch([codes])[0]["hidden_before_dconv2"]
    mel, _ = hidden_to_mel(speech.flow_matching, hidden[None], np.asarray([t]), noise=noise[:, :t])
    padded_mel, _ = hidden_to_mel(speech.flow_matching, np.pad(hidden, ((0, tp - t), (0, 0)))[None],
                                  np.asarray([t]), noise=noise)
    np.testing.assert_allclose(np.asarray(padded_mel[0, :t]), np.asarray(mel[0]), atol=1e-5)
    exact, _ = mel_to_wave(speech.vocoder, np.asarray(mel, np.float32), phase_u01=phase, noise=src[:, :HOP * t])
    exact = np.asarray(exact[0])
    cut = HOP * (t - TAIL_FRAMES)
    np.testing.assert_allclose(wave[:cut], exact[:cut], atol=1e-4)


def test_a_segment_sounds_the_same_alone_and_in_a_batch(speech):
    """Each segment draws from its own key; rows of a batch do not mix. The bound is the
    waveform's float32 bound of the first test (1e-4, ≈ −80 dB of full scale): the batch shape
    changes the order of float32 sums through the flow-matching steps and the vocoder (seen:
    1.2e-5 at 2 of 9,120 samples)."""
    b = BucketedSpeech(speech, buckets=(16, 200), batch_sizes=(1, 4))
    sizes = speech.tokenizer.codebook_sizes
    segments = [frames_of(n, seed=n, sizes=sizes) for n in (5, 12, 9)]
    keys = [jax.random.key(i) for i in range(3)]
    together = b.to_waves(segments, keys)  # one batch of 3 rows, padded to 4
    for seg, key, wave in zip(segments, keys, together):
        alone = b.to_wave(seg, key)
        assert wave.shape == alone.shape == (HOP * (4 * len(seg) - 1),)
        np.testing.assert_allclose(wave, alone, atol=1e-4)


def test_warm_up_covers_the_buckets_segments_can_reach(speech):
    b = BucketedSpeech(speech, buckets=(16, 32, 200))
    assert b.buckets_up_to(16) == (16,) and b.buckets_up_to(17) == (16, 32) and b.buckets_up_to(10_000) == b.buckets
    with pytest.raises(ValueError, match="do not reach"):
        BucketedSpeech(speech, buckets=(16,))
    assert np.isfinite(b.to_wave(frames_of(3, sizes=speech.tokenizer.codebook_sizes), jax.random.key(0))).all()
