"""Shared fixtures: factories, a tiny random model, and real worker / web server processes
(plain helpers are in tests/helpers.py and tests/processes.py).

Processes started here talk to the same test database as the test (through DATABASE_URL), so
tests that use them take `transactional_db`: what the test writes is committed and visible.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from annotate.models import Conversation, Scenario, Study
from tests.helpers import child_env
from tests.processes import ChildProcess, free_port
from workers.models import ModelConfig

# --- the database as migrations leave it ------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Each test starts with an empty cache: a rolled-back test leaves cached rows (labels) that are gone."""
    from django.core.cache import cache

    from labeling.selectors import labels_forget_all

    cache.clear()
    labels_forget_all()


@pytest.fixture(autouse=True)
def _default_taxonomy(request: pytest.FixtureRequest) -> None:
    """Put back the default taxonomy (a data migration creates it) after a transactional test
    flushed every table; pages only read it."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(marker and marker.kwargs.get("transaction"))
    if not (marker or transactional or "db" in request.fixturenames):
        return
    request.getfixturevalue("transactional_db" if transactional else "db")
    from labeling.services import default_taxonomy

    default_taxonomy()


# --- factories -----------------------------------------------------------------------------


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    def make(username: str | None = None, password: str = "pw-for-tests", **extra: Any) -> Any:
        return django_user_model.objects.create_user(username or f"u{uuid.uuid4().hex[:8]}", password=password, **extra)

    return make


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    def make(name: str | None = None, **fields: Any) -> ModelConfig:
        fields.setdefault("backend", ModelConfig.Backend.TRANSFORMERS)
        fields.setdefault("model_path", "/nonexistent-model")
        return ModelConfig.objects.create(name=name or f"cfg-{uuid.uuid4().hex[:8]}", **fields)

    return make


@pytest.fixture
def make_study(make_config: Callable[..., ModelConfig]) -> Callable[..., Study]:
    def make(configs: list[ModelConfig] | None = None, scenarios: int = 3, **fields: Any) -> Study:
        fields.setdefault("slug", f"s-{uuid.uuid4().hex[:8]}")
        fields.setdefault("name", "Test study")
        study = Study.objects.create(**fields)
        study.model_pool.set(configs if configs is not None else [make_config(), make_config()])
        for i in range(scenarios):
            Scenario.objects.create(
                study=study,
                external_id=f"sc-{i}",
                title=f"Scenario {i}",
                brief=f"Brief {i}",
                hidden_intent=f"Intent {i}",
            )
        return study

    return make


@pytest.fixture
def make_conversation(make_study: Callable[..., Study], make_user: Callable[..., Any]) -> Callable[..., Conversation]:
    def make(study: Study | None = None, rater: Any = None) -> Conversation:
        from annotate import services

        return services.conversation_start(study=study or make_study(), rater=rater or make_user())

    return make


# --- a tiny random model (fast enough for worker tests) -------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a character-level tokenizer, saved like any local model."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-model")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_config(tiny_model_dir: Path, make_config: Callable[..., ModelConfig]) -> Callable[..., ModelConfig]:
    def make(**params: Any) -> ModelConfig:
        return make_config(model_path=str(tiny_model_dir), prompt_format="plain", params=params)

    return make


# --- real processes ------------------------------------------------------------------------


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis broker database of its own, emptied before and after the test."""
    import redis

    url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not url.startswith("redis"):
        pytest.fail(f"Worker tests need a Redis broker; CELERY_BROKER_URL is {url!r}")
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def start_worker(
    transactional_db: None, broker_url: str, tmp_path: Path, settings: Any
) -> Iterator[Callable[..., ChildProcess]]:
    """Start real Celery workers on the test database; all are stopped after the test."""
    settings.CELERY_BROKER_URL = broker_url
    from kombu import pools

    from workers.celery_app import app, worker_argv

    # Publish through fresh connection pools bound to this broker URL.
    app.conf.broker_url = broker_url
    pools.connections.clear()
    pools.producers.clear()
    app._pool = None
    app.amqp._producer_pool = None
    started: list[ChildProcess] = []

    def start(
        concurrency: int = 1,
        preload: str = "",
        ready_timeout: float = 300,
        pool: str = "",
        queues: tuple[str, ...] | None = None,
        **env: str,
    ) -> ChildProcess:
        name = f"test{len(started)}-{uuid.uuid4().hex[:4]}@%h"
        chosen = {"queues": queues} if queues else {}
        argv = [*worker_argv(concurrency=concurrency, name=name, pool=pool, **chosen), "--without-mingle"]
        argv.append("--without-gossip")
        extra = {"CELERY_BROKER_URL": broker_url, "WORKER_PRELOAD_MODELS": preload, **env}
        child = ChildProcess("worker", argv, child_env(**extra), tmp_path)
        started.append(child)
        child.wait_for("ready.", timeout=ready_timeout)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.fixture
def start_server(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start the real ASGI server (uvicorn) on the test database; returns its base URL."""
    started: list[ChildProcess] = []

    def start(**env: str) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        child = ChildProcess("web", argv, child_env(**env), tmp_path)
        started.append(child)
        child.wait_for("Application startup complete", timeout=60)
        return f"http://127.0.0.1:{port}"

    yield start
    for child in started:
        child.stop()
