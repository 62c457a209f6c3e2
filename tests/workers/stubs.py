"""What the backend tests share: an `on_text` that records, and a local HTTP server run in a thread (the stand-in
for a third-party model server where a real one is not the point of the test)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder:
    """An on_text callback that keeps every text it was given (and may ask to stop)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.texts: list[str] = []
        self.stop_after = stop_after

    def __call__(self, text: str) -> bool:
        self.texts.append(text)
        return self.stop_after is None or len(self.texts) < self.stop_after


class ThreadedServer:
    """Serves `handler` on a free 127.0.0.1 port from a thread; `base_url` is its OpenAI-style API root."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
