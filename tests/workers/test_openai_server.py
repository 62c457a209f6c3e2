"""The `openai` backend against a real OpenAI-compatible server, and how it fails.

The real server is `transformers serve` (the `transformers` CLI, with `fastapi`, `openai` and `uvicorn` from
requirements-dev.txt) serving a tiny random Llama saved into a temporary directory by the test (the
`tiny_model_dir` fixture plus a chat template): offline, on 127.0.0.1, started once per module and killed by
the fixture's finaliser. Timeouts, retries and cancellation use small scripted servers (a socket that never
answers, HTTP stubs answering 503 / 429 before proxying to the real server, a slow SSE stream that notices
when the client hangs up), because a real server cannot be made to misbehave on cue.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotate import generation, selectors, services
from annotate.models import Conversation, Turn
from tests.processes import ChildProcess, free_port, wait_until
from tests.workers.stubs import Recorder
from workers.backends import GenerationError, GenerationRequest, OpenAIBackend

# The tiny model's tokenizer has no chat template, and chat completions need one.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
GREEDY = {"temperature": 0, "top_p": 1.0}


def ask(text: str = "Hello, who are you?", **params: Any) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], params={**GREEDY, **params}, seed=7)


# --- the real server ------------------------------------------------------------------------


@dataclass
class RealServer:
    base_url: str  # what a model config's base URL is: .../v1
    model: str  # the served directory: the server refuses any other model name
    process: ChildProcess

    def complete(self, request: GenerationRequest) -> str:
        """The same request answered in one piece (not streamed)."""
        body = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.params["max_new_tokens"],
            "seed": request.seed,
            "stream": False,
            **GREEDY,
        }
        posted = urllib.request.Request(
            f"{self.base_url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(posted, timeout=30) as answer:
            return str(json.load(answer)["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def real_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    model = tmp_path_factory.mktemp("served") / "tiny-chat"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    port = free_port()
    argv = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",  # a local directory; nothing outside this machine is reached
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    child = ChildProcess("transformers-serve", argv, env, tmp_path_factory.mktemp("serve-log"))
    try:
        child.wait_for("Application startup complete", timeout=120)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/health", timeout=10) as health:
            assert json.load(health) == {"status": "ok"}
        yield RealServer(base_url=f"{base}/v1", model=str(model), process=child)
    finally:
        child.stop(timeout=10)


def test_a_reply_streams_from_the_real_server_in_pieces_and_equals_its_whole_answer(real_server):
    request = ask(max_new_tokens=24)
    on_text = Recorder()
    started = time.monotonic()
    result = OpenAIBackend(real_server.base_url, real_server.model).generate(request, on_text)
    print(f"\nreal server: {len(on_text.texts)} pieces in {time.monotonic() - started:.2f} s: {result.text!r}")

    assert len(on_text.texts) >= 3  # streamed, not one block at the end
    for before, after in zip(on_text.texts, on_text.texts[1:], strict=False):
        assert after.startswith(before) and len(after) > len(before)
    assert result.text and result.text == real_server.complete(request).strip()  # greedy: the same text
    assert result.completion_tokens == 24 and result.prompt_tokens
    assert not result.stopped_early


def test_stopping_a_real_server_reply_hangs_up_at_once_and_the_server_goes_on_serving(real_server):
    backend = OpenAIBackend(real_server.base_url, real_server.model)
    started = time.monotonic()
    stopped = backend.generate(ask(max_new_tokens=4000), Recorder(stop_after=3))
    took = time.monotonic() - started

    assert stopped.stopped_early and len(stopped.text) >= 1
    assert took < 5, took  # 4,000 tokens were asked for; three were read
    assert backend.generate(ask(max_new_tokens=8), Recorder()).text  # the server was left in a good state


def test_the_app_samples_both_candidates_from_the_real_server(
    real_server, start_worker, make_config, make_study, make_user
):
    # Given a study whose only model is the real server, and a model-server worker (threads, as `serve` runs it)
    config = make_config(
        backend="openai", base_url=real_server.base_url, model_path=real_server.model, params=ask().params
    )
    study = make_study(configs=[config], candidates_per_turn=2)
    conversation = services.conversation_start(study=study, rater=make_user())
    start_worker(concurrency=4, pool="threads", queues=("generation_io",))
    # When the rater sends a message
    started = time.monotonic()
    user_turn = services.message_send(conversation=conversation, text="Hello there")
    replies = Turn.objects.filter(parent=user_turn).order_by("position")
    finished = (Turn.Status.DONE, Turn.Status.FAILED)
    wait_until(lambda: all(t.status in finished for t in replies.all()), timeout=60, what="both replies finished")
    print(f"\nround trip through the worker and the real server: {time.monotonic() - started:.2f} s")
    # Then both candidates are DONE with the text the server gives for that conversation
    first, second = replies.all()
    assert (first.status, second.status) == (Turn.Status.DONE, Turn.Status.DONE), (first.error, second.error)
    request = GenerationRequest(
        messages=selectors.messages_before(first), system_prompt=first.system_prompt, params=first.params, seed=7
    )
    expected = real_server.complete(request).strip()
    assert first.text == second.text == expected and expected
    assert first.first_token_at and first.completion_tokens


# --- timeouts -----------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections and never answers; returns (base URL, the connections it accepted)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", accepted
    listener.close()
    for held in accepted:
        held.close()


def test_a_server_that_never_answers_fails_after_the_read_timeout_without_retrying(silent_server):
    base_url, accepted = silent_server
    backend = OpenAIBackend(base_url, "m", connect_timeout=1, read_timeout=1, retries=3, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(GenerationError, match="sent nothing for 1 s before the reply started") as failure:
        backend.generate(ask(), Recorder())
    took = time.monotonic() - started

    assert 0.9 < took < 3, took
    assert "MODEL_SERVER_READ_TIMEOUT" in str(failure.value)
    assert len(accepted) == 1  # a busy server is not asked again and again


# --- scripted servers: errors, retries, cancellation -------------------------------------------


def sse(piece: str, finish: str | None = None) -> bytes:
    event = {"choices": [{"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": finish}]}
    return f"data: {json.dumps(event)}\n\n".encode()


class ScriptedServer:
    """An HTTP server whose n-th request is answered by `script(handler, n)`. It records when each request
    came, and whether a client hung up while it was writing (`hung_up`, after `sent` chunks)."""

    def __init__(self, script: Callable[[BaseHTTPRequestHandler, int], None]) -> None:
        self.times: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self.hung_up = threading.Event()
        self.sent = 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                scripted.times.append(time.monotonic())
                scripted.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                try:
                    script(self, len(scripted.times) - 1)
                except (BrokenPipeError, ConnectionResetError):
                    scripted.hung_up.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def gaps(self) -> list[float]:
        return [after - before for before, after in zip(self.times, self.times[1:], strict=False)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Callable[[BaseHTTPRequestHandler, int], None]) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(handler: BaseHTTPRequestHandler, status: int, **headers: str) -> None:
    payload = json.dumps({"error": {"message": f"scripted {status}"}}).encode()
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", "Content-Length": str(len(payload)), **headers}.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(payload)


def stream_start(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()


def slow_stream(server: Callable[[], ScriptedServer], chunks: int = 200, every: float = 0.02) -> Callable[..., None]:
    """A script streaming `chunks` words `every` seconds apart, counting what it sent."""

    def script(handler: BaseHTTPRequestHandler, n: int) -> None:
        stream_start(handler)
        for i in range(chunks):
            handler.wfile.write(sse(f" w{i}"))
            handler.wfile.flush()
            server().sent += 1
            time.sleep(every)
        handler.wfile.write(sse("", finish="length") + b"data: [DONE]\n\n")

    return script


def test_busy_and_failing_answers_are_retried_with_backoff_and_retry_after_then_succeed(real_server, scripted):
    # Given a server answering 503, then 429 asking for 1 s, then passing the request on to the real server
    def script(handler: BaseHTTPRequestHandler, n: int) -> None:
        if n == 0:
            return answer(handler, 503)
        if n == 1:
            return answer(handler, 429, Retry_After="1")
        body = json.dumps(server.bodies[n]).encode()
        forwarded = urllib.request.Request(
            f"{real_server.base_url}/chat/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(forwarded, timeout=30) as upstream:
            stream_start(handler)
            for line in upstream:
                handler.wfile.write(line)
                handler.wfile.flush()

    server = scripted(script)
    request = ask(max_new_tokens=16)
    on_text = Recorder()
    # When the backend asks it, with a first wait of 0.2 s
    result = OpenAIBackend(server.base_url, real_server.model, retries=3, backoff=0.2).generate(request, on_text)
    # Then it got the real server's answer on the third try, having waited 0.1-0.2 s (backoff with jitter)
    # after the 503 and the 1 s the 429 asked for
    assert result.text == real_server.complete(request).strip() and len(on_text.texts) >= 3
    first, second = server.gaps()
    print(f"\nwaits between tries: {first:.3f} s, {second:.3f} s")
    assert 0.1 <= first < 0.2 + 0.25, first
    assert 1.0 <= second < 1.0 + 0.25, second


def test_an_unreachable_server_is_tried_again_then_given_up_with_a_message():
    with socket.socket() as reserved:  # bound, not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{reserved.getsockname()[1]}/v1"
        started = time.monotonic()
        with pytest.raises(GenerationError) as failure:
            OpenAIBackend(base_url, "m", retries=2, backoff=0.2).generate(ask(), Recorder())
        took = time.monotonic() - started
    message = str(failure.value)
    assert message.startswith(f"Model server unreachable at {base_url}: ") and "refused" in message.lower()
    assert "gave up after 3 tries" in message
    assert 0.1 + 0.2 <= took < 0.2 + 0.4 + 0.5, took  # waits of 0.1-0.2 s and 0.2-0.4 s


@pytest.mark.parametrize(
    ("status", "headers", "tries", "says"),
    [
        (400, {}, 1, "check the model config"),  # the request is wrong: asking again will not help
        (503, {"Retry_After": "120"}, 1, "asked to wait 120 s"),  # longer than MODEL_SERVER_MAX_WAIT_SECONDS
        (502, {}, 3, "gave up after 3 tries"),
    ],
)
def test_which_error_answers_are_tried_again(scripted, status, headers, tries, says):
    server = scripted(lambda handler, n: answer(handler, status, **headers))
    backend = OpenAIBackend(server.base_url, "m", retries=2, backoff=0.01, max_wait=30)
    with pytest.raises(GenerationError, match=says) as failure:
        backend.generate(ask(), Recorder())
    assert str(failure.value).startswith(f"Model server answered {status}: ")
    assert len(server.times) == tries


@pytest.mark.parametrize("how", ["dropped", "error event"])
def test_a_failure_after_text_reached_the_rater_is_not_retried(scripted, how):
    """A second try would stream the reply again from its start: the rater would see it twice."""

    def script(handler: BaseHTTPRequestHandler, n: int) -> None:
        stream_start(handler)
        handler.wfile.write(sse("Sure") + sse(", what"))
        if how == "error event":  # what vLLM and `transformers serve` send when generation fails
            handler.wfile.write(b'data: {"error": {"message": "overloaded", "code": 503}}\n\n')
        handler.wfile.flush()  # "dropped": the connection closes without a finish reason or [DONE]

    server = scripted(script)
    on_text = Recorder()
    with pytest.raises(GenerationError, match="was streamed; retry the reply"):
        OpenAIBackend(server.base_url, "m", retries=3, backoff=0.01).generate(ask(), on_text)
    assert on_text.texts == ["Sure", "Sure, what"]
    assert len(server.times) == 1


def test_the_same_failures_before_any_text_are_retried(scripted):
    def script(handler: BaseHTTPRequestHandler, n: int) -> None:
        stream_start(handler)
        if n == 0:
            handler.wfile.write(b'data: {"error": "CUDA out of memory"}\n\n')
        elif n == 1:
            handler.wfile.write(b": nothing yet\n\n")  # and the connection closes: cut off
        else:
            handler.wfile.write(sse("Hi") + sse("!", finish="stop"))

    server = scripted(script)
    result = OpenAIBackend(server.base_url, "m", retries=3, backoff=0.01).generate(ask(), Recorder())
    assert result.text == "Hi!" and len(server.times) == 3


def test_stopping_closes_the_connection_so_the_server_stops_sending(scripted):
    server = scripted(slow_stream(lambda: server))
    started = time.monotonic()
    result = OpenAIBackend(server.base_url, "m").generate(ask(), Recorder(stop_after=3))

    assert result.stopped_early and result.text == "w0 w1 w2"
    assert time.monotonic() - started < 1
    assert server.hung_up.wait(timeout=2)  # the server's next writes failed: the client hung up
    assert server.sent < 10  # of 200


# --- the rater leaves (annotate.generation) ----------------------------------------------------


@pytest.fixture
def one_reply(make_config, make_study, make_conversation) -> Callable[[str], Turn]:
    def make(base_url: str) -> Turn:
        config = make_config(backend="openai", base_url=base_url, model_path="m")
        conversation = make_conversation(study=make_study(configs=[config], candidates_per_turn=1))
        user_turn = services.message_send(conversation=conversation, text="hello")
        (reply,) = user_turn.children.all()
        return reply

    return make


def leave(conversation_id: int) -> None:
    Conversation.objects.filter(pk=conversation_id).update(status=Conversation.Status.ABANDONED)


@pytest.mark.django_db
def test_a_streaming_reply_stops_at_its_next_write_and_fails_when_the_rater_leaves(
    scripted, one_reply, monkeypatch, settings
):
    settings.STREAM_WRITE_SECONDS = settings.STREAM_SAVE_SECONDS = 0  # every piece is a write
    server = scripted(slow_stream(lambda: server))
    reply = one_reply(server.base_url)
    writer = generation._text_writer

    def leaving_after_two_writes(*args: Any, **kwargs: Any) -> Callable[[str], bool]:
        write = writer(*args, **kwargs)
        calls = 0

        def on_text(text: str) -> bool:
            nonlocal calls
            calls += 1
            if calls == 3:
                leave(reply.conversation_id)  # the rater ends the conversation while the reply streams
            return write(text)

        return on_text

    monkeypatch.setattr(generation, "_text_writer", leaving_after_two_writes)
    generation.turn_generate(turn_id=reply.pk)

    reply.refresh_from_db()
    assert (reply.status, reply.error) == (Turn.Status.FAILED, generation.RATER_LEFT)
    assert reply.text == " w0 w1" and reply.finished_at  # what was streamed before the rater left
    assert server.hung_up.wait(timeout=2) and server.sent < 10  # the model server was told to stop


@pytest.mark.django_db
def test_a_waiting_reply_of_a_conversation_the_rater_left_is_not_sampled(scripted, one_reply):
    server = scripted(lambda handler, n: answer(handler, 500))
    reply = one_reply(server.base_url)
    leave(reply.conversation_id)

    assert generation.turn_generate(turn_id=reply.pk) == "failed"
    reply.refresh_from_db()
    assert (reply.status, reply.error) == (Turn.Status.FAILED, generation.RATER_LEFT)
    assert server.times == []  # the model server was never asked


@pytest.mark.django_db
def test_a_streamed_write_is_still_one_query_with_the_conversation_condition(one_reply, settings):
    settings.STREAM_WRITE_SECONDS = settings.STREAM_SAVE_SECONDS = 0
    reply = one_reply("http://127.0.0.1:9/v1")
    attempt = generation.turn_claim(turn_id=reply.pk)
    assert attempt is not None
    mine = Turn.objects.filter(pk=reply.pk, attempt=attempt, status=Turn.Status.STREAMING)
    on_text = generation._text_writer(mine, reply.pk, attempt)

    with CaptureQueriesContext(connection) as queries:
        assert on_text("Hel")
    [update] = [q["sql"] for q in queries.captured_queries]
    assert update.startswith("UPDATE") and "active" in update

    leave(reply.conversation_id)
    assert not on_text("Hello")  # the backend stops ...
    reply.refresh_from_db()
    assert (reply.status, reply.error, reply.text) == (Turn.Status.FAILED, generation.RATER_LEFT, "Hel")  # ... failed
