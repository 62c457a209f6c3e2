"""Model backends: stop handling, the plain prompt, local transformers models, OpenAI-compatible
servers, and a failed generation as the rater sees it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from annotate import services as annotate_services
from annotate.generation import turn_generate
from annotate.models import Turn
from tests.workers.stubs import Recorder, ThreadedServer
from workers import backends
from workers.backends import (
    PLAIN_STOPS,
    GenerationError,
    GenerationRequest,
    OpenAIBackend,
    TransformersBackend,
    cut_at_stop,
    plain_prompt,
)
from workers.models import ModelConfig

CONVERSATION = [
    {"role": "user", "content": "Hi! Can you suggest a name for my new puppy?"},
    {"role": "assistant", "content": "  Sure: what breed is it?  "},
    {"role": "user", "content": "A beagle.\n"},
]


def assert_growing(texts: list[str]) -> None:
    assert texts
    for before, after in zip(texts, texts[1:], strict=False):
        assert after.startswith(before) and len(after) > len(before), (before, after)


# --- cut_at_stop, plain_prompt ---------------------------------------------------------------


def test_cut_at_stop_cuts_before_the_first_stop_found():
    assert cut_at_stop("Rex is a fine name.\nUser: thanks", PLAIN_STOPS) == ("Rex is a fine name.", True)
    assert cut_at_stop("A\nuser: b\nUser: c", PLAIN_STOPS) == ("A", True)  # the earliest, whichever stop
    assert cut_at_stop("Done. END more", ["END"]) == ("Done. ", True)
    assert cut_at_stop("\nUser: hi", PLAIN_STOPS) == ("", True)


def test_cut_at_stop_holds_back_a_partial_stop_at_the_end():
    assert cut_at_stop("Rex is a fine name.\nUs", PLAIN_STOPS) == ("Rex is a fine name.", False)
    assert cut_at_stop("Rex is a fine name.\nUser", PLAIN_STOPS) == ("Rex is a fine name.", False)
    assert cut_at_stop("Rex is a fine name.\n", PLAIN_STOPS) == ("Rex is a fine name.", False)
    assert cut_at_stop("Rex is a fine name.\nUSE", PLAIN_STOPS) == ("Rex is a fine name.", False)
    # Text that only looks like a stop elsewhere, or no longer can become one, is shown whole.
    assert cut_at_stop("Ask the User: politely", PLAIN_STOPS) == ("Ask the User: politely", False)
    assert cut_at_stop("Line one\nUsually", PLAIN_STOPS) == ("Line one\nUsually", False)
    assert cut_at_stop("No stop here", PLAIN_STOPS) == ("No stop here", False)


def test_plain_prompt_has_the_documented_format():
    system = "  The following is a conversation between a user and a helpful assistant.\n"
    assert plain_prompt(system, CONVERSATION) == (
        "The following is a conversation between a user and a helpful assistant.\n"
        "\n"
        "User: Hi! Can you suggest a name for my new puppy?\n"
        "Assistant: Sure: what breed is it?\n"
        "User: A beagle.\n"
        "Assistant:"
    )
    assert plain_prompt("   ", CONVERSATION[:1]) == "User: Hi! Can you suggest a name for my new puppy?\nAssistant:"


# --- transformers: the tiny random model -----------------------------------------------------


def tiny_request(seed: int = 7, **params: Any) -> GenerationRequest:
    return GenerationRequest(messages=CONVERSATION, system_prompt="Be brief.", params=params, seed=seed)


@pytest.fixture
def tiny_backend(tiny_model_dir: Path) -> Iterator[TransformersBackend]:
    yield TransformersBackend(str(tiny_model_dir), prompt_format="plain")
    backends._LOADED.pop((str(tiny_model_dir), ""), None)


def test_tiny_model_same_seed_same_text(tiny_backend, tiny_model_dir):
    params = {"max_new_tokens": 40, "min_new_tokens": 40, "temperature": 0.8}
    first = tiny_backend.generate(tiny_request(seed=7, **params), Recorder())
    again = tiny_backend.generate(tiny_request(seed=7, **params), Recorder())
    other = tiny_backend.generate(tiny_request(seed=8, **params), Recorder())
    assert first.text and first.text == again.text
    assert other.text != first.text
    assert first.completion_tokens == again.completion_tokens == 40
    _, tokenizer = backends.load_transformers(str(tiny_model_dir))
    assert first.prompt_tokens == len(tokenizer(plain_prompt("Be brief.", CONVERSATION))["input_ids"]) > 100
    assert not first.stopped_early


def test_tiny_model_streams_growing_text(tiny_backend):
    on_text = Recorder()
    result = tiny_backend.generate(tiny_request(max_new_tokens=60, min_new_tokens=60), on_text)
    assert len(on_text.texts) > 10
    assert_growing(on_text.texts)
    assert on_text.texts[-1].strip() == result.text


def test_tiny_model_stops_when_on_text_says_so(tiny_backend):
    on_text = Recorder(stop_after=5)
    result = tiny_backend.generate(tiny_request(max_new_tokens=400, min_new_tokens=400), on_text)
    assert result.stopped_early
    assert len(on_text.texts) == 5  # not called again once it asked to stop
    assert 5 <= result.completion_tokens < 20  # of 400
    assert result.text == on_text.texts[-1].strip()


def _asks(*texts: str, **params: Any) -> list[GenerationRequest]:
    return [GenerationRequest(messages=[{"role": "user", "content": t}], params=params, seed=3) for t in texts]


def test_a_batch_gives_each_request_the_text_it_gets_alone_and_streams_each_to_its_own(tiny_backend):
    asks = _asks("Hi", "Plan a party for my son, please: ten kids", "What?", temperature=0, max_new_tokens=50)
    alone = [tiny_backend.generate(request, Recorder()) for request in asks]
    recorders = [Recorder() for _ in asks]
    batched = tiny_backend.generate_batch(asks, recorders)
    # Greedy: the same text batched (left-padded prompts of different lengths) as one at a time
    assert [r.text for r in batched] == [r.text for r in alone] and all(r.text for r in batched)
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in alone]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in alone]
    for recorder, result in zip(recorders, batched, strict=True):
        assert_growing(recorder.texts)
        assert recorder.texts[-1].strip() == result.text


def test_one_sequence_of_a_batch_stops_alone(tiny_backend):
    asks = _asks("one", "two", temperature=0, max_new_tokens=300, min_new_tokens=300)
    quitter, stayer = Recorder(stop_after=4), Recorder()
    first, second = tiny_backend.generate_batch(asks, [quitter, stayer])
    assert first.stopped_early and len(quitter.texts) == 4 and first.completion_tokens < 20
    assert not second.stopped_early and second.completion_tokens == 300


# --- transformers: the real Gemma 3 270M ----------------------------------------------------


@pytest.mark.gemma
def test_gemma_plain_prompt_answers_once_and_reproducibly():
    backend = TransformersBackend("gemma3-270m", prompt_format="plain")
    system = "The following is a conversation between a user and a helpful assistant."
    request = GenerationRequest(
        messages=CONVERSATION[:1],
        system_prompt=system,
        params={"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 48},
        seed=1,
    )
    try:
        on_text = Recorder()
        result = backend.generate(request, on_text)
        again = backend.generate(request, Recorder())
        _, tokenizer = backends.load_transformers("gemma3-270m")
        expected_prompt_tokens = len(tokenizer(plain_prompt(system, CONVERSATION[:1]))["input_ids"])
    finally:
        backends._LOADED.pop(("gemma3-270m", ""), None)  # ~1 GB: do not keep it for later tests

    assert result.text.strip()
    assert "User:" not in result.text and not result.text.lower().startswith("assistant:")
    assert all(stop not in text for text in on_text.texts for stop in PLAIN_STOPS)
    assert_growing(on_text.texts)
    assert result.prompt_tokens == expected_prompt_tokens
    assert 0 < result.completion_tokens <= 48
    assert not result.stopped_early
    assert (again.text, again.completion_tokens) == (result.text, result.completion_tokens)


# --- OpenAI-compatible servers --------------------------------------------------------------


class StubServer(ThreadedServer):
    """A local OpenAI-compatible /chat/completions endpoint that streams a canned answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.pieces = ["Sure", ", what", " breed", "?"]
        self.usage: dict[str, int] | None = {"prompt_tokens": 21, "completion_tokens": 4}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if stub.status != 200:
                    payload = json.dumps({"error": {"message": "model exploded"}}).encode()
                    self.send_response(stub.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
                events += [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in stub.pieces]
                if stub.usage:
                    events.append({"choices": [], "usage": stub.usage})
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b": keep-alive comment\n\ndata: [DONE]\n\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.serve(Handler)


@pytest.fixture
def stub_server() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


def openai_request(**params: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=CONVERSATION, system_prompt="Ask before answering.", params={"max_new_tokens": 32, **params}, seed=99
    )


def test_openai_backend_assembles_the_streamed_text(stub_server, monkeypatch):
    monkeypatch.setenv("CG_MODEL_KEY_STUB", "sk-test-123")
    on_text = Recorder()
    result = OpenAIBackend(stub_server.base_url + "/", "stub-model", api_key_env="CG_MODEL_KEY_STUB").generate(
        openai_request(temperature=0.5, stop=["###"]), on_text
    )

    assert result.text == "Sure, what breed?"
    assert on_text.texts == ["Sure", "Sure, what", "Sure, what breed", "Sure, what breed?"]
    assert (result.prompt_tokens, result.completion_tokens) == (21, 4)
    assert not result.stopped_early
    [sent] = stub_server.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == "Bearer sk-test-123"
    body = sent["body"]
    assert body["model"] == "stub-model"
    assert body["messages"] == [{"role": "system", "content": "Ask before answering."}, *CONVERSATION]
    assert (body["seed"], body["max_tokens"], body["temperature"], body["stop"]) == (99, 32, 0.5, ["###"])
    assert body["stream"] is True


@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "cg_model_key_x", "CG_MODEL_KEY_X; rm"])
def test_openai_backend_reads_no_variable_outside_the_api_key_prefix(stub_server, monkeypatch, name):
    monkeypatch.setenv("SECRET_KEY", "the-deployments-own-secret")
    with pytest.raises(GenerationError, match="CG_MODEL_KEY_"):
        OpenAIBackend(stub_server.base_url, "stub-model", api_key_env=name).generate(openai_request(), Recorder())
    assert stub_server.requests == []  # nothing was sent, let alone the secret


@pytest.mark.django_db
def test_model_config_accepts_only_api_key_variables_with_the_prefix(settings):
    config = ModelConfig(name="remote", backend=ModelConfig.Backend.OPENAI, base_url="http://127.0.0.1:9/v1")
    for name in ("SECRET_KEY", "DATABASE_URL", "OPENAI_API_KEY", "CG_MODEL_KEY_ X"):
        config.api_key_env = name
        with pytest.raises(ValidationError) as refused:
            config.full_clean()
        assert "api_key_env" in refused.value.message_dict
    for name in ("", "CG_MODEL_KEY_REMOTE"):
        config.api_key_env = name
        config.full_clean()
    settings.MODEL_API_KEY_ENV_PREFIX = "LAB_KEY_"
    config.api_key_env = "LAB_KEY_REMOTE"
    config.full_clean()


def test_openai_backend_without_usage_counts_chunks_and_may_stop_early(stub_server):
    stub_server.usage = None
    backend = OpenAIBackend(stub_server.base_url, "stub-model")
    result = backend.generate(GenerationRequest(messages=CONVERSATION[:1]), Recorder())
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("Sure, what breed?", None, 4)
    assert "messages" in stub_server.requests[0]["body"]
    assert stub_server.requests[0]["body"]["messages"][0] == CONVERSATION[0]  # no empty system prompt
    assert "Authorization" not in stub_server.requests[0]["headers"]

    stopped = backend.generate(GenerationRequest(messages=CONVERSATION[:1]), Recorder(stop_after=2))
    assert (stopped.text, stopped.stopped_early) == ("Sure, what", True)


def test_openai_backend_server_error_is_a_generation_error(stub_server, settings):
    settings.MODEL_SERVER_BACKOFF_SECONDS = 0.01  # a 500 is retried before it is given up: no need to wait here
    stub_server.status = 500
    with pytest.raises(GenerationError) as failure:
        OpenAIBackend(stub_server.base_url, "stub-model").generate(openai_request(), Recorder())
    message = str(failure.value)
    assert message.startswith("Model server answered 500: ")
    assert "model exploded" in message


def test_openai_backend_unreachable_server_is_a_generation_error():
    with socket.socket() as reserved:  # bound but not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{reserved.getsockname()[1]}/v1"
        with pytest.raises(GenerationError) as failure:
            OpenAIBackend(base_url, "stub-model", timeout=5).generate(openai_request(), Recorder())
    assert str(failure.value).startswith(f"Model server unreachable at {base_url}: ")
    assert "refused" in str(failure.value).lower()


# --- a failed generation, as the rater sees it ----------------------------------------------


@pytest.mark.django_db
def test_missing_model_fails_the_turn_readably_and_retry_puts_it_back(
    make_config, make_study, make_conversation, tiny_model_dir, monkeypatch, django_capture_on_commit_callbacks
):
    enqueued: list[list[int]] = []
    monkeypatch.setattr(annotate_services, "_enqueue", lambda ids, **_: enqueued.append(list(ids)))
    eight_tokens = {"max_new_tokens": 8, "min_new_tokens": 8}
    config = make_config(model_path="/nonexistent/model-dir", prompt_format="plain", params=eight_tokens)
    conversation = make_conversation(study=make_study(configs=[config], candidates_per_turn=1))
    with django_capture_on_commit_callbacks(execute=True):
        user_turn = annotate_services.message_send(conversation=conversation, text="Hello there")
    turn = Turn.objects.get(parent=user_turn)
    assert enqueued == [[turn.pk]]

    # When a worker samples it and the model cannot be loaded
    assert turn_generate(turn_id=turn.pk) == "failed"

    # Then the turn is failed with a message a person can act on
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED
    assert turn.error == "Model path /nonexistent/model-dir does not exist"
    assert (turn.attempt, turn.text, turn.finished_at is not None) == (1, "", True)
    assert turn_generate(turn_id=turn.pk) == "skipped"  # a failed turn is not taken again unasked

    # When the rater retries, it is pending again and queued once
    with django_capture_on_commit_callbacks(execute=True):
        retried = annotate_services.turn_retry(conversation=conversation, turn_id=turn.pk)
    assert (retried.status, retried.error) == (Turn.Status.PENDING, "")
    assert enqueued == [[turn.pk], [turn.pk]]

    # and once the researcher fixed the config, the retry succeeds
    config.model_path = str(tiny_model_dir)
    config.save()
    try:
        assert turn_generate(turn_id=turn.pk) == "done"
    finally:
        backends._LOADED.pop((str(tiny_model_dir), ""), None)
    turn.refresh_from_db()
    assert (turn.status, turn.attempt, turn.error, turn.completion_tokens) == (Turn.Status.DONE, 2, "", 8)
    assert turn.text
