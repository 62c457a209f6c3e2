"""Model operations (issue 14, item 3): the admin's test prompt, the health page, configs refused when saved,
and an unreachable model server failing a reply that the rater is told about and may retry.

The model server here is a stub of a third party: a real HTTP server in a thread answering
/v1/chat/completions with SSE chunks and /v1/models."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotate import generation, selectors, services
from annotate.models import Turn
from tests.helpers import staff_with
from tests.processes import free_port
from tests.workers.stubs import ThreadedServer
from workers import ops
from workers.models import ModelConfig


class StubServer(ThreadedServer):
    """An OpenAI-compatible server: streams `pieces`, then `usage` (None: none), or answers `status`."""

    def __init__(self) -> None:
        self.pieces = ["Woof", ", I am", " a stub", "."]
        self.usage: dict[str, int] | None = {"prompt_tokens": 9, "completion_tokens": 5}
        self.status = 200
        self.delay = 0.0  # seconds before each piece
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._json(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                if stub.status != 200:
                    self._json(stub.status, {"error": {"message": "model exploded"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                events = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in stub.pieces]
                events += [{"choices": [], "usage": stub.usage}] if stub.usage else []
                for event in events:
                    time.sleep(stub.delay)
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def _json(self, status: int, body: Any) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.serve(Handler)


@pytest.fixture
def stub_server() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def remote(make_config: Any, base_url: str, **fields: Any) -> ModelConfig:
    return make_config(backend=ModelConfig.Backend.OPENAI, base_url=base_url, model_path="stub-model", **fields)


def probe_url(config: ModelConfig) -> str:
    return reverse("admin:workers_modelconfig_test_prompt", args=[config.pk])


HEALTH = "/admin/workers/modelconfig/health/"

# --- the test prompt -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_test_prompt_shows_latency_tokens_per_second_and_output(admin_client, make_config, stub_server):
    config = remote(make_config, stub_server.base_url)
    page = admin_client.get(reverse("admin:workers_modelconfig_change", args=[config.pk])).content.decode()
    assert probe_url(config) in page  # the change page links to it

    response = admin_client.post(probe_url(config), {"prompt": "Who are you?"})

    assert response.status_code == 200
    result: ops.ProbeResult = response.context["result"]
    assert result.ok and result.output == "Woof, I am a stub."
    assert (result.tokens, result.tokens_source) == (5, "reported (the server's usage)")
    assert result.first_token_seconds is not None and 0 <= result.first_token_seconds <= result.total_seconds
    body = response.content.decode()
    assert "Woof, I am a stub." in body and "Tokens/s" in body and "First token after" in body


@pytest.mark.django_db
def test_test_prompt_without_usage_says_where_the_count_comes_from(make_config, stub_server):
    stub_server.usage = None
    result = ops.model_probe(remote(make_config, stub_server.base_url), "Hi")
    assert result.ok and result.tokens == 4  # the backend counted the streamed chunks
    assert "chunks" in result.tokens_source


@pytest.mark.django_db
def test_test_prompt_of_a_local_model_counts_its_tokens(tiny_config):
    result = ops.model_probe(tiny_config(max_new_tokens=6, min_new_tokens=6), "Hello")
    assert result.tokens == 6 and result.tokens_source.startswith("reported (counted by the model's tokenizer)")
    assert result.total_seconds > 0


@pytest.mark.django_db
def test_test_prompt_of_an_unreachable_server_shows_the_error(admin_client, make_config):
    config = remote(make_config, unreachable_url())
    response = admin_client.post(probe_url(config), {"prompt": "Anyone there?"})
    assert response.status_code == 200
    assert "Model server unreachable" in response.content.decode()
    assert not response.context["result"].ok


@pytest.mark.django_db
def test_test_prompt_of_an_erroring_model_shows_its_answer(admin_client, make_config, stub_server):
    stub_server.status = 500
    response = admin_client.post(probe_url(remote(make_config, stub_server.base_url)), {"prompt": "Hi"})
    body = response.content.decode()
    assert response.status_code == 200 and "answered 500" in body and "model exploded" in body


@pytest.mark.django_db
def test_test_prompt_stops_at_its_deadline(make_config, stub_server):
    stub_server.delay = 0.4  # 1.6 s for the whole reply
    result = ops.model_probe(remote(make_config, stub_server.base_url), "Hi", timeout=0.6)
    assert result.timed_out and not result.ok and "No complete reply within 1 s" in result.error
    assert result.total_seconds < 1.5 and result.output.startswith("Woof")


@pytest.mark.django_db
def test_empty_prompt_is_a_form_error(admin_client, make_config):
    response = admin_client.post(probe_url(remote(make_config, unreachable_url())), {"prompt": ""})
    assert response.status_code == 400 and response.context["result"] is None


# --- a config is refused when saved -----------------------------------------------------------------

ADD = "/admin/workers/modelconfig/add/"


def config_form(**fields: str) -> dict[str, str]:
    return {"name": "remote", "backend": "openai", "model_path": "m", "prompt_format": "auto", "params": "{}",
            "enabled": "on", **fields}  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("base_url", "fragment"),
    [
        ("ftp://models.example.org/v1", "must be http:// or https://"),
        ("http://user:secret@models.example.org:8000/v1", "no credentials"),
        ("http://10.0.0.5:8000/v1?key=abc", "no query"),
        ("http://10.0.0.5:8000/v1#x", "no query"),
        ("http://localhost:8000", "API root, with its version"),
        ("http://localhost:8000/v1/chat/completions", "leave out &#x27;/chat/completions&#x27;"),
    ],
)
def test_bad_base_url_is_refused_when_saved(admin_client, base_url, fragment):
    response = admin_client.post(ADD, config_form(base_url=base_url))
    assert response.status_code == 200 and fragment in response.content.decode()
    assert not ModelConfig.objects.filter(name="remote").exists()


@pytest.mark.django_db
def test_api_key_variable_not_set_here_is_refused_when_saved(admin_client, monkeypatch):
    monkeypatch.delenv("CG_MODEL_KEY_OPS", raising=False)
    data = config_form(base_url="http://localhost:8000/v1", api_key_env="CG_MODEL_KEY_OPS")
    response = admin_client.post(ADD, data)
    assert response.status_code == 200
    assert "CG_MODEL_KEY_OPS is not set in the web server" in response.content.decode()
    assert not ModelConfig.objects.filter(name="remote").exists()

    monkeypatch.setenv("CG_MODEL_KEY_OPS", "sk-test")
    assert admin_client.post(ADD, data).status_code == 302
    assert ModelConfig.objects.get(name="remote").api_key_env == "CG_MODEL_KEY_OPS"


@pytest.mark.parametrize("url", ["http://host:8000/v1", "https://api.example.org/api/v1/", "http://h/v1beta/openai"])
def test_api_roots_are_accepted(url):
    from workers.models import base_url_refusal

    assert base_url_refusal(url) is None


# --- the health page -------------------------------------------------------------------------------


def _reply(conversation: Any, config: ModelConfig, status: str, *, ago: float = 60, error: str = "") -> Turn:
    finished = timezone.now() - timedelta(seconds=ago)
    return Turn.objects.create(
        conversation=conversation, role=Turn.Role.ASSISTANT, depth=1, model_config=config, status=status,
        error=error, started_at=finished - timedelta(seconds=2), first_token_at=finished - timedelta(seconds=1.5),
        finished_at=finished,
    )  # fmt: skip


@pytest.mark.django_db
def test_health_page_shows_each_configs_error_rate_from_its_replies(admin_client, make_config, make_conversation):
    flaky, quiet = remote(make_config, unreachable_url()), make_config()
    conversation = make_conversation()
    for _ in range(3):
        _reply(conversation, flaky, Turn.Status.DONE)
    _reply(conversation, flaky, Turn.Status.FAILED, error="Model server unreachable at the-host")
    _reply(conversation, flaky, Turn.Status.FAILED, ago=7200, error="old news")  # outside the hour
    Turn.objects.create(conversation=conversation, role=Turn.Role.ASSISTANT, depth=1, model_config=flaky,
                        status=Turn.Status.PENDING)  # fmt: skip

    page = admin_client.get(reverse("admin:workers_modelconfig_changelist")).content.decode()
    assert HEALTH in page  # the changelist links to it
    response = admin_client.get(HEALTH)

    assert response.status_code == 200
    by_name = {c.name: c for c in response.context["health"].configs}
    row = by_name[flaky.name]
    assert (row.finished, row.failed, row.error_rate) == (4, 1, 0.25)
    assert row.median_first_token_seconds == pytest.approx(0.5) and row.waiting == 1
    assert row.last_error == "Model server unreachable at the-host"
    assert row.ready is False and "unreachable" in row.readiness
    assert by_name[quiet.name].error_rate is None
    body = response.content.decode()
    assert "25%" in body and "Model server unreachable at the-host" in body


@pytest.mark.django_db
def test_health_reports_a_reachable_server(make_config, stub_server):
    config = remote(make_config, stub_server.base_url)
    (row,) = [c for c in ops.model_health().configs if c.pk == config.pk]
    assert row.ready is True and row.readiness.startswith("reachable (HTTP 200")


def test_health_shows_queue_depth_and_workers_with_and_without_a_worker(start_worker, make_user, broker_url):
    from django.core.cache import cache

    from workers.celery_app import app

    admin = Client()
    admin.force_login(make_user(is_staff=True, is_superuser=True))
    # Given two messages waiting on the exports queue and no worker
    for _ in range(2):
        app.send_task("exports.tasks.export_dataset_task", args=[0], queue="exports")

    health = admin.get(HEALTH).context["health"]
    assert health.broker == "redis" and health.worker_count == 0
    queues = {q.name: q for q in health.queues}
    assert (queues["exports"].messages, queues["generation"].messages, queues["exports"].consumers) == (2, 0, 0)

    # When a worker for the model-server queue starts (and the cached look expires)
    start_worker(queues=("generation_io",))
    cache.clear()
    response = admin.get(HEALTH)

    health = response.context["health"]
    assert health.worker_count == 1
    queues = {q.name: q for q in health.queues}
    assert (queues["generation_io"].consumers, queues["exports"].consumers, queues["exports"].messages) == (1, 0, 2)
    assert 'id="worker-count">1<' in response.content.decode()


def test_queue_depth_of_the_embedded_filesystem_broker(tmp_path):
    for name in ("1_a.generation.msg", "2_b.generation.msg", "3_c.exports.msg", "junk"):
        (tmp_path / name).write_text("{}")
    app = SimpleNamespace(conf=SimpleNamespace(broker_transport_options={"data_folder_in": str(tmp_path)}))
    notes: list[str] = []
    depths = ops._queue_depths(app, "filesystem://", ("generation", "exports", "suggestions"), notes)
    assert depths == {"generation": 2, "exports": 1, "suggestions": 0} and notes == []
    assert ops._queue_depths(app, "amqp://host//", ("generation",), notes) == {}
    assert "not known for this broker" in notes[0]


# --- permissions ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_need_the_model_permission(make_user, make_config):
    config = remote(make_config, unreachable_url())
    for perms, health, test_prompt in [
        ((), 403, 403),
        (("workers.view_modelconfig",), 200, 403),
        (("workers.view_modelconfig", "workers.change_modelconfig"), 200, 200),
    ]:
        client = Client()
        client.force_login(staff_with(make_user, *perms))
        assert client.get(HEALTH).status_code == health, perms
        assert client.get(probe_url(config)).status_code == test_prompt, perms
        assert client.post(probe_url(config), {"prompt": "Hi"}).status_code == test_prompt, perms


# --- the rater's side: an unreachable server fails the reply, the rater is told and may retry ---------------


@pytest.mark.django_db
def test_unreachable_server_fails_the_reply_the_rater_is_told_and_retry_works(
    make_config, make_study, make_conversation, stub_server, django_capture_on_commit_callbacks
):
    config = remote(make_config, unreachable_url())
    conversation = make_conversation(study=make_study(configs=[config], candidates_per_turn=1))
    user_turn = services.message_send(conversation=conversation, text="hello")
    (reply,) = selectors.candidates_of(user_turn)

    # When the worker samples it from a server nothing listens on
    assert generation.turn_generate(turn_id=reply.pk) == "failed"

    # Then the reply is failed with the detail for staff, and the rater sees the generic message and a retry
    reply.refresh_from_db()
    assert reply.status == Turn.Status.FAILED and "Model server unreachable" in reply.error
    rater = Client()
    rater.force_login(conversation.rater)
    page = rater.get(reverse("annotate:conversation", args=[conversation.pk])).content.decode()
    assert Turn.RATER_ERROR in page and "Retry reply A" in page
    assert "Model server unreachable" not in page and "127.0.0.1" not in page

    # When the server is back and the rater retries
    ModelConfig.objects.filter(pk=config.pk).update(base_url=stub_server.base_url)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = rater.post(reverse("annotate:turn_retry", args=[conversation.pk, reply.pk]))
    assert response.status_code < 400 and len(callbacks) == 1
    assert generation.turn_generate(turn_id=reply.pk) == "done"
    reply.refresh_from_db()
    assert (reply.status, reply.text, reply.error) == (Turn.Status.DONE, "Woof, I am a stub.", "")
