"""Text-guided interleaved speech generation: the per-row rules of spec §6.6 and G11.

A row is in one of four phases: writing text, speaking (audio frames), waiting for the host (a
text-to-speech row whose next text piece must be appended) or done. After every decoding step,
:func:`transition` applies the reference's rules to the token or frame just chosen and decides
what the row feeds next:

* **Text → audio.** A text segment stops on ``<audiogen_start>``, on a stop string (later
  segments: ``,`` ``!`` ``?`` ``，`` ``。`` ``！`` ``？`` ``". "``) or at its token limit (50). The
  token just chosen is *overwritten* by ``<audiogen_start>``: it is kept in the text output but
  never fed; ``<audiogen_start>`` is fed and the next hidden state starts the audio segment.
* **End of text.** ``<|endoftext|>`` after more than one token of the current text segment starts
  one final audio segment (the EOS is overwritten as above); as the segment's first token it
  ends the row.
* **Audio → text.** A segment ends when codebook 0 chooses its EOS class or at the frame limit
  (500). The ``<audio_pad>`` of the last step is never fed: it is overwritten by
  ``<audiogen_end>``, which is fed, and the next text segment (later-segment sampling
  parameters) starts from its hidden state. Frames before the EOS frame are the segment.
* **Limits.** At most ``max_rounds`` audio segments (100): the text segment after the last one
  ends the row. A row's total new tokens (``budget``) ends it cleanly wherever it is (reason
  ``length``; an audio segment in progress is kept).

Text-only rows (ASR, speech-to-text chat) stop at ``<|endoftext|>`` or their token limit;
text-to-speech rows have no text phase: the host appends each text piece (``WAIT``).

Everything in :func:`transition` is elementwise over rows and jit-friendly; :mod:`.engine` calls
it inside its compiled loop. The phase changes the host makes between compiled runs (a row's next
text piece, a row cut off by a full cache or stopped by its caller) are the functions after it,
so every phase change of a row lives in this module.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from baichuan_audio_jax.config import SpecialTokens

TEXT, AUDIO, WAIT, DONE = 0, 1, 2, 3
# Why a row stopped.
RUNNING, EOS, LENGTH, ROUNDS, CONTEXT, STOP = 0, 1, 2, 3, 4, 5
FINISH_REASONS = ("running", "eos", "length", "rounds", "context", "stop")

# Later text segments of the speech demo stop at these strings (§6.6 step 5).
SPEECH_STOP_STRINGS = (",", "!", "?", "，", "。", "！", "？", ". ")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What rows generate and when they switch.

    Its values reach the compiled loop as data (:meth:`arrays`), so every protocol shares one
    compiled program per batch and cache size.

    * ``text``: rows write text (False: the text is given and rows only speak — TTS);
    * ``speech``: rows speak (text-guided interleaving when ``text`` is also set);
    * token limits per text segment (the first and the later ones) and frames per audio segment;
    * ``max_rounds``: audio segments per row;
    * stop strings of the first and of the later text segments (besides the ids
      ``<|endoftext|>`` and, when speaking, ``<audiogen_start>``).
    """

    text: bool = True
    speech: bool = False
    first_text_max_tokens: int = 50
    later_text_max_tokens: int = 50
    audio_max_frames: int = 500
    max_rounds: int = 100
    first_stop_strings: tuple = ()
    later_stop_strings: tuple = SPEECH_STOP_STRINGS

    def __post_init__(self):
        if not (self.text or self.speech):
            raise ValueError("a protocol must generate text, speech or both")
        for name in ("first_text_max_tokens", "later_text_max_tokens", "audio_max_frames", "max_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")

    @property
    def stop_strings(self) -> tuple:
        """Every stop string that can apply (later segments exist only when text and speech alternate)."""
        if not self.text:
            return ()
        later = self.later_stop_strings if self.speech else ()
        return tuple(dict.fromkeys(self.first_stop_strings + later))

    def stop_string_masks(self, strings: tuple) -> np.ndarray:
        """bool [2, len(strings)]: which of ``strings`` stop the first and the later text segments."""
        return np.asarray([[x in self.first_stop_strings for x in strings],
                           [x in self.later_stop_strings for x in strings]], bool).reshape(2, len(strings))

    def arrays(self) -> "ProtocolArrays":
        i32 = lambda v: np.asarray(v, np.int32)
        return ProtocolArrays(np.asarray(self.text), np.asarray(self.speech), i32(self.first_text_max_tokens),
                              i32(self.later_text_max_tokens), i32(self.audio_max_frames), i32(self.max_rounds))


class ProtocolArrays(NamedTuple):
    """:class:`Protocol` as scalars for the compiled loop."""

    text: jax.Array
    speech: jax.Array
    first_text_max_tokens: jax.Array
    later_text_max_tokens: jax.Array
    audio_max_frames: jax.Array
    max_rounds: jax.Array


class RowState(NamedTuple):
    """Per-row protocol state (every field has a leading batch axis)."""

    phase: jax.Array  # int32: TEXT / AUDIO / WAIT / DONE
    feed_id: jax.Array  # int32: the token the next step feeds
    feed_codes: jax.Array  # int32 [B, 8]: its frame (when it is <audio_pad>)
    text_count: jax.Array  # int32: tokens chosen in the current text segment
    text_round: jax.Array  # int32: audio segments before the current text segment
    frame_count: jax.Array  # int32: valid frames in the current audio segment
    segment_codes: jax.Array  # int32 [B, F, 8]: the current audio segment's frames
    segments_done: jax.Array  # int32: finished audio segments
    final_audio: jax.Array  # bool: the row ends after the current audio segment
    generated: jax.Array  # int32: decoding steps taken (new tokens)
    budget: jax.Array  # int32: maximum new tokens
    finish: jax.Array  # int32: FINISH_REASONS index
    event: jax.Array  # bool: an audio segment ended at this step
    out_text: jax.Array  # int32 [B, T]: every chosen text token, overwritten ones included
    out_count: jax.Array  # int32


def initial_rows(batch: int, *, phase: jax.Array, feed_id: jax.Array, feed_codes: jax.Array, budget: jax.Array,
                 max_frames: int, max_text: int) -> RowState:
    def z():  # a fresh buffer per field: the decode state is donated to the compiled loop
        return jnp.zeros((batch,), jnp.int32)

    return RowState(
        phase=jnp.array(phase, jnp.int32), feed_id=jnp.array(feed_id, jnp.int32),
        feed_codes=jnp.array(feed_codes, jnp.int32), text_count=z(), text_round=z(), frame_count=z(),
        segment_codes=jnp.zeros((batch, max_frames, 8), jnp.int32), segments_done=z(),
        final_audio=jnp.zeros((batch,), bool), generated=z(), budget=jnp.array(budget, jnp.int32),
        finish=z(), event=jnp.zeros((batch,), bool), out_text=jnp.zeros((batch, max_text), jnp.int32),
        out_count=z())


def _where(cond: jax.Array, a: RowState, b: RowState) -> RowState:
    def pick(x, y):
        c = cond.reshape(cond.shape + (1,) * (x.ndim - 1))
        return jnp.where(c, x, y)

    return jax.tree.map(pick, a, b)


def transition(rows: RowState, text_token: jax.Array, stop_fired: jax.Array, codes: jax.Array, *,
               protocol: ProtocolArrays, tokens: SpecialTokens, eos_class: int) -> RowState:
    """The state after one decoding step in which text rows chose ``text_token`` [B] (with
    ``stop_fired`` [B]: a stop string completed by it) and audio rows chose ``codes`` [B, 8]."""
    p = protocol
    z = jnp.zeros_like(rows.phase)
    generated = rows.generated + 1
    out_of_budget = generated >= rows.budget
    row_ids = jnp.arange(rows.phase.shape[0])

    # ---- a text row
    t = rows._replace(
        generated=generated, text_count=rows.text_count + 1,
        out_text=rows.out_text.at[row_ids, jnp.minimum(rows.out_count, rows.out_text.shape[1] - 1)].set(text_token),
        out_count=rows.out_count + 1, feed_id=text_token, feed_codes=jnp.zeros_like(rows.feed_codes))
    is_eos = text_token == tokens.eos_token_id
    at_limit = t.text_count >= jnp.where(rows.text_round == 0, p.first_text_max_tokens, p.later_text_max_tokens)
    # speaking rows (§6.6)
    rounds_left = rows.segments_done < p.max_rounds
    stop_now = stop_fired | (text_token == tokens.audiogen_start_token_id) | at_limit
    speak_last = is_eos & (t.text_count > 1) & rounds_left
    to_audio = p.speech & (speak_last | (~is_eos & stop_now & rounds_left)) & ~out_of_budget
    speech_ends = (is_eos & ~speak_last) | (~is_eos & stop_now & ~rounds_left)
    # text-only rows
    text_ends = is_eos | stop_fired | at_limit
    ends = jnp.where(p.speech, speech_ends, text_ends)
    reason = jnp.where(is_eos, EOS, jnp.where(p.speech, ROUNDS, jnp.where(stop_fired, STOP, LENGTH)))
    reason = jnp.where(ends, reason, LENGTH)  # a row stopped only by its budget
    ends = ends | out_of_budget
    t = t._replace(
        phase=jnp.where(ends, DONE, jnp.where(to_audio, AUDIO, TEXT)), finish=jnp.where(ends, reason, t.finish),
        feed_id=jnp.where(to_audio, tokens.audiogen_start_token_id, t.feed_id),
        final_audio=t.final_audio | (speak_last & to_audio), frame_count=jnp.where(to_audio, z, t.frame_count))

    # ---- an audio row
    frame_ok = codes[:, 0] != eos_class
    slot = jnp.minimum(rows.frame_count, rows.segment_codes.shape[1] - 1)
    seg = rows.segment_codes.at[row_ids, slot].set(
        jnp.where(frame_ok[:, None], codes, rows.segment_codes[row_ids, slot]))
    frames = rows.frame_count + frame_ok
    seg_end = ~frame_ok | (frames >= p.audio_max_frames) | out_of_budget
    after = jnp.where(out_of_budget | rows.final_audio, DONE, jnp.where(p.text, TEXT, WAIT))
    a_finish = jnp.where(out_of_budget, LENGTH, jnp.where(after == DONE, EOS, rows.finish))
    a = rows._replace(
        generated=generated, segment_codes=seg, frame_count=frames,
        phase=jnp.where(seg_end, after, AUDIO), finish=jnp.where(seg_end, a_finish, rows.finish),
        event=seg_end, segments_done=rows.segments_done + seg_end,
        feed_id=jnp.where(seg_end, tokens.audiogen_end_token_id, tokens.audio_pad_token_id),
        feed_codes=jnp.where(seg_end[:, None], 0, codes),
        text_count=jnp.where(seg_end, z, rows.text_count),
        text_round=rows.text_round + seg_end)

    out = _where(rows.phase == TEXT, t, rows)
    return _where(rows.phase == AUDIO, a, out)


# ----------------------------------------------------------------------------- between compiled runs
# The host holds a numpy copy of the rows (``jax.device_get``) and changes it in place.

def continuation_head(piece: np.ndarray, tokens: SpecialTokens) -> np.ndarray:
    """The tokens appended before a text-to-speech row's next text ``piece`` (which ends with
    ``<audiogen_start>``) is decoded: ``<audiogen_end>`` (replacing the unfed ``<audio_pad>``
    that ended the previous segment) and the piece but its last token, which the next step feeds."""
    piece = np.asarray(piece).reshape(-1)
    return np.concatenate([[tokens.audiogen_end_token_id], piece[:-1]]).astype(np.int32)


def resume(rows: RowState, r: int, piece: np.ndarray) -> None:
    """Row ``r`` (waiting) speaks its next text ``piece``: the next step feeds the piece's
    ``<audiogen_start>`` and starts a fresh audio segment (its head is appended by the host)."""
    rows.feed_id[r] = np.asarray(piece).reshape(-1)[-1]
    rows.feed_codes[r] = 0
    rows.frame_count[r] = 0
    rows.phase[r] = AUDIO


def finish(rows: RowState, which, reason: int) -> None:
    """Rows ``which`` (indices or a bool mask) end now with ``reason`` (``EOS``, ``CONTEXT``, ``STOP``...)."""
    rows.phase[which] = DONE
    rows.finish[which] = reason


def decoding(rows: RowState) -> np.ndarray:
    """bool [B]: rows still choosing tokens or frames."""
    return (rows.phase == TEXT) | (rows.phase == AUDIO)
