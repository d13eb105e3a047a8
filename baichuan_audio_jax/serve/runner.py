"""The server in a background thread of the calling process (tests, benchmarks, scripts)."""
from __future__ import annotations

import threading
import time

import uvicorn


class ServerThread:
    """``with ServerThread(app) as s: s.url`` — uvicorn on 127.0.0.1 (a free port by default),
    started (warm-up included) when the block is entered and stopped when it is left."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 1800.0):
        self.app = app
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", ws="websockets-sansio", lifespan="on")
        self.server = uvicorn.Server(config)
        self.host, self.start_timeout = host, start_timeout
        self.thread = threading.Thread(target=self.server.run, name="serve-http", daemon=True)
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped while starting (see the log above)")
            if time.monotonic() - t0 > self.start_timeout:
                self.server.should_exit = True
                raise TimeoutError(f"the server did not start within {self.start_timeout:g} s")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
