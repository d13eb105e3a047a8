"""The web application: OpenAI-style speech endpoints, a spoken-chat WebSocket and a voice-chat page.

* ``POST /v1/audio/transcriptions`` — multipart ``file`` (+ ``model``, ``language``, ``prompt``,
  ``temperature``, ``response_format`` json | text | verbose_json): speech recognition.
* ``POST /v1/audio/speech`` — JSON ``input`` (+ ``model``, ``voice``, ``response_format`` wav |
  pcm | flac, ``speed``, ``stream``): speech, streamed (wav, pcm) as each segment is vocoded.
* ``WS /v1/audio/chat`` — spoken chat with history (see :func:`chat_socket` for the messages).
* ``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /`` (the voice-chat page).

Errors are JSON ``{"error": {"message", "type", "param"}}`` with a 4xx status for bad input (the
message names the field), 503 when the queue is full and 504 when a request runs out of time.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from baichuan_audio_jax.inference.generator import Generator
from baichuan_audio_jax.inference.prompts import ASR_INSTRUCTION, DEFAULT_SYSTEM_PROMPT, PromptError, check_text
from baichuan_audio_jax.inference.waveform import SAMPLE_RATE
from baichuan_audio_jax.serve.audio import (
    SPEECH_FORMATS,
    STREAMABLE,
    UploadError,
    encode,
    pcm16,
    read_upload,
    wav_header,
)
from baichuan_audio_jax.serve.metrics import Metrics
from baichuan_audio_jax.serve.scheduler import Job, Outcome, QueueFull, Scheduler, build_job

log = logging.getLogger("baichuan_audio_jax.serve")
STATIC = os.path.join(os.path.dirname(__file__), "static")
VOICES = ("default",)  # the model speaks with one voice (its training data's)
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
MAX_INPUT_CHARS = 4096


@dataclasses.dataclass
class ServeSettings:
    max_batch: int = 8  # requests decoded together at most
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # waiting requests at most (more: 503)
    batch_sizes: tuple[int, ...] | None = None  # compiled batch sizes (default: powers of 2 to max_batch)
    request_timeout: float = 120.0  # seconds from arrival to the end of the answer (504 after)
    max_upload_seconds: float = 60.0  # longest accepted input audio
    max_upload_mb: float = 25.0  # largest accepted upload
    max_new_tokens: int | None = None  # per-request new-token limit (default: each mode's)
    stream_steps: int = 8  # decoding steps between returns to the host (text streaming granularity)
    warm_up: bool = True  # compile the batch sizes' programs at start-up
    warm_up_audio_seconds: float = 5.0  # input audio length the start-up compiles for (ASR, chat)
    warm_up_modes: tuple[str, ...] | None = None  # modes compiled at start-up (default: every mode served)
    chat_text_tokens: int | None = None  # spoken chat: text tokens per segment before speaking (default: 50)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status_code=status)


class SpeechRequest(BaseModel):
    input: Any = None
    model: str | None = None
    voice: str | None = None
    response_format: str = "wav"
    speed: float = 1.0
    stream: bool = False
    seed: int | None = None
    max_new_tokens: int | None = None  # extension: at most the server's limit


class Server:
    """The generator, its scheduler and metrics, shared by the endpoints."""

    def __init__(self, gen: Generator, settings: ServeSettings):
        self.gen, self.settings = gen, settings
        self.metrics = Metrics()
        self.scheduler = Scheduler(gen, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000.0,
                                   max_queue=settings.max_queue, batch_sizes=settings.batch_sizes,
                                   stream_steps=settings.stream_steps, metrics=self.metrics)
        self.ready = False
        self.started = time.time()
        self.speaks = gen.speech is not None and gen.speech.flow_matching is not None
        self.hears = gen.speech is not None

    # ------------------------------------------------------------------ jobs

    def options(self, max_new_tokens: int | None = None, **extra) -> dict:
        """Generation options: ``max_new_tokens`` as asked, at most the server's limit."""
        out = {k: v for k, v in extra.items() if v is not None}
        cap = self.settings.max_new_tokens
        if max_new_tokens is not None:
            if max_new_tokens < 1:
                raise APIError(400, f"max_new_tokens: must be ≥ 1, got {max_new_tokens}", "max_new_tokens")
            out["max_new_tokens"] = min(max_new_tokens, cap) if cap else max_new_tokens
        elif cap:
            out["max_new_tokens"] = cap
        return out

    def job(self, mode: str, prompts: list, options: dict) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = self.build(mode, prompts, options, emit, timeout=self.settings.request_timeout)
        tokens = len(job.request.prompt_ids) + sum(len(c) for c in job.request.continuations)
        if tokens >= self.gen.engine.max_context:
            what = {"asr": "file", "tts": "input"}.get(mode, "conversation")
            raise APIError(400, f"{what}: the prompt is {tokens} tokens, beyond the model's context of "
                                f"{self.gen.engine.max_context}", what)
        try:
            self.scheduler.submit(job)
        except QueueFull as e:
            raise APIError(503, str(e)) from None
        return job, events

    def build(self, mode: str, prompts: list, options: dict, emit, **kw) -> Job:
        job = build_job(self.gen, mode, prompts, options, emit, **kw)
        n = self.settings.chat_text_tokens
        if mode == "s2s" and n:
            job.protocol = dataclasses.replace(job.protocol, first_text_max_tokens=n, later_text_max_tokens=n)
        return job

    def warm_up(self) -> None:
        """One batch of every compiled size in every mode the bundle has, on synthetic input."""
        rng = np.random.default_rng(0)
        audio = (0.1 * rng.standard_normal(int(16000 * self.settings.warm_up_audio_seconds))).astype(np.float32)
        kinds = []
        if self.hears:
            codes = self.gen.speech.tokenizer.encode_waveform(audio)
            kinds.append(("asr", [self.gen.prompts.asr(codes, ASR_INSTRUCTION)]))
            chat = [{"role": "user", "audio": "q"}]
            kinds.append(("s2s" if self.speaks else "s2t",
                          [self.gen.prompts.chat(chat, lambda _: codes, speech_output=self.speaks,
                                                 system=DEFAULT_SYSTEM_PROMPT)]))
        if self.speaks:
            kinds.append(("tts", self.gen.prompts.tts("你好，今天天气不错。")))
        if self.settings.warm_up_modes is not None:
            kinds = [(m, p) for m, p in kinds if m in self.settings.warm_up_modes]
        for b in self.scheduler.batch_sizes:
            for mode, prompts in kinds:
                t0 = time.perf_counter()
                jobs = [self.build(mode, prompts, self.options(), lambda e: None) for _ in range(b)]
                self.scheduler.warm_up([jobs])
                log.info("warm-up: %s at batch size %d in %.1f s", mode, b, time.perf_counter() - t0)
        if self.scheduler.speech is not None:
            t0 = time.perf_counter()
            frames = min(self.settings.max_new_tokens or 1 << 30, self.gen.speech.tokenizer.max_tokens)
            self.scheduler.speech.warm_up(frames)
            log.info("warm-up: speech decoding for segments up to %d frames in %.1f s", frames,
                     time.perf_counter() - t0)
        self.metrics.compiled.set(len(self.gen.engine.compiled))

    async def wait(self, job: Job, events: asyncio.Queue, request: Request | None = None) -> tuple[Outcome, list]:
        """Waits for a job's end (cancelling it if the HTTP client goes away); returns its outcome
        and its audio chunks."""
        chunks = []
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), 0.25)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        job.cancel()
                        raise APIError(499, "client went away") from None
                    continue
                if ev[0] == "audio":
                    chunks.append(ev[1])
                elif ev[0] == "done":
                    return ev[1], chunks
                elif ev[0] == "error":
                    raise APIError(ev[1], ev[2])
        except asyncio.CancelledError:
            job.cancel()
            raise

    # ------------------------------------------------------------------ inputs

    async def audio_codes(self, data: bytes, name: str) -> tuple[np.ndarray, float]:
        if not self.hears:
            raise APIError(400, "this model has no audio tokenizer: speech input is not available")
        rt = self.gen.speech.tokenizer
        try:
            wave, seconds = await run_in_threadpool(read_upload, data, name,
                                                    max_seconds=self.settings.max_upload_seconds,
                                                    loader=rt.load_waveform)
        except UploadError as e:
            raise APIError(e.status, str(e), "file") from None
        codes = await run_in_threadpool(rt.encode_waveform, wave)
        if codes.shape[0] == 0:
            raise APIError(400, f"{name}: too short to give one audio token", "file")
        self.metrics.audio_in_seconds.inc(seconds)
        return codes, seconds


class CountRequests:
    """Counts ``/v1/`` requests by endpoint and status (a plain ASGI middleware: it leaves
    streaming and disconnect detection alone)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        status = {}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint=scope["path"], status=str(status.get("code", 499))).inc()


def create_app(gen: Generator, settings: ServeSettings | None = None) -> FastAPI:
    """The application for a loaded generator (``app.state.server`` is its :class:`Server`)."""
    settings = settings or ServeSettings()
    server = Server(gen, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.warm_up:
            await run_in_threadpool(server.warm_up)
        server.scheduler.start()
        server.ready = True
        yield
        server.ready = False
        await run_in_threadpool(server.scheduler.stop)

    app = FastAPI(title="Baichuan-Audio (JAX) speech server", lifespan=lifespan)
    app.state.server = server
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_response(400, f"{where}: {first.get('msg', 'invalid')}", where)

    app.add_middleware(CountRequests, metrics=server.metrics)

    # ------------------------------------------------------------------ service endpoints

    @app.get("/")
    async def index():
        return FileResponse(os.path.join(STATIC, "index.html"))

    @app.get("/health")
    async def health():
        s = server.scheduler
        body = dict(status="ok" if server.ready else "starting", model=getattr(gen, "source", None),
                    speech_input=server.hears, speech_output=server.speaks, queue_depth=s.queue_depth,
                    running=s.running_jobs, max_batch=s.max_batch, batch_sizes=list(s.batch_sizes),
                    batches=s.batches, compiled_programs=len(gen.engine.compiled),
                    uptime_seconds=round(time.time() - server.started, 1))
        return JSONResponse(body, status_code=200 if server.ready else 503)

    @app.get("/metrics")
    async def metrics():
        server.metrics.compiled.set(len(gen.engine.compiled))
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    # ------------------------------------------------------------------ speech recognition

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request, file: UploadFile = File(...), model: str | None = Form(None),
                             language: str | None = Form(None), prompt: str | None = Form(None),
                             response_format: str = Form("json"), temperature: float | None = Form(None),
                             max_new_tokens: int | None = Form(None)):
        if response_format not in TRANSCRIPTION_FORMATS:
            raise APIError(400, f"response_format: {response_format!r} is not supported; choose "
                                f"{', '.join(TRANSCRIPTION_FORMATS)}", "response_format")
        if temperature is not None and not 0.0 <= temperature <= 2.0:
            raise APIError(400, f"temperature: {temperature} is outside [0, 2]", "temperature")
        t0 = time.perf_counter()
        name = file.filename or "file"
        data = await _read_limited(file, settings.max_upload_mb, name)
        codes, seconds = await server.audio_codes(data, name)
        instruction = ASR_INSTRUCTION
        if prompt:
            try:
                instruction = check_text(prompt, "prompt")
            except PromptError as e:
                raise APIError(400, str(e), "prompt") from None
        sampling = {} if not temperature else dict(do_sample=True, temperature=temperature)
        options = server.options(max_new_tokens, **sampling)
        job, events = server.job("asr", [gen.prompts.asr(codes, instruction)], options)
        outcome, _ = await server.wait(job, events, request)
        server.metrics.tokens.labels(mode="asr").inc(outcome.new_tokens)
        server.metrics.latency.labels(endpoint="transcriptions").observe(time.perf_counter() - t0)
        text = outcome.text.strip()
        if response_format == "text":
            return PlainTextResponse(text)
        if response_format == "json":
            return {"text": text}
        return {"task": "transcribe", "language": language, "duration": round(seconds, 3), "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": text,
                              "tokens": outcome.text_tokens, "temperature": temperature or 0.0}],
                "finish_reason": outcome.finish_reason}

    # ------------------------------------------------------------------ speech synthesis

    @app.post("/v1/audio/speech")
    async def speech(request: Request, body: SpeechRequest):
        if not server.speaks:
            raise APIError(400, "this model has no speech decoder: speech output is not available")
        if not isinstance(body.input, str) or not body.input.strip():
            raise APIError(400, "input: empty; give the text to speak", "input")
        if len(body.input) > MAX_INPUT_CHARS:
            raise APIError(400, f"input: {len(body.input)} characters, above the limit of {MAX_INPUT_CHARS}",
                           "input")
        if body.voice is not None and body.voice not in VOICES:
            raise APIError(400, f"voice: unknown voice {body.voice!r}; available: {', '.join(VOICES)}", "voice")
        fmt = body.response_format
        if fmt not in SPEECH_FORMATS:
            raise APIError(400, f"response_format: {fmt!r} is not supported; choose {', '.join(SPEECH_FORMATS)}",
                           "response_format")
        if body.stream and fmt not in STREAMABLE:
            raise APIError(400, f"response_format: {fmt} cannot be streamed; use {' or '.join(STREAMABLE)}",
                           "response_format")
        if body.speed != 1.0:
            raise APIError(400, f"speed: only 1.0 is supported, got {body.speed}", "speed")
        try:
            prompts = gen.prompts.tts(body.input)
        except PromptError as e:
            raise APIError(400, f"input: {e}", "input") from None
        t0 = time.perf_counter()
        job, events = server.job("tts", prompts, server.options(body.max_new_tokens, seed=body.seed))
        if not body.stream:
            outcome, chunks = await server.wait(job, events, request)
            wave = np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
            server.metrics.tokens.labels(mode="tts").inc(outcome.new_tokens)
            server.metrics.latency.labels(endpoint="speech").observe(time.perf_counter() - t0)
            if "first_audio_chunk_seconds" in outcome.timings:
                server.metrics.first_audio.labels(endpoint="speech").observe(outcome.timings["first_audio_chunk_seconds"])
            return Response(encode(wave, SAMPLE_RATE, fmt), media_type=SPEECH_FORMATS[fmt],
                            headers={"X-Finish-Reason": outcome.finish_reason,
                                     "X-Audio-Seconds": f"{outcome.audio_seconds:.3f}"})
        # Streamed: wait for the first chunk (errors before it still get their status), then send
        # each chunk as it is vocoded. Starlette cancels the body when the client disconnects.
        first = await _first_audio(job, events, request)

        async def body_iter():
            finished, ev, first_chunk = False, first, True
            try:
                while True:
                    if ev[0] == "audio":
                        data = pcm16(ev[1])
                        if first_chunk:
                            server.metrics.first_audio.labels(endpoint="speech").observe(time.perf_counter() - t0)
                            if fmt == "wav":  # the header goes with the first chunk
                                data = wav_header(SAMPLE_RATE) + data
                            first_chunk = False
                        yield data
                    elif ev[0] == "done":
                        finished = True
                        server.metrics.tokens.labels(mode="tts").inc(ev[1].new_tokens)
                        server.metrics.latency.labels(endpoint="speech").observe(time.perf_counter() - t0)
                        return
                    elif ev[0] == "error":  # after the status was sent: the stream ends short
                        finished = True
                        log.warning("speech stream ended early: %s", ev[2])
                        return
                    ev = await events.get()
            finally:
                if not finished:  # the client went away (Starlette cancels the body)
                    job.cancel()

        return StreamingResponse(body_iter(), media_type=SPEECH_FORMATS[fmt])

    async def _first_audio(job: Job, events: asyncio.Queue, request: Request):
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), 0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise APIError(499, "client went away") from None
                continue
            except asyncio.CancelledError:
                job.cancel()
                raise
            if ev[0] == "error":
                raise APIError(ev[1], ev[2])
            if ev[0] in ("audio", "done"):
                return ev

    # ------------------------------------------------------------------ spoken chat

    @app.websocket("/v1/audio/chat")
    async def chat_socket(ws: WebSocket):
        await chat_session(server, ws)

    return app


async def _read_limited(file: UploadFile, max_mb: float, name: str) -> bytes:
    limit = int(max_mb * 1024 * 1024)
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, f"{name}: larger than the upload limit of {max_mb:g} MB (--max-upload-mb)", "file")
    return data


# ----------------------------------------------------------------------------- the chat socket

async def chat_session(server: Server, ws: WebSocket) -> None:
    """Spoken chat over a WebSocket.

    Client → server: a binary message is the user's spoken turn (an audio file: WAV, FLAC, Ogg);
    JSON ``{"type": "text", "text"}`` is a typed turn; ``{"type": "config", "system"?,
    "speech_output"?}`` sets the system prompt and whether answers are spoken; ``{"type":
    "reset"}`` forgets the history.

    Server → client: ``{"type": "ready", "sample_rate", "speech_output"}``; per turn
    ``{"type": "transcript", "text"}`` (what the user said, from speech recognition run alongside
    the answer), ``{"type": "text", "delta"}`` as the answer is written, binary messages with the
    answer's audio as it is vocoded (16-bit little-endian PCM at ``sample_rate``), then
    ``{"type": "done", "text", "finish_reason", "audio_seconds", "timings"}``; bad input gets
    ``{"type": "error", "message"}`` and the session goes on.
    """
    await ws.accept()
    history: list[dict] = []
    store: dict[str, np.ndarray] = {}
    system = DEFAULT_SYSTEM_PROMPT
    speak = server.speaks
    limit = None
    inbox: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()

    async def reader():
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                await inbox.put(msg)
        except (WebSocketDisconnect, RuntimeError):
            pass
        gone.set()
        await inbox.put({"type": "websocket.disconnect"})

    reading = asyncio.create_task(reader())
    await ws.send_json({"type": "ready", "sample_rate": SAMPLE_RATE, "speech_output": speak,
                        "speech_input": server.hears})
    try:
        while True:
            msg = await inbox.get()
            if msg["type"] == "websocket.disconnect":
                return
            try:
                if msg.get("bytes") is not None:
                    turn_id = f"user{len(store)}"
                    codes, _ = await server.audio_codes(msg["bytes"], "audio")
                    store[turn_id] = codes
                    user = {"role": "user", "audio": turn_id}
                else:
                    data = json.loads(msg.get("text") or "{}")
                    kind = data.get("type") if isinstance(data, dict) else None
                    if kind == "reset":
                        history.clear()
                        store.clear()
                        await ws.send_json({"type": "reset"})
                        continue
                    if kind == "config":
                        if "system" in data:
                            system = check_text(str(data["system"]), "system")
                        if "speech_output" in data:
                            speak = bool(data["speech_output"]) and server.speaks
                        if "max_new_tokens" in data:
                            limit = server.options(int(data["max_new_tokens"])).get("max_new_tokens")
                        await ws.send_json({"type": "config", "system": system, "speech_output": speak,
                                            "max_new_tokens": limit})
                        continue
                    if kind != "text" or not str(data.get("text", "")).strip():
                        raise APIError(400, "send audio (a binary message) or {\"type\": \"text\", \"text\": ...}")
                    user = {"role": "user", "text": check_text(str(data["text"]), "text")}
                await _answer(server, ws, gone, history, store, user, system, speak, limit)
            except (APIError, PromptError, ValueError) as e:
                if isinstance(e, _Gone):
                    return
                await ws.send_json({"type": "error", "message": getattr(e, "message", str(e))})
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        reading.cancel()


class _Gone(APIError):
    def __init__(self):
        super().__init__(499, "client went away")


async def _answer(server: Server, ws: WebSocket, gone: asyncio.Event, history: list, store: dict, user: dict,
                  system: str, speak: bool, limit: int | None) -> None:
    gen = server.gen
    turns = history + [user]
    prompt = gen.prompts.chat(turns, store.__getitem__, speech_output=speak, system=system)
    mode = "s2s" if speak else "s2t"
    jobs = []
    job, events = server.job(mode, [prompt], server.options(limit, seed=len(history)))
    jobs.append(job)
    asr = None
    if "audio" in user:  # the transcript of what was said, decoded alongside the answer
        asr, asr_events = server.job("asr", [gen.prompts.asr(store[user["audio"]], ASR_INSTRUCTION)],
                                     server.options(limit))
        jobs.append(asr)
    t0 = time.perf_counter()
    first_audio = None
    try:
        pending_asr = asr is not None
        while True:
            getters = {asyncio.ensure_future(events.get()): "answer", asyncio.ensure_future(gone.wait()): "gone"}
            if pending_asr:
                getters[asyncio.ensure_future(asr_events.get())] = "asr"
            done, rest = await asyncio.wait(getters, return_when=asyncio.FIRST_COMPLETED)
            for f in rest:
                f.cancel()
            result = None
            for f in done:
                ev, source = f.result(), getters[f]
                if source == "gone":
                    raise _Gone()
                elif source == "asr":  # its text deltas are not shown: the transcript comes whole
                    pending_asr = ev[0] not in ("done", "error")
                    if ev[0] == "done":
                        await ws.send_json({"type": "transcript", "text": ev[1].text.strip()})
                elif ev[0] == "text":
                    await ws.send_json({"type": "text", "delta": ev[1]})
                elif ev[0] == "audio":
                    if first_audio is None:
                        first_audio = time.perf_counter() - t0
                        server.metrics.first_audio.labels(endpoint="chat").observe(first_audio)
                    await ws.send_bytes(pcm16(ev[1]))
                elif ev[0] == "error":
                    raise APIError(ev[1], ev[2])
                elif ev[0] == "done":
                    result = ev[1]
            if result is not None:
                break
        while pending_asr:  # the transcript, if still being written
            ev = await asr_events.get()
            if ev[0] == "done":
                await ws.send_json({"type": "transcript", "text": ev[1].text.strip()})
            pending_asr = ev[0] not in ("done", "error")
    except BaseException:
        for j in jobs:
            j.cancel()
        raise
    server.metrics.tokens.labels(mode=mode).inc(result.new_tokens)
    server.metrics.latency.labels(endpoint="chat").observe(time.perf_counter() - t0)
    history.append(user)
    answer = _assistant_turn(gen, result, store, len(history))
    if answer is not None:
        history.append(answer)
    await ws.send_json({"type": "done", "text": result.text, "finish_reason": result.finish_reason,
                        "audio_seconds": round(result.audio_seconds, 3),
                        "timings": {k: round(v, 4) for k, v in result.timings.items()}})


def _assistant_turn(gen: Generator, result: Outcome, store: dict, index: int) -> dict | None:
    """The answer as a history turn: its text pieces and spoken segments (codes kept, not re-encoded)."""
    segments, start = [], 0
    for i, (codes, end) in enumerate(zip(result.segments, result.segment_text_ends)):
        part: dict = {}
        text = gen.display_text(result.text_tokens[start:end]).strip()
        if text:
            part["text"] = text
        if len(codes):
            ref = f"assistant{index}_{i}"
            store[ref] = codes
            part["audio"] = ref
        if part:
            segments.append(part)
        start = end
    tail = gen.display_text(result.text_tokens[start:]).strip()
    if tail:
        segments.append({"text": tail})
    if not segments:
        return None
    return {"role": "assistant", "segments": segments}
