"""Generation prompts (spec §5.2, §6.3): token ids with the frames of their audio positions.

The layouts are the training layouts of :mod:`data_pipelines.sequences` cut where the model
starts writing, so a model trained by this package sees at generation time what it saw in
training:

* **ASR**: the instruction (``将语音转录为文本:``), then ``<audio_start> <audio_pad>×N
  <audio_end>``; the model writes the transcript and ``<|endoftext|>``.
* **TTS**: each text piece followed by ``<audiogen_start>``; the input text is split after the
  reference's punctuation marks and pieces are joined until one exceeds 10 characters
  (:func:`split_tts_text`).
* **Chat**: an optional system turn ``<B_SYS> text``; user turns ``<C_Q>`` with their text and/or
  audio; earlier assistant turns ``[<audiotext_start>] <C_A>`` with their text and spoken audio
  (``<audiogen_start> <audio_pad>×N <audiogen_end>``, the audio re-encoded from its file as the
  reference does) and ``<|endoftext|>``; then the new turn's prefix — ``<audiotext_start> <C_A>``
  when the answer is spoken, ``<C_A>`` otherwise.

A chat is a list of turns in the manifest's chat format (``data_pipelines.manifest``):
``{"role": "system", "text"}``, ``{"role": "user", "text"?, "audio"?}``,
``{"role": "assistant", "text"?, "audio"?}`` or ``{"role": "assistant", "segments": [{"text"?,
"audio"?}, ...]}``; the last turn is the user's.

Text typed into a prompt may not contain special tokens: the tokenizer would read ``<C_Q>`` as
plain characters, which is never what a user writing it means, so :func:`check_text` rejects
special-token strings (and strings that look like one) with an error naming them.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from baichuan_audio_jax.config import SpecialTokens
from baichuan_audio_jax.models.audio_head import NUM_CODEBOOKS
from baichuan_audio_jax.text.tokenizer import SPECIAL_TOKEN_STRINGS, TextTokenizer

ASR_INSTRUCTION = "将语音转录为文本:"  # the base ASR demo's prompt
# The speech demo's default system prompt: "answer using the 'girl next door' voice".
DEFAULT_SYSTEM_PROMPT = "请用【邻家女声】这个声音回答问题。"
# The base TTS demo splits after these marks (spec §6.3) and joins pieces up to 10 characters.
TTS_SPLIT_MARKS = ":,;!?，。；：！？"
TTS_PIECE_CHARS = 10

_SPECIAL_LIKE = re.compile(r"<\|[^<>|\s]{1,64}\|>|<[A-Za-z][A-Za-z0-9_]{0,63}_baichuan>|<(?:B_SYS|B_USYS|C_Q|C_A)>")


class PromptError(ValueError):
    pass


@dataclasses.dataclass
class Prompt:
    """Token ids [n] and the frames [n, 8] of their ``<audio_pad>`` positions (zeros elsewhere)."""

    ids: list[int]
    codes: list[np.ndarray]

    @staticmethod
    def empty() -> "Prompt":
        return Prompt([], [])

    def token(self, token_id: int) -> None:
        self.ids.append(int(token_id))
        self.codes.append(np.zeros(NUM_CODEBOOKS, np.int32))

    def text(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.token(i)

    def frames(self, pad_id: int, codes: np.ndarray) -> None:
        for c in np.asarray(codes, np.int32).reshape(-1, NUM_CODEBOOKS):
            self.ids.append(int(pad_id))
            self.codes.append(c)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        codes = np.stack(self.codes) if self.codes else np.zeros((0, NUM_CODEBOOKS), np.int32)
        return np.asarray(self.ids, np.int32), codes.astype(np.int32)


def check_text(text: str, where: str = "text") -> str:
    """Returns ``text`` if it holds no special-token string; raises :class:`PromptError` naming the
    first one found (known special tokens and unknown strings shaped like one)."""
    if not isinstance(text, str):
        raise PromptError(f"{where}: expected a string, got {type(text).__name__}")
    m = _SPECIAL_LIKE.search(text)
    if m:
        token = m.group(0)
        known = token in SPECIAL_TOKEN_STRINGS.values()
        what = "a special token" if known else "an unknown special token"
        raise PromptError(f"{where} contains {token!r}, {what}: special tokens cannot be written in text "
                          "(the prompt template places them); remove it")
    return text


class PromptBuilder:
    """Builds prompts with a text tokenizer and the model's special ids."""

    def __init__(self, tokenizer: TextTokenizer, tokens: SpecialTokens):
        self.tok, self.t = tokenizer, tokens

    def _text(self, text: str, where: str) -> list[int]:
        return self.tok.encode(check_text(text, where))

    def _input_audio(self, p: Prompt, codes: np.ndarray) -> None:
        p.token(self.t.audio_start_token_id)
        p.frames(self.t.audio_pad_token_id, codes)
        p.token(self.t.audio_end_token_id)

    def _spoken_audio(self, p: Prompt, codes: np.ndarray) -> None:
        p.token(self.t.audiogen_start_token_id)
        p.frames(self.t.audio_pad_token_id, codes)
        p.token(self.t.audiogen_end_token_id)

    # ------------------------------------------------------------------ modes

    def asr(self, codes: np.ndarray, instruction: str = ASR_INSTRUCTION) -> Prompt:
        """Instruction, then the input audio."""
        p = Prompt.empty()
        if instruction:
            p.text(self._text(instruction, "ASR instruction"))
        self._input_audio(p, codes)
        return p

    def tts(self, text: str) -> list[Prompt]:
        """One prompt per piece of :func:`split_tts_text`: the piece's ids and ``<audiogen_start>``."""
        check_text(text, "TTS text")
        pieces = split_tts_text(text)
        if not pieces:
            raise PromptError("TTS text is empty")
        out = []
        for piece in pieces:
            p = Prompt.empty()
            p.text(self._text(piece, "TTS text"))
            p.token(self.t.audiogen_start_token_id)
            out.append(p)
        return out

    def chat(self, turns: Sequence[Mapping], audio_codes: Callable[[str], np.ndarray], *, speech_output: bool,
             system: str | None = None) -> Prompt:
        """The chat so far (ending with a user turn) and the new assistant turn's prefix.

        ``audio_codes(path)`` gives the codes of an audio reference; ``system``: a system prompt
        used when the chat has no system turn ("" or None: none).
        """
        turns = validate_chat(turns)
        t = self.t
        p = Prompt.empty()
        if turns[0]["role"] != "system" and system:
            p.token(t.system_token_id)
            p.text(self._text(system, "system prompt"))
        for i, turn in enumerate(turns):
            where = f"chat turns[{i}]"
            role = turn["role"]
            if role == "system":
                p.token(t.system_token_id)
                p.text(self._text(turn["text"], where))
            elif role == "user":
                p.token(t.user_token_id)
                if "text" in turn:
                    p.text(self._text(turn["text"], where))
                if "audio" in turn:
                    self._input_audio(p, audio_codes(turn["audio"]))
            else:
                segments = turn.get("segments", [turn])
                if any("audio" in s for s in segments):
                    p.token(t.audiotext_start_token_id)
                p.token(t.assistant_token_id)
                for j, seg in enumerate(segments):
                    if "text" in seg:
                        p.text(self._text(seg["text"], f"{where} segment {j}"))
                    if "audio" in seg:
                        self._spoken_audio(p, audio_codes(seg["audio"]))
                p.token(t.eos_token_id)
        if speech_output:
            p.token(t.audiotext_start_token_id)
        p.token(t.assistant_token_id)
        return p


def split_tts_text(text: str, marks: str = TTS_SPLIT_MARKS, max_chars: int = TTS_PIECE_CHARS) -> list[str]:
    """The base TTS demo's pieces: split after every mark in ``marks``, then join consecutive
    pieces until the running piece is longer than ``max_chars`` characters."""
    raw, cur = [], ""
    for ch in text:
        cur += ch
        if ch in marks:
            raw.append(cur)
            cur = ""
    if cur:
        raw.append(cur)
    out, run = [], ""
    for piece in raw:
        run += piece
        if len(run) > max_chars:
            out.append(run)
            run = ""
    if run.strip():
        out.append(run)
    return [s for s in out if s.strip()]


def validate_chat(turns) -> list[dict]:
    """Checks a chat's turns (a list, or ``{"turns": [...]}``) and returns the list; the errors name
    the turn and field."""
    if isinstance(turns, Mapping):
        if "turns" not in turns:
            raise PromptError("chat: expected a list of turns or an object with a 'turns' list")
        turns = turns["turns"]
    if not isinstance(turns, (list, tuple)) or not turns:
        raise PromptError("chat: the turns must be a non-empty list")
    for i, turn in enumerate(turns):
        where = f"chat turns[{i}]"
        if not isinstance(turn, Mapping):
            raise PromptError(f"{where} is not an object")
        role = turn.get("role")
        if role not in ("system", "user", "assistant"):
            raise PromptError(f"{where}: role {role!r} is not one of 'system', 'user', 'assistant'")
        if role == "system":
            if i != 0:
                raise PromptError(f"{where}: a system turn may only come first")
            if not isinstance(turn.get("text"), str) or not turn["text"].strip():
                raise PromptError(f"{where}: a system turn needs a non-empty 'text'")
            continue
        parts = turn.get("segments", [turn]) if role == "assistant" else [turn]
        if not isinstance(parts, list) or not parts:
            raise PromptError(f"{where}: 'segments' must be a non-empty list")
        for j, part in enumerate(parts):
            w = where if part is turn else f"{where} segments[{j}]"
            if not isinstance(part, Mapping) or ("text" not in part and "audio" not in part):
                raise PromptError(f"{w} has neither 'text' nor 'audio'")
            for key in ("text", "audio"):
                if key in part and (not isinstance(part[key], str) or not part[key].strip()):
                    raise PromptError(f"{w}: '{key}' must be a non-empty string")
    if turns[-1].get("role") != "user":
        raise PromptError("chat: the last turn must be the user's (the model answers it)")
    return [dict(t) for t in turns]


def special_token_ids(tokens: SpecialTokens) -> set[int]:
    """Every special id of the model (left out when text is shown)."""
    return {getattr(tokens, f.name) for f in dataclasses.fields(tokens)}
