#!/usr/bin/env python
"""fake_openai: an OpenAI-compatible model server that streams at a fixed rate, for load benches.

``bench/load.py`` points a study's ``openai`` ModelConfig at it so that what is measured is the app
(web tier, queue, workers, database), not a model: every reply is ``--words`` words, one every
``--interval`` seconds (30 x 50 ms = 1.5 s by default), whatever the prompt. It does no work per
token but sleep, so hundreds of concurrent streams cost it almost nothing (one thread each).

It speaks exactly what ``workers.backends.OpenAIBackend`` sends and parses:

- ``POST /v1/chat/completions`` with ``"stream": true``: ``data: {chunk}`` lines whose
  ``choices[0].delta.content`` is the next word (the first chunk carries only the role, as
  OpenAI's does), a last chunk with ``finish_reason`` and ``usage``, then ``data: [DONE]``.
  ``max_tokens`` caps the words. Without ``stream`` it answers one ``chat.completion``.
- ``GET /v1/models``: the one model, named by ``--model`` (any requested name is accepted).

Standard library only (no Django), so it starts in well under a second:

    .venv/bin/python bench/fake_openai.py --port 8081 --words 30 --interval 0.05
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_TEXT = (
    "sure here is a short answer about that could you tell me a little more so I can help better "
    "the weather looks fine for a walk but bring a coat in case it rains later this afternoon"
)
WORDS = _TEXT.split()


class Server(ThreadingHTTPServer):
    """One thread per connection; a deep listen backlog so a burst of hundreds of workers connecting at
    once is queued by the kernel instead of refused (the default backlog is 5)."""

    daemon_threads = True
    request_queue_size = 1024
    words = 30
    interval = 0.05
    model = "fake"


class Handler(BaseHTTPRequestHandler):
    server: Server
    # HTTP/1.0: a streamed reply ends when the connection closes, so no chunked encoding is needed and
    # urllib (the app's client) reads it line by line as it arrives.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: one line per request would cost more than the streaming itself at hundreds of streams."""

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(
                200, {"object": "list", "data": [{"id": self.server.model, "object": "model", "owned_by": "bench"}]}
            )
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, OSError):
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        count = self.server.words
        if request.get("max_tokens"):
            count = max(min(count, int(request["max_tokens"])), 1)
        rng = random.Random(request.get("seed"))
        words = [rng.choice(WORDS) for _ in range(count)]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages") or [])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count, "total_tokens": prompt_tokens + count}
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = request.get("model") or self.server.model
        if not request.get("stream"):
            time.sleep(self.server.interval * count)
            message = {"role": "assistant", "content": " ".join(words)}
            self._json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            event = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())

        try:
            chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                time.sleep(self.server.interval)
                chunk({"content": word if i == 0 else f" {word}"})
            chunk({}, "stop", usage=usage)
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker stopped reading (a cancelled turn, a killed worker): nothing to clean up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="OpenAI-compatible streaming server with a fixed token rate (for bench/load.py)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0: any free port (printed)")
    parser.add_argument("--words", type=int, default=30, help="words per reply (capped by max_tokens)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between words")
    parser.add_argument("--model", default="fake", help="the model name /v1/models lists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server((args.host, args.port), Handler)
    server.words, server.interval, server.model = args.words, args.interval, args.model
    host, port = server.server_address[:2]
    # bench/load.py waits for this line (and reads the port from it when --port 0).
    print(f"fake_openai listening on http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
