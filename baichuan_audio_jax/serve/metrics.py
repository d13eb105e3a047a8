"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own per server."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("baichuan_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("baichuan_request_latency_seconds", "Time from request to its last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_audio = Histogram("baichuan_first_audio_chunk_seconds", "Time from request to its first audio "
                                     "chunk", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("baichuan_queue_wait_seconds", "Time a request waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("baichuan_batch_size", "Requests decoded together per batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("baichuan_queue_depth", "Requests waiting for a batch", registry=r)
        self.running = Gauge("baichuan_running_requests", "Requests being decoded", registry=r)
        self.audio_seconds = Counter("baichuan_audio_generated_seconds", "Seconds of speech generated",
                                     registry=r)
        self.audio_in_seconds = Counter("baichuan_audio_received_seconds", "Seconds of speech received",
                                        registry=r)
        self.tokens = Counter("baichuan_generated_tokens", "New tokens (text tokens and audio frames)",
                              ["mode"], registry=r)
        self.stopped = Counter("baichuan_stopped_requests", "Requests stopped before their end, by reason",
                               ["reason"], registry=r)
        self.compiled = Gauge("baichuan_compiled_programs", "Decoding programs compiled (engine shapes)",
                              registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
