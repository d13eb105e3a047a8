"""The generation API: speech recognition, speech synthesis and spoken or written chat.

::

    gen = Generator.from_bundle("BUNDLE")
    gen.asr("question.wav").text                           # speech -> text
    gen.tts("你好，今天天气不错。").waveform                   # text -> 24 kHz speech
    r = gen.chat([{"role": "user", "audio": "q.wav"}])      # speech -> text + speech
    r.text, r.segments, r.waveform

Each mode uses the reference demos' prompt template (:mod:`.prompts`), protocol (§6.6) and
sampling parameters (:data:`MODES`): ASR and TTS decode greedily (with the demos' repetition
penalty 1.3) unless sampling is asked for; chat samples. Keyword options override them:
``temperature``, ``top_k``, ``top_p``, ``repetition_penalty`` (every phase), ``do_sample``,
``seed``, ``max_new_tokens`` (new tokens in all, text and audio frames together), and
``on_progress(new_tokens, limit)``, called as decoding proceeds.

Speech output is produced segment by segment as each is generated (:mod:`.streaming`):
``stream_to`` names a WAV file that grows chunk by chunk, ``on_chunk`` receives each chunk; the
result reports the time to the first chunk. A generation that reaches a limit stops cleanly and
says so (:attr:`GenerationResult.status`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from baichuan_audio_jax.batch import check_codes
from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.bundle import BundleError, load_bundle, read_bundle_info
from baichuan_audio_jax.inference import interleave as il
from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
from baichuan_audio_jax.inference.engine import DECODE_DTYPES, DecodingEngine, PhaseSampling, Request
from baichuan_audio_jax.inference.prompts import (
    ASR_INSTRUCTION,
    DEFAULT_SYSTEM_PROMPT,
    PromptBuilder,
    special_token_ids,
    validate_chat,
)
from baichuan_audio_jax.inference.sampling import SamplingParams
from baichuan_audio_jax.inference.stop_strings import token_strings
from baichuan_audio_jax.inference.streaming import AudioStream
from baichuan_audio_jax.inference.waveform import SAMPLE_RATE, SpeechDecoder, codes_to_wave, warn_no_vocoder
from baichuan_audio_jax.models.audio_llm import AudioLLM
from baichuan_audio_jax.text.tokenizer import TokenizerError, check_special_tokens, load_text_tokenizer

# The reference's sampling table (§6.6).
_BASE = SamplingParams(do_sample=False, temperature=0.5, top_k=5, top_p=0.85, repetition_penalty=1.3)
_CHAT_FIRST = SamplingParams(temperature=0.8, top_k=20, top_p=0.85, repetition_penalty=1.1)
_CHAT_LATER = SamplingParams(temperature=0.3, top_k=20, top_p=0.85, repetition_penalty=1.05)
_CHAT_AUDIO = SamplingParams(temperature=0.5, top_k=5, top_p=0.85, repetition_penalty=1.3)


@dataclasses.dataclass(frozen=True)
class Mode:
    """A generation mode: its protocol, sampling per phase and default new-token limit."""

    name: str
    description: str
    protocol: il.Protocol
    sampling: PhaseSampling
    max_new_tokens: int
    speech_input: bool
    speech_output: bool


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("asr", "speech -> text (base ASR demo: instruction + audio, greedy)",
         il.Protocol(text=True, speech=False, first_text_max_tokens=700),
         PhaseSampling(_BASE, _BASE, _BASE), 700, True, False),
    Mode("tts", "text -> speech (base TTS demo: text pieces, greedy)",
         il.Protocol(text=False, speech=True, audio_max_frames=700),
         PhaseSampling(_BASE, _BASE, _BASE), 700, False, True),
    Mode("s2t", "spoken chat answered in text",
         il.Protocol(text=True, speech=False, first_text_max_tokens=1024),
         PhaseSampling(_CHAT_FIRST, _CHAT_LATER, _CHAT_AUDIO), 1024, True, False),
    Mode("s2s", "spoken chat answered in text-guided speech (text and audio segments interleaved)",
         il.Protocol(text=True, speech=True, first_text_max_tokens=50, later_text_max_tokens=50,
                     audio_max_frames=500, max_rounds=100, later_stop_strings=il.SPEECH_STOP_STRINGS),
         PhaseSampling(_CHAT_FIRST, _CHAT_LATER, _CHAT_AUDIO), 2048, True, True),
)}


@dataclasses.dataclass
class GenerationResult:
    mode: str
    text: str  # what the model wrote, special tokens removed
    text_tokens: list[int]  # every chosen text token, in order (overwritten ones included)
    segments: list[np.ndarray]  # audio segments: codes int32 [N_i, 8]
    segment_text_ends: list[int]  # number of text tokens written before each audio segment
    waveform: np.ndarray | None  # 24 kHz float32 (speech output modes)
    sample_rate: int
    finish_reason: str  # eos | length | rounds | context | stop
    new_tokens: int
    max_new_tokens: int  # the limit that applied
    timings: dict[str, float]

    @property
    def stopped_at_limit(self) -> bool:
        return self.finish_reason in ("length", "context", "rounds")

    @property
    def status(self) -> str:
        """One line on how the generation ended."""
        r = self.finish_reason
        if r == "length":
            return (f"stopped at the length limit: {self.new_tokens} new tokens (limit {self.max_new_tokens}); "
                    "raise --max-new-tokens for more")
        if r == "context":
            return f"stopped: the model's context is full after {self.new_tokens} new tokens"
        if r == "rounds":
            return f"stopped after the maximum number of audio segments ({len(self.segments)})"
        if r == "stop":
            return "stopped at a stop string"
        return "finished (end of text)" if not self.segments else "finished (end of speech)"

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.waveform is None else len(self.waveform) / self.sample_rate


Options = dict[str, Any]
_SAMPLING_OPTIONS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")


class Generator:
    """Generation with an :class:`AudioLLM` and a text tokenizer; speech input needs the audio
    tokenizer and speech output the flow-matching decoder and vocoder too (a
    :class:`~baichuan_audio_jax.inference.waveform.SpeechDecoder`; parts may be None)."""

    def __init__(self, llm: AudioLLM, tokenizer, *, speech: SpeechDecoder | None = None,
                 max_context: int | None = None, mesh=None, check_tokenizer: bool = True,
                 decode_dtype: str | None = None):
        self.cfg: ModelConfig = llm.cfg
        self.tokenizer = tokenizer
        if check_tokenizer:
            check_special_tokens(tokenizer, self.cfg.tokens, self.cfg.llm.vocab_size)
        self.speech = speech
        self.prompts = PromptBuilder(tokenizer, self.cfg.tokens)
        self.engine = DecodingEngine(llm, token_strings=lambda: token_strings(tokenizer, self.cfg.llm.vocab_size),
                                     max_context=max_context, mesh=mesh, dtype=decode_dtype)
        self._special = special_token_ids(self.cfg.tokens)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, *, max_context: int | None = None, mesh=None,
                    batch_size: int = 1, decode_dtype: str | None = None) -> "Generator":
        """From a model bundle (:mod:`baichuan_audio_jax.conversion.bundle`): the ``llm`` component and the text
        tokenizer in ``tokenizer/``, and whichever of the audio tokenizer, the flow-matching
        decoder and the vocoder it holds (a mode that needs a missing one says so). ``mesh``:
        decode on a device mesh (parameters restored sharded). ``decode_dtype``: the LLM's
        decoding dtype (default: the bundle info's ``decode_dtype`` if set, else the model's)."""


        path = os.fspath(path)
        info = read_bundle_info(path)
        present = set(info.get("components", []))
        if "llm" not in present:
            raise BundleError(f"{path} has no llm component (it has {sorted(present)})")
        wanted = [c for c in ("llm", "audio_tokenizer", "flow_matching") if c in present]
        b = load_bundle(path, components=wanted, vocoder="vocoder" in info.get("checkpoints", {}), shardings=mesh)
        if b.tokenizer_dir is None:
            raise BundleError(f"{path} has no text tokenizer (tokenizer/)")
        tokenizer = load_bundle_tokenizer(b.tokenizer_dir)
        speech = None
        if "audio_tokenizer" in present:
            runtime = AudioTokenizerRuntime(b.config, nnx.state(b.model.audio_tokenizer), batch_size=batch_size)
            speech = SpeechDecoder(runtime, getattr(b.model, "flow_matching", None), b.vocoder)
            if b.vocoder is None and "flow_matching" in present:
                warn_no_vocoder(path)
        bundle_dtype = info.get("decode_dtype")
        if bundle_dtype is not None and bundle_dtype not in DECODE_DTYPES:
            raise BundleError(f"{path}: decode_dtype {bundle_dtype!r} in the bundle info is not one of {DECODE_DTYPES}")
        gen = cls(b.model.llm, tokenizer, speech=speech, max_context=max_context, mesh=mesh,
                  decode_dtype=decode_dtype or bundle_dtype)
        gen.source = path
        return gen

    # ------------------------------------------------------------------ modes

    def asr(self, audio, *, instruction: str = ASR_INSTRUCTION, **options) -> GenerationResult:
        """Transcribes an audio file, a 16 kHz waveform (float [samples]) or audio codes already
        tokenized (integer [N, 8], e.g. a TTS result's segments joined)."""
        prompt = self.prompts.asr(self._audio_codes(audio), instruction)
        return self._run("asr", [prompt], options)

    def tts(self, text: str, **options) -> GenerationResult:
        """Speaks ``text`` (split into pieces as the reference's TTS demo does)."""
        prompts = self.prompts.tts(text)
        return self._run("tts", prompts, options)

    def chat(self, turns: Sequence[Mapping] | Mapping, *, speech_output: bool = True, system: str | None = None,
             audio_dir: str | os.PathLike | None = None, **options) -> GenerationResult:
        """Answers the last (user) turn of a chat, in speech and text (``speech_output``) or text.

        ``system``: system prompt when the chat has none (default: the reference demo's; "" for
        none). ``audio_dir``: the directory relative audio paths in the turns refer to.
        """
        turns = validate_chat(turns)
        system = DEFAULT_SYSTEM_PROMPT if system is None else system

        def codes(ref: str) -> np.ndarray:
            path = ref if audio_dir is None or os.path.isabs(ref) else os.path.join(os.fspath(audio_dir), ref)
            return self._audio_codes(path)

        prompt = self.prompts.chat(turns, codes, speech_output=speech_output, system=system)
        return self._run("s2s" if speech_output else "s2t", [prompt], options)

    def generate(self, mode: str, *, audio=None, text: str | None = None, chat=None, **kw) -> GenerationResult:
        """Dispatch by mode name: ``asr`` (audio), ``tts`` (text), ``s2t``/``s2s`` (chat, or a single
        user turn from ``audio`` and/or ``text``)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
        if mode == "asr":
            if audio is None:
                raise ValueError("asr needs input audio")
            return self.asr(audio, **kw)
        if mode == "tts":
            if not text:
                raise ValueError("tts needs text")
            return self.tts(text, **kw)
        if chat is None:
            if audio is None and not text:
                raise ValueError(f"{mode} needs a chat, input audio or text")
            turn: dict = {"role": "user"}
            if text:
                turn["text"] = text
            if audio is not None:
                turn["audio"] = audio
            chat = [turn]
        return self.chat(chat, speech_output=mode == "s2s", **kw)

    # ------------------------------------------------------------------ internals

    def _audio_codes(self, audio) -> np.ndarray:
        if self.speech is None:
            raise ValueError(f"{self._where()} has no audio tokenizer: speech input is not available")
        rt = self.speech.tokenizer
        if isinstance(audio, np.ndarray) and audio.ndim == 2 and np.issubdtype(audio.dtype, np.integer):
            # as training input: any length the context holds (the decoder's segment limit is for output)
            codes = check_codes(audio, self.cfg.codebook_sizes, "audio codes")
            where = "audio codes"
        elif isinstance(audio, (str, os.PathLike)):
            codes = rt.encode_file(audio)
            where = os.fspath(audio)
        else:
            codes = rt.encode_waveform(np.asarray(audio, np.float32))
            where = "input waveform"
        if codes.shape[0] == 0:
            raise ValueError(f"{where}: too short to give one audio token")
        return codes

    def _settings(self, mode: Mode, options: Options) -> tuple[il.Protocol, PhaseSampling, int, int]:
        unknown = set(options) - set(_SAMPLING_OPTIONS) - {"seed", "max_new_tokens", "stream_to", "on_chunk",
                                                           "on_progress"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}")
        sampling = mode.sampling.replace(**{k: options.get(k) for k in _SAMPLING_OPTIONS})
        protocol = mode.protocol
        if mode.speech_output:
            # Without vocoder weights the mel is inverted by Griffin-Lim (SpeechDecoder).
            parts = dict(audio_tokenizer=self.speech, flow_matching=getattr(self.speech, "flow_matching", None))
            missing = [name for name, part in parts.items() if part is None]
            if missing:
                raise ValueError(f"mode {mode.name} speaks, but {self._where()} has no {', '.join(missing)} "
                                 "(`baichuan-audio convert` adds components)")
        if self.speech is not None:
            # Segments no longer than the audio decoder takes; the same frame limit in every mode
            # also lets every mode share one compiled decoding loop.
            limit = self.speech.tokenizer.max_tokens
            protocol = dataclasses.replace(protocol, audio_max_frames=min(protocol.audio_max_frames, limit))
        max_new = options.get("max_new_tokens")
        max_new = mode.max_new_tokens if max_new is None else int(max_new)
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new}")
        return protocol, sampling, max_new, int(options.get("seed") or 0)

    def _run(self, mode_name: str, prompts: list, options: Options) -> GenerationResult:
        mode = MODES[mode_name]
        protocol, sampling, max_new, seed = self._settings(mode, options)
        first = prompts[0].arrays()
        if mode_name == "tts":
            max_new = options.get("max_new_tokens") or max_new * len(prompts)
        request = Request(first[0], first[1], start="audio" if mode_name == "tts" else "text", sampling=sampling,
                          seed=seed, max_new_tokens=max_new, continuations=[p.arrays()[0] for p in prompts[1:]])
        t0 = time.perf_counter()
        stream = None
        if mode.speech_output:
            key = jax.random.fold_in(jax.random.key(seed), 0x5EED)

            def to_wave(codes, index):
                return codes_to_wave(self.speech, codes, key=jax.random.fold_in(key, index))

            stream = AudioStream(to_wave, path=options.get("stream_to"), on_chunk=options.get("on_chunk"), start=t0)
        try:
            progress = options.get("on_progress")
            (row,) = self.engine.generate(
                [request], protocol, on_segment=None if stream is None else lambda r, codes: stream.add(codes),
                on_progress=None if progress is None else lambda n, limits: progress(int(n[0]), limits[0]))
        finally:
            if stream is not None:
                stream.close()
        elapsed = time.perf_counter() - t0
        frames = sum(len(s) for s in row.segments)
        timings = dict(total_seconds=elapsed, audio_frames=float(frames))
        if stream is not None and stream.first_chunk_seconds is not None:
            timings["first_audio_chunk_seconds"] = stream.first_chunk_seconds
        return GenerationResult(
            mode=mode_name, text=self.display_text(row.text_tokens), text_tokens=row.text_tokens,
            segments=row.segments, segment_text_ends=list(row.segment_text_ends),
            waveform=None if stream is None else stream.waveform, sample_rate=SAMPLE_RATE,
            finish_reason=row.finish_reason, new_tokens=row.new_tokens, max_new_tokens=row.budget, timings=timings)

    def _where(self) -> str:
        return f"bundle {self.source}" if getattr(self, "source", None) else "this generator"

    def display_text(self, tokens: Sequence[int]) -> str:
        """Text as shown to a user: special tokens (EOS, audio tags) removed."""
        return self.tokenizer.decode([t for t in tokens if t not in self._special])


def load_bundle_tokenizer(directory: str):
    """The text tokenizer stored in a bundle's ``tokenizer/`` directory."""

    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        return load_text_tokenizer(os.path.join(directory, "tokenizer.json"))
    models = sorted(f for f in os.listdir(directory) if f.endswith(".model"))
    if not models:
        raise TokenizerError(f"{directory}: no tokenizer.json or sentencepiece .model")
    return load_text_tokenizer(os.path.join(directory, models[0]))
