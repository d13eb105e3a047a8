"""Sequence builders: one manifest record (+ its audio codes) → one training example with loss masks.

Every example is a dict of arrays in the layout of :mod:`baichuan_audio_jax.batch` without the
packing fields (``positions``, ``segment_ids``): ``input_ids`` [L], ``audio_codes`` [L, 8],
``text_targets``/``text_weights`` [L], ``audio_targets``/``audio_weights`` [L, 8], targets aligned
with the position that predicts them.

Audio (spec §5.2, §6): an input audio clip is ``<audio_start> <audio_pad>×N <audio_end>``; audio
the model speaks is ``<audiogen_start> <audio_pad>×N <audiogen_end>``. Each ``audio_pad`` holds
one frame of 8 codes. The audio head at the position before a frame predicts it, so
``<audiogen_start>`` predicts frame 1, frame i predicts frame i+1 and the last frame predicts the
EOS frame ``[C_0 … C_7]`` (weight on codebook 0 only, the only EOS the reference samples).

Which targets carry loss (weight 1; everything else 0):

* ASR, AQA, S2TT: the response text and its closing ``<|endoftext|>`` — not the prompt or the audio.
* INTLV: every text segment (and ``<|endoftext|>`` when the record ends with text); **no loss on
  the audio segments** (input audio, paper §3.3.1).
* TTS, pure audio: the generated audio frames and their EOS frame only.
* Pure text: the text and its closing ``<|endoftext|>`` (keeps the LLM's text ability; also
  the text pretraining of a model built from scratch).
* ITTS: **every segment except the first text segment**: text segments 2…n, every audio segment
  with its EOS frame, and the ``<audiogen_start>`` after text 2…n (the model decides to start
  speaking once it has written the text). Ends ``<|endoftext|>`` without loss.
* Chat (SFT): assistant turns — their text, ``<audiogen_start>`` tags, audio frames with EOS
  frames, and the ``<|endoftext|>`` that ends the turn; nothing of system or user turns, nor
  the role prefix ``[<audiotext_start>] <C_A>`` the prompt already contains.

Never: ``audio_pad`` as a text target (frames come from the audio head), ``<audiogen_end>``
(the generation loop writes it after the EOS frame, spec §6.6), the tags of input audio.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from baichuan_audio_jax.batch import NUM_CODEBOOKS, check_codes
from baichuan_audio_jax.config import SpecialTokens
from baichuan_audio_jax.records import audio_ref_owners
from baichuan_audio_jax.text.tokenizer import TextTokenizer
from data_pipelines.manifest import validate
from data_pipelines.skips import RecordError

EXAMPLE_FIELDS = ("input_ids", "audio_codes", "text_targets", "text_weights", "audio_targets", "audio_weights")


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Instruction texts placed before the audio (a record's ``prompt`` field overrides them)."""

    asr: str = "将语音转录为文本:"  # the base ASR demo's prompt (spec §6.3)
    aqa: str = ""
    s2tt: str = "将语音翻译为{target_language}:"
    system: str = ""  # chat system prompt for records without a system turn ("" = none)

    @classmethod
    def from_dict(cls, d: Mapping[str, str] | None) -> "Prompts":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise KeyError(f"unknown data.prompts field(s) {sorted(unknown)}")
        return cls(**d)


class _Layout:
    """Token ids with, per token, the weight of predicting it and the audio frames it holds."""

    def __init__(self, codes: dict[int, np.ndarray]):
        self.codes = codes  # id(object holding an "audio" reference) -> its codes
        self.ids: list[int] = []
        self.weights: list[float] = []  # text loss weight of this token *as a target*
        self.runs: list[tuple[int, np.ndarray, bool, bool]] = []  # (start, codes, loss, generated)

    def token(self, token_id: int, loss: bool) -> None:
        self.ids.append(int(token_id))
        self.weights.append(float(loss))

    def text(self, ids: Sequence[int], loss: bool) -> None:
        self.ids.extend(ids)
        self.weights.extend([float(loss)] * len(ids))

    def frames(self, pad_id: int, codes: np.ndarray, loss: bool, generated: bool) -> None:
        self.runs.append((len(self.ids), codes, loss, generated))
        self.ids.extend([pad_id] * len(codes))
        self.weights.extend([0.0] * len(codes))


class SequenceBuilder:
    """Builds examples for every task of :mod:`data_pipelines.manifest`."""

    def __init__(self, tokenizer: TextTokenizer, tokens: SpecialTokens, codebook_sizes: Sequence[int], *,
                 seq_len: int, prompts: Prompts = Prompts()):
        self.tok, self.t, self.seq_len, self.prompts = tokenizer, tokens, int(seq_len), prompts
        self.codebook_sizes = tuple(int(c) for c in codebook_sizes)
        if len(self.codebook_sizes) != NUM_CODEBOOKS:
            raise ValueError(f"expected {NUM_CODEBOOKS} codebook sizes, got {self.codebook_sizes}")
        self.eos_frame = np.asarray(self.codebook_sizes, np.int32)
        self._prompts: dict[str, list[int]] = {}

    # ---------------------------------------------------------------------------------------------

    def build(self, record: dict, codes: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The example of ``record``; ``codes[i]`` belongs to the i-th audio reference in document
        order. Raises :class:`RecordError` for records that cannot be used."""
        task = validate(record)
        owners = audio_ref_owners(record)
        if len(owners) != len(codes):
            raise RecordError("invalid_codes", f"{len(codes)} code matrices for {len(owners)} audio references")
        layout = _Layout({id(o): check_codes(c, self.codebook_sizes, f"audio {o['audio']!r}")
                          for o, c in zip(owners, codes)})
        getattr(self, f"_{task}")(record, layout)
        return self._finish(layout)

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def _prompt(self, record: dict, template: str, **fields) -> list[int]:
        text = record.get("prompt", template)
        if "prompt" not in record and "{" in template:
            try:
                text = template.format(**fields)
            except KeyError as e:
                raise RecordError("invalid_record", f"the prompt needs field {e.args[0]!r}") from None
        if not text:
            return []
        ids = self._prompts.get(text)  # the same few prompts come back in every record
        if ids is None:
            if len(self._prompts) >= 1024:
                self._prompts.clear()
            ids = self._prompts[text] = self.tok.encode(text)
        return ids

    def _input_audio(self, owner: dict, layout: _Layout) -> None:
        t = self.t
        layout.token(t.audio_start_token_id, False)
        layout.frames(t.audio_pad_token_id, layout.codes[id(owner)], loss=False, generated=False)
        layout.token(t.audio_end_token_id, False)

    def _generated_audio(self, owner: dict, layout: _Layout, *, loss: bool, start_loss: bool) -> None:
        t = self.t
        layout.token(t.audiogen_start_token_id, start_loss)
        layout.frames(t.audio_pad_token_id, layout.codes[id(owner)], loss=loss, generated=True)
        layout.token(t.audiogen_end_token_id, False)

    # --- tasks ----------------------------------------------------------------------------------

    def _understanding(self, record: dict, layout: _Layout, prompt: list[int], response: str) -> None:
        layout.text(prompt, False)
        self._input_audio(record, layout)
        layout.text(self._encode(response), True)
        layout.token(self.t.eos_token_id, True)

    def _asr(self, record: dict, layout: _Layout) -> None:
        self._understanding(record, layout, self._prompt(record, self.prompts.asr), record["text"])

    def _aqa(self, record: dict, layout: _Layout) -> None:
        self._understanding(record, layout, self._prompt(record, self.prompts.aqa), record["response"])

    def _s2tt(self, record: dict, layout: _Layout) -> None:
        prompt = self._prompt(record, self.prompts.s2tt, **{k: record[k] for k in ("target_language",) if k in record})
        self._understanding(record, layout, prompt, record["translation"])

    def _intlv(self, record: dict, layout: _Layout) -> None:
        for seg in record["segments"]:
            if "audio" in seg:
                self._input_audio(seg, layout)
            else:
                layout.text(self._encode(seg["text"]), True)
        layout.token(self.t.eos_token_id, "text" in record["segments"][-1])

    def _tts(self, record: dict, layout: _Layout) -> None:
        layout.text(self._encode(record["text"]), False)
        self._generated_audio(record, layout, loss=True, start_loss=False)
        layout.token(self.t.eos_token_id, False)

    def _audio(self, record: dict, layout: _Layout) -> None:
        self._generated_audio(record, layout, loss=True, start_loss=False)
        layout.token(self.t.eos_token_id, False)

    def _text(self, record: dict, layout: _Layout) -> None:
        layout.text(self._encode(record["text"]), True)
        layout.token(self.t.eos_token_id, True)

    def _itts(self, record: dict, layout: _Layout) -> None:
        for i, seg in enumerate(record["segments"]):
            layout.text(self._encode(seg["text"]), i > 0)
            self._generated_audio(seg, layout, loss=True, start_loss=i > 0)
        layout.token(self.t.eos_token_id, False)

    def _chat(self, record: dict, layout: _Layout) -> None:
        t = self.t
        turns = record["turns"]
        if turns[0]["role"] != "system" and self.prompts.system:
            layout.token(t.system_token_id, False)
            layout.text(self._encode(self.prompts.system), False)
        for turn in turns:
            role = turn["role"]
            if role == "system":
                layout.token(t.system_token_id, False)
                layout.text(self._encode(turn["text"]), False)
            elif role == "user":
                layout.token(t.user_token_id, False)
                if "text" in turn:
                    layout.text(self._encode(turn["text"]), False)
                if "audio" in turn:
                    self._input_audio(turn, layout)
            else:
                segments = turn.get("segments", [turn])
                if any("audio" in s for s in segments):
                    layout.token(t.audiotext_start_token_id, False)
                layout.token(t.assistant_token_id, False)
                for seg in segments:
                    if "text" in seg:
                        layout.text(self._encode(seg["text"]), True)
                    if "audio" in seg:
                        self._generated_audio(seg, layout, loss=True, start_loss=True)
                layout.token(t.eos_token_id, True)

    # ---------------------------------------------------------------------------------------------

    def _finish(self, layout: _Layout) -> dict[str, np.ndarray]:
        n = len(layout.ids)
        if n > self.seq_len:
            raise RecordError("sequence_too_long", f"{n} tokens > seq_len {self.seq_len}")
        ids = np.asarray(layout.ids, np.int32)
        weights = np.asarray(layout.weights, np.float32)
        codes = np.zeros((n, NUM_CODEBOOKS), np.int32)
        frame_weights = np.zeros((n, NUM_CODEBOOKS), np.float32)
        for start, c, loss, _ in layout.runs:
            codes[start:start + len(c)] = c
            frame_weights[start:start + len(c)] = float(loss)
        text_targets = np.zeros(n, np.int32)
        text_weights = np.zeros(n, np.float32)
        audio_targets = np.zeros((n, NUM_CODEBOOKS), np.int32)
        audio_weights = np.zeros((n, NUM_CODEBOOKS), np.float32)
        text_targets[:-1], text_weights[:-1] = ids[1:], weights[1:]
        audio_targets[:-1], audio_weights[:-1] = codes[1:], frame_weights[1:]
        for start, c, loss, generated in layout.runs:
            if generated:
                last = start + len(c) - 1
                audio_targets[last] = self.eos_frame
                audio_weights[last] = 0.0
                audio_weights[last, 0] = float(loss)
        return dict(input_ids=ids, audio_codes=codes, text_targets=text_targets, text_weights=text_weights,
                    audio_targets=audio_targets, audio_weights=audio_weights)
