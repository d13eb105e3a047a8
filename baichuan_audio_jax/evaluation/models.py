"""What evaluation tasks run on: one :class:`EvalModel` around a
:class:`~baichuan_audio_jax.inference.generator.Generator`.

* **Batched generation** (:meth:`EvalModel.generate_text`): up to ``batch_size`` prompts decoded
  together by the generator's :class:`~baichuan_audio_jax.inference.engine.DecodingEngine` (the
  same compiled prefill and decode loop as ``generate``; rows laid over the mesh's data axes when
  there is a mesh). The batch is always padded to ``batch_size`` rows (repeating the last prompt),
  so every batch reuses the programs compiled for the first; the runner sorts records by length
  so rows of a batch need little padding.
* **Log-likelihood scoring** (:meth:`EvalModel.log_likelihood`): one teacher-forced forward per
  batch of right-padded sequences (lengths rounded up to powers of two), summing the log
  probabilities of the marked text tokens (LM head) and audio frames (audio head, all 8 codebooks,
  teacher-forced as in training).
* **Audio** (:meth:`EvalModel.load_audio`, :meth:`EvalModel.encode`): files loaded and resampled as
  the generator does, encoded to codes in batches by the bundle's audio tokenizer.

:meth:`EvalModel.from_bundle` loads a bundle; :meth:`EvalModel.from_llm` wraps an LLM module (e.g.
the live parameters of a training run) with a text tokenizer and an optional audio tokenizer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.audio.io import AudioError
from baichuan_audio_jax.evaluation.inputs import SkipRecord, audio_skip
from baichuan_audio_jax.inference.engine import Request
from baichuan_audio_jax.inference.generator import MODES, Generator
from baichuan_audio_jax.inference.prompts import Prompt
from baichuan_audio_jax.training.losses import cross_entropy


@dataclasses.dataclass
class Sequence_:
    """A sequence to score: ids [n], codes [n, 8] (frames at ``<audio_pad>`` positions), and the
    positions whose token (``text``) or frame (``audio``) counts, as boolean [n] masks."""

    ids: np.ndarray
    codes: np.ndarray
    text: np.ndarray
    audio: np.ndarray


def _bucket(n: int, minimum: int = 16) -> int:
    size = minimum
    while size < n:
        size *= 2
    return size


@functools.partial(jax.jit, static_argnums=(0, 6))
def _score(graphdef, state, ids, codes, text_mask, audio_mask, with_audio: bool):
    llm = nnx.merge(graphdef, state)
    out = llm(ids, codes)
    text_lp = -cross_entropy(out.logits[:, :-1], ids[:, 1:]) * text_mask[:, 1:]
    sums = [text_lp.sum(-1), text_mask[:, 1:].sum(-1)]
    if with_audio:  # the hidden state at t predicts the frame at t + 1 (codebook k sees codes < k)
        targets = codes[:, 1:]
        logits = llm.audio_logits(out.hidden[:, :-1], targets)
        frame_lp = sum(-cross_entropy(lg, targets[..., k]) for k, lg in enumerate(logits))
        sums += [(frame_lp * audio_mask[:, 1:]).sum(-1), audio_mask[:, 1:].sum(-1)]
    else:
        sums += [jnp.zeros_like(sums[0]), jnp.zeros_like(sums[1])]
    return tuple(sums)


class EvalModel:
    def __init__(self, generator: Generator, *, batch_size: int = 8, mesh=None, source: str = ""):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.gen = generator
        self.cfg = generator.cfg
        self.batch_size = int(batch_size)
        self.mesh = mesh
        self.source = source

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_bundle(cls, path: str, *, batch_size: int = 8, mesh=None) -> "EvalModel":
        gen = Generator.from_bundle(path, mesh=mesh, batch_size=batch_size)
        return cls(gen, batch_size=batch_size, mesh=mesh, source=path)

    @classmethod
    def from_llm(cls, llm, tokenizer, *, speech=None, batch_size: int = 8, mesh=None,
                 source: str = "live parameters") -> "EvalModel":
        """``llm``: an :class:`AudioLLM`; ``speech``: a ``SpeechDecoder`` (or None: no speech input)."""
        return cls(Generator(llm, tokenizer, speech=speech, mesh=mesh), batch_size=batch_size, mesh=mesh,
                   source=source)

    def _mesh(self):
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    @property
    def tokenizer(self):
        return self.gen.tokenizer

    @property
    def max_context(self) -> int:
        return self.gen.engine.max_context

    # ------------------------------------------------------------------ audio

    @property
    def audio_tokenizer(self):
        if self.gen.speech is None:
            raise ValueError(f"{self.source} has no audio tokenizer: tasks with audio input cannot run")
        return self.gen.speech.tokenizer

    def load_audio(self, path: str) -> np.ndarray:
        """The 16 kHz waveform of a file; :class:`SkipRecord` (``audio_<cause>``) if unusable."""
        try:
            return self.audio_tokenizer.load_waveform(path)
        except AudioError as e:
            raise audio_skip(e) from None

    def encode(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes int32 [N, 8] of each 16 kHz waveform (batched)."""
        return self.audio_tokenizer.encode_batch(list(waveforms))

    # ------------------------------------------------------------------ generation

    def check_prompt(self, prompt: Prompt) -> Prompt:
        if len(prompt.ids) + 1 >= self.max_context:
            raise SkipRecord("too_long", f"prompt of {len(prompt.ids)} tokens does not fit the context of "
                             f"{self.max_context}")
        return prompt

    def generate_text(self, prompts: Sequence[Prompt], mode: str = "asr", **options) -> list[tuple[str, str]]:
        """(text, finish reason) of each prompt, decoded together (greedy unless ``do_sample``)."""
        if not prompts:
            return []
        options.setdefault("do_sample", False)
        protocol, sampling, max_new, seed = self.gen._settings(MODES[mode], options)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])
            rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # one compiled batch shape
            requests = [Request(*p.arrays(), start="text", sampling=sampling, seed=seed, max_new_tokens=max_new)
                        for p in rows]
            results = self.gen.engine.generate(requests, protocol)
            out += [(self.gen.display_text(r.text_tokens).strip(), r.finish_reason) for r in results[:len(chunk)]]
        return out

    # ------------------------------------------------------------------ scoring

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def log_likelihood(self, sequences: Sequence[Sequence_]) -> list[tuple[float, int]]:
        """(Σ log p, number of scored tokens/frames) of each sequence; text tokens and audio frames
        (all codebooks of a frame summed) add up in one total."""
        state, graphdef = self.gen.engine.state, self.gen.engine.graphdef
        pad = self.cfg.tokens.pad_token_id
        out: list[tuple[float, int]] = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = list(sequences[start:start + self.batch_size])
            longest = max(len(s.ids) for s in chunk)
            if longest > self.max_context:
                raise ValueError(f"a sequence of {longest} tokens exceeds the context of {self.max_context}")
            width = min(_bucket(longest), self.max_context)
            b = self.batch_size
            ids = np.full((b, width), pad, np.int32)
            codes = np.zeros((b, width, 8), np.int32)
            tm = np.zeros((b, width), np.float32)
            am = np.zeros((b, width), np.float32)
            for r, s in enumerate(chunk):
                n = len(s.ids)
                ids[r, :n], codes[r, :n], tm[r, :n], am[r, :n] = s.ids, s.codes, s.text, s.audio
            with_audio = bool(am.any())
            with self._mesh():
                t_lp, t_n, a_lp, a_n = jax.device_get(_score(graphdef, state, jnp.asarray(ids), jnp.asarray(codes),
                                                             jnp.asarray(tm), jnp.asarray(am), with_audio))
            out += [(float(t_lp[r] + a_lp[r]), int(t_n[r] + a_n[r])) for r in range(len(chunk))]
        return out
