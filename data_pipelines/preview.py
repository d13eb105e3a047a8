"""A readable rendering of built examples: tokens, audio runs and where the loss is.

Text is decoded run by run; special tokens appear by name; a run of audio frames appears as
``<audio×N>``. Targets that carry loss are marked where they are *predicted*: text inside
``⟦…⟧``, audio as ``<audio×N loss>`` (``+EOS`` when the end-of-audio frame after the run is a
target too).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from baichuan_audio_jax.config import SpecialTokens
from baichuan_audio_jax.text.tokenizer import TextTokenizer

LEGEND = ("⟦…⟧ text that carries loss · <audio×N> a run of N audio frames · loss: its frames carry loss · "
          "+EOS: the end-of-audio frame after it is a target")


def render_example(example: Mapping[str, np.ndarray], tokenizer: TextTokenizer, tokens: SpecialTokens) -> str:
    ids = np.asarray(example["input_ids"])
    n = len(ids)
    text_loss = np.zeros(n, bool)
    text_loss[1:] = np.asarray(example["text_weights"])[:-1] > 0
    audio_w = np.asarray(example["audio_weights"])
    frame_loss = np.zeros(n, bool)
    frame_loss[1:] = audio_w[:-1].any(axis=-1)
    eos_frame = np.zeros(n, bool)
    eos_frame[:] = (audio_w[:, 0] > 0) & (audio_w[:, 1:] == 0).all(axis=-1)
    pad = tokens.audio_pad_token_id
    specials = {getattr(tokens, f) for f in tokens.__dataclass_fields__ if f != "pad_token_id"}

    out = ""
    open_loss = False

    def put(piece: str, loss: bool):
        nonlocal out, open_loss
        if loss != open_loss:
            out += (" ⟦" if out else "⟦") if loss else "⟧"
            open_loss = loss
        out += piece if not out or out.endswith("⟦") else " " + piece

    i = 0
    while i < n:
        if ids[i] == pad:
            j = i
            while j < n and ids[j] == pad:
                j += 1
            k = int(frame_loss[i:j].sum())
            tag = "" if k == 0 else " loss" if k == j - i else f" loss on {k}"
            put(f"<audio×{j - i}{tag}{' +EOS' if eos_frame[j - 1] else ''}>", False)
            i = j
        elif int(ids[i]) in specials:
            put(tokenizer.id_to_token(int(ids[i])) or f"<id {int(ids[i])}>", bool(text_loss[i]))
            i += 1
        else:
            j = i
            while j < n and ids[j] != pad and int(ids[j]) not in specials and text_loss[j] == text_loss[i]:
                j += 1
            put(tokenizer.decode(ids[i:j].tolist()), bool(text_loss[i]))
            i = j
    if open_loss:
        out += "⟧"
    return out


def example_summary(example: Mapping[str, np.ndarray]) -> str:
    n = len(example["input_ids"])
    text = int((np.asarray(example["text_weights"]) > 0).sum())
    audio = np.asarray(example["audio_weights"])
    frames = int((audio[:, 1:] > 0).any(axis=-1).sum())
    eos = int(((audio[:, 0] > 0) & (audio[:, 1:] == 0).all(axis=-1)).sum())
    return f"{n} tokens; loss on {text} text targets, {frames} audio frames, {eos} EOS frames"
