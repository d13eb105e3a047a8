"""The speech server end to end on a complete tiny bundle, over real HTTP and WebSocket connections
to a server started (and compiled, at start-up) once for this module.

Batching is checked as a property of the answers: the same request gives the same transcript
alone and decoded alongside others, and the batch-size metrics show the requests were decoded
together. Bad input gets a 4xx naming the field, and the server keeps serving afterwards; a client
that goes away mid-answer has its row stopped."""
import asyncio
import io
import json
import re
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from generation_helpers import tiny_bundle

from baichuan_audio_jax.inference.generator import Generator
from baichuan_audio_jax.serve.app import ServeSettings, create_app
from baichuan_audio_jax.serve.runner import ServerThread

LIMIT = 16  # new tokens per request (the server's cap): one speech bucket to compile
SETTINGS = ServeSettings(max_batch=4, batch_sizes=(4,), max_wait_ms=300, max_new_tokens=LIMIT, stream_steps=2,
                         max_upload_seconds=30, request_timeout=300,
                         chat_text_tokens=4, warm_up_audio_seconds=4.5)  # the recording's


@pytest.fixture(scope="module")
def gen(parity_dir):
    return Generator.from_bundle(tiny_bundle(str(parity_dir)))


@pytest.fixture(scope="module")
def server(gen):
    with ServerThread(create_app(gen, SETTINGS)) as s:
        yield s


@pytest.fixture(scope="module")
def speech_bytes(speech_dir):
    return (speech_dir / "zh_med_1889.wav").read_bytes()


def run(coro):
    return asyncio.run(coro)


async def transcribe(client, data, name="q.wav", **form):
    return await client.post("/v1/audio/transcriptions", files={"file": (name, data, "audio/wav")},
                             data={k: str(v) for k, v in form.items()})


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    m = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_health_reports_ready_and_compiled(server):
    r = httpx.get(server.url + "/health")
    h = r.json()
    assert r.status_code == 200 and h["status"] == "ok" and h["speech_input"] and h["speech_output"]
    assert h["compiled_programs"] >= 2 and h["batch_sizes"] == [4]  # compiled at start-up


def test_concurrent_transcriptions_are_batched_and_match_a_lone_request(server, speech_bytes):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            before = (await c.get("/metrics")).text
            alone = await transcribe(c, speech_bytes, max_new_tokens=12)
            together = await asyncio.gather(*(transcribe(c, speech_bytes, max_new_tokens=12) for _ in range(4)))
            after = (await c.get("/metrics")).text
            return before, alone, together, after

    before, alone, together, after = run(go())
    assert alone.status_code == 200, alone.text
    text = alone.json()["text"]
    assert text and all(r.status_code == 200 and r.json()["text"] == text for r in together)
    # the lone request was a batch of its own; the four (each encoded on its own first) were
    # gathered into fewer batches than requests
    batches = metric(after, "baichuan_batch_size_count") - metric(before, "baichuan_batch_size_count")
    assert 2 <= batches <= 3
    assert metric(after, "baichuan_batch_size_sum") - metric(before, "baichuan_batch_size_sum") == 5
    assert metric(after, "baichuan_requests_total", endpoint="/v1/audio/transcriptions", status="200") >= 5


def test_transcript_matches_the_generator(server, gen, speech_dir, speech_bytes):
    """The served transcript is the library's (greedy decoding of the same prompt)."""
    r = run(_one(server, speech_bytes, max_new_tokens=12))
    assert r.json()["text"] == gen.asr(str(speech_dir / "zh_med_1889.wav"), max_new_tokens=12).text.strip()


async def _one(server, data, **form):
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
        return await transcribe(c, data, **form)


def test_transcription_formats(server, speech_bytes):
    text = run(_one(server, speech_bytes, response_format="text", max_new_tokens=6))
    verbose = run(_one(server, speech_bytes, response_format="verbose_json", max_new_tokens=6))
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    v = verbose.json()
    assert v["text"] == text.text and v["segments"][0]["text"] == v["text"]
    assert v["duration"] == pytest.approx(sf.info(io.BytesIO(speech_bytes)).duration, abs=1e-3)
    assert v["segments"][0]["end"] == v["duration"] and 1 <= len(v["segments"][0]["tokens"]) <= 6


def _samples(frames: int) -> int:
    return 480 * (4 * frames - 1)


def test_speech_in_every_format(server):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            return await asyncio.gather(*(c.post("/v1/audio/speech", json={"input": "你好，今天天气不错。",
                                                                            "response_format": f})
                                          for f in ("wav", "pcm", "flac")))

    wav, pcm, flac = run(go())
    assert [r.status_code for r in (wav, pcm, flac)] == [200, 200, 200]
    w, rate = sf.read(io.BytesIO(wav.content), dtype="float32")
    f, rate_f = sf.read(io.BytesIO(flac.content), dtype="float32")
    assert rate == rate_f == 24000 and wav.headers["content-type"] == "audio/wav"
    # one segment of LIMIT frames (the tiny model never ends a segment on its own here)
    assert wav.headers["x-finish-reason"] == "length" and len(w) == _samples(LIMIT)
    assert len(pcm.content) == 2 * len(w) and len(f) == len(w)
    np.testing.assert_array_equal(np.frombuffer(pcm.content, "<i2"), np.frombuffer(wav.content[44:], "<i2"))
    assert float(wav.headers["x-audio-seconds"]) == pytest.approx(len(w) / 24000, abs=1e-3)
    assert np.abs(w).max() > 0.0


def test_speech_streams_a_wav_chunk_by_chunk(server):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            t0 = time.perf_counter()
            async with c.stream("POST", "/v1/audio/speech", json={"input": "你好，今天天气不错。", "stream": True,
                                                                 "max_new_tokens": 12}) as r:
                parts, first = [], None
                async for part in r.aiter_bytes():
                    first = first or time.perf_counter() - t0
                    parts.append(part)
                return r, b"".join(parts), first, time.perf_counter() - t0

    r, data, first, total = run(go())
    assert r.status_code == 200 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert data[40:44] == b"\xff\xff\xff\xff"  # a stream: the data size is unknown up front
    assert (len(data) - 44) // 2 == _samples(12) and first <= total


@pytest.mark.parametrize("case, status, message", [
    ("not audio", 400, "not an audio file"),
    ("empty file", 400, "empty file"),
    ("ten minutes", 413, "above the limit of 30 s"),
    ("no file", 400, "file: Field required"),
    ("srt", 400, "response_format: 'srt' is not supported"),
    ("empty input", 400, "input: empty"),
    ("unknown voice", 400, "voice: unknown voice 'nova'"),
    ("mp3", 400, "response_format: 'mp3' is not supported"),
    ("flac stream", 400, "flac cannot be streamed"),
    ("special token", 400, "'<C_Q>', a special token"),
    ("speed", 400, "speed: only 1.0"),
])
def test_bad_input_gets_a_4xx_naming_it(server, case, status, message):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            if case == "not audio":
                return await transcribe(c, b"this is a text file, not a recording\n" * 20, name="notes.txt")
            if case == "empty file":
                return await transcribe(c, b"", name="empty.wav")
            if case == "ten minutes":
                buf = io.BytesIO()
                sf.write(buf, np.zeros(600 * 8000, np.int16), 8000, format="WAV", subtype="PCM_16")
                return await transcribe(c, buf.getvalue(), name="long.wav")
            if case == "no file":
                return await c.post("/v1/audio/transcriptions", data={"model": "x"})
            if case == "srt":
                return await transcribe(c, b"x", response_format="srt")
            body = {"input": "你好。"}
            body.update({"empty input": {"input": "  "}, "unknown voice": {"voice": "nova"},
                         "mp3": {"response_format": "mp3"}, "flac stream": {"response_format": "flac", "stream": True},
                         "special token": {"input": "say <C_Q> now"}, "speed": {"speed": 2.0}}[case])
            return await c.post("/v1/audio/speech", json=body)

    r = run(go())
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_spoken_chat_streams_text_and_audio_and_keeps_history(server, speech_bytes):
    async def turn(ws, payload):
        await ws.send(payload)
        events = []
        while True:
            m = await ws.recv()
            if isinstance(m, bytes):
                events.append(("audio", m))
                continue
            msg = json.loads(m)
            events.append((msg["type"], msg))
            if msg["type"] in ("done", "error"):
                return events

    async def go():
        async with websockets.connect(server.url.replace("http", "ws") + "/v1/audio/chat", max_size=None) as ws:
            ready = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "config", "max_new_tokens": LIMIT}))
            config = json.loads(await ws.recv())
            first = await turn(ws, speech_bytes)
            second = await turn(ws, json.dumps({"type": "text", "text": "再说一遍"}))
            bad = await turn(ws, b"not audio at all")
            third = await turn(ws, json.dumps({"type": "text", "text": "谢谢"}))
            return ready, config, first, second, bad, third

    ready, config, first, second, bad, third = run(go())
    assert ready["type"] == "ready" and ready["sample_rate"] == 24000 and config["max_new_tokens"] == LIMIT
    kinds = [k for k, _ in first]
    assert "transcript" in kinds and kinds[-1] == "done"
    done = first[-1][1]
    text = "".join(m["delta"] for k, m in first if k == "text")
    assert text.strip() == done["text"].strip()
    audio = b"".join(m for k, m in first if k == "audio")
    # at most 4 text tokens (chat_text_tokens), then speech within the limit
    assert 0 < done["audio_seconds"] <= _samples(LIMIT - 1) / 24000
    assert len(audio) == 2 * round(done["audio_seconds"] * 24000)
    assert kinds.index("text") < kinds.index("audio")  # text streamed first, then the speech
    assert second[-1][0] == "done" and third[-1][0] == "done"
    assert bad[-1][0] == "error" and "not an audio file" in bad[-1][1]["message"]


def test_a_cancelled_row_stops_mid_batch_and_its_batch_mate_goes_on(server, gen, speech_dir):
    """What the server does when a client goes away mid-answer: the row is stopped at the next
    hand-over (``stream_steps`` = 2), the other row of the batch runs to its limit."""
    from baichuan_audio_jax.inference.prompts import ASR_INSTRUCTION
    from baichuan_audio_jax.serve.scheduler import build_job

    scheduler = server.app.state.server.scheduler
    prompt = gen.prompts.asr(gen.speech.tokenizer.encode_file(str(speech_dir / "zh_med_1889.wav")), ASR_INSTRUCTION)
    events = {"leaves": [], "stays": []}
    at_cancel = []

    def emit_for(name):
        def emit(ev):
            events[name].append(ev)
            if name == "leaves" and ev[0] == "text" and not at_cancel:
                at_cancel.append(len(jobs["leaves"].tokens))
                jobs["leaves"].cancel()  # the client is gone after its first piece of text
        return emit

    jobs = {name: build_job(gen, "asr", [prompt], {"max_new_tokens": LIMIT}, emit_for(name)) for name in events}
    for j in jobs.values():
        scheduler.submit(j)
    assert all(j.finished.wait(300) for j in jobs.values())
    leaves, stays = jobs["leaves"], jobs["stays"]
    assert leaves.batch_size == stays.batch_size == 2  # decoded together
    assert events["leaves"][-1][:2] == ("error", 499)
    assert len(leaves.tokens) <= at_cancel[0] + SETTINGS.stream_steps < LIMIT
    assert events["stays"][-1][0] == "done" and events["stays"][-1][1].new_tokens == LIMIT


def test_a_client_that_goes_away_is_stopped_and_the_next_is_served(server, speech_bytes):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            before = (await c.get("/metrics")).text
            # keep the engine busy, so the chat's requests are still waiting when its client leaves
            busy = [asyncio.ensure_future(c.post("/v1/audio/speech", json={"input": "你好，今天天气不错。"}))
                    for _ in range(4)]
            await asyncio.sleep(0.1)
            async with websockets.connect(server.url.replace("http", "ws") + "/v1/audio/chat") as ws:
                await ws.recv()
                await ws.send(speech_bytes)
            assert all(r.status_code == 200 for r in await asyncio.gather(*busy))
            def settled(text):  # the chat's requests were stopped, nothing waits or runs
                gone = metric(text, "baichuan_stopped_requests_total", reason="cancelled")
                return (gone > metric(before, "baichuan_stopped_requests_total", reason="cancelled")
                        and metric(text, "baichuan_running_requests") == metric(text, "baichuan_queue_depth") == 0)

            for _ in range(600):
                after = (await c.get("/metrics")).text
                if settled(after):
                    break
                await asyncio.sleep(0.1)
            nxt = await transcribe(c, speech_bytes, max_new_tokens=4)
            return before, after, nxt

    before, after, nxt = run(go())
    stopped = metric(after, "baichuan_stopped_requests_total", reason="cancelled")
    assert stopped - metric(before, "baichuan_stopped_requests_total", reason="cancelled") >= 1
    assert metric(after, "baichuan_running_requests") == 0 and metric(after, "baichuan_queue_depth") == 0
    assert nxt.status_code == 200 and nxt.json()["text"]


def test_metrics_are_prometheus_text(server):
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in ("baichuan_requests_total", "baichuan_queue_depth", "baichuan_batch_size_bucket",
                 "baichuan_request_latency_seconds_bucket", "baichuan_audio_generated_seconds_total",
                 "baichuan_first_audio_chunk_seconds_bucket", "baichuan_compiled_programs"):
        assert name in r.text
    assert metric(r.text, "baichuan_audio_generated_seconds_total") > 0
