"""The gateway app served over real HTTP (uvicorn in a thread, free port) for stock clients
such as tritonclient, which speak HTTP/1.1 on a socket rather than through ASGI."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.e2e.harness import free_port


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ws="none",
            lifespan="on",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 30) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError("live server exited during start")
            try:
                if httpx.get(f"http://{self.url}/v2/health/live", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise TimeoutError("live server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
