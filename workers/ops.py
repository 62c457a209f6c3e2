"""Model operations for staff: send one test prompt through a config, and the health of every config,
queue and worker. Admin's *Test prompt* and *Model health* pages render what these return.

Both run in the web process and must never hang a page: the probe stops at its deadline, every network
look (model servers, the broker, the workers' ping) has a short timeout, and the live part of the health
page is cached for HEALTH_CACHE_SECONDS.

The recent error rate comes from the replies themselves (annotate's Turn rows), read through
ModelConfig's reverse relation `turns`: this layer may not import annotate, and the relation is the one
way a config knows its replies.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Q
from django.utils import timezone

from workers.apikeys import api_key_env_refusal
from workers.backends import (
    BUNDLED_MODELS,
    GenerationError,
    GenerationRequest,
    backend_for,
    generation_queue,
    model_prepared,
)
from workers.models import ModelConfig

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 60.0
HEALTH_WINDOW = timedelta(hours=1)
HEALTH_CACHE_SECONDS = 5
NETWORK_TIMEOUT_SECONDS = 1.5  # a model server's /models, the broker
PING_TIMEOUT_SECONDS = 1.0  # how long the workers' replies to the broadcast are collected
# kombu's Redis transport keeps a queue's priority levels 3, 6 and 9 in keys of their own.
_REDIS_PRIORITY_SEP, _REDIS_PRIORITY_STEPS = "\x06\x16", (3, 6, 9)

# --- the test prompt ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """One test prompt's outcome. `tokens_source` says where `tokens` came from: the backend's count
    ("reported") or characters ÷ 4 ("estimated")."""

    ok: bool
    output: str = ""
    error: str = ""
    first_token_seconds: float | None = None
    total_seconds: float = 0.0
    tokens: int | None = None
    tokens_source: str = ""
    tokens_per_second: float | None = None
    timed_out: bool = False


def model_probe(config: ModelConfig, prompt: str, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> ProbeResult:
    """Send `prompt` as a one-message conversation through the config's backend, here, and measure it.

    Runs in a thread joined with `timeout`, so the page answers by then whatever the backend does; streaming
    stops at the deadline (the thread of a server that sends nothing ends at its own socket timeout). A
    transformers config is sampled in this (web) process, which loads the model once; weights that still need
    converting are refused rather than converted on a request (minutes: `manage.py prepare_models`)."""
    if config.backend == ModelConfig.Backend.TRANSFORMERS and not model_prepared(config.model_path, config.gguf_file):
        return ProbeResult(
            ok=False,
            error="The model's weights are not converted yet: run `manage.py prepare_models` (or wait for the first "
            "reply a worker samples) and try again.",
        )
    backend = backend_for(config)
    # A model server's backend: no socket wait past the deadline (a silent server ends the thread by then), and
    # no retries, which would hide the first failure behind their back-off: staff came to see that failure.
    for name, value in (("timeout", timeout), ("connect_timeout", timeout), ("read_timeout", timeout), ("retries", 0)):
        if hasattr(backend, name):
            setattr(backend, name, value)
    request = GenerationRequest(
        messages=[{"role": "user", "content": prompt}],
        system_prompt=config.system_prompt,
        params=config.effective_params(),
        seed=0,
    )
    started = time.monotonic()
    deadline = started + timeout
    seen: dict[str, Any] = {"first": None, "last": None, "text": "", "calls": 0}
    outcome: dict[str, Any] = {}

    def on_text(text: str) -> bool:
        now = time.monotonic()
        seen["first"] = seen["first"] or now
        seen["last"], seen["text"], seen["calls"] = now, text, seen["calls"] + 1
        return now < deadline

    def run() -> None:
        try:
            outcome["result"] = backend.generate(request, on_text)
        except GenerationError as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # a probe shows any failure on the page; it is what staff came to see
            log.warning("Test prompt to %s failed", config.name, exc_info=True)
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, name=f"probe-{config.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    total = time.monotonic() - started
    first = seen["first"] - started if seen["first"] else None
    if "error" in outcome:
        return ProbeResult(
            ok=False, error=outcome["error"], output=seen["text"], first_token_seconds=first, total_seconds=total
        )
    result = outcome.get("result")
    timed_out = thread.is_alive() or bool(result and result.stopped_early)
    text = result.text if result is not None and not result.stopped_early else seen["text"].strip()
    tokens, source = _probe_tokens(config, result, text, seen["calls"])
    span = (seen["last"] - seen["first"]) if seen["first"] and seen["last"] else 0.0
    return ProbeResult(
        ok=not timed_out and bool(text),
        output=text,
        error=f"No complete reply within {timeout:.0f} s." if timed_out else ("" if text else "The reply was empty."),
        first_token_seconds=first,
        total_seconds=total,
        tokens=tokens,
        tokens_source=source,
        tokens_per_second=tokens / span if tokens and span > 0 else None,
        timed_out=timed_out,
    )


def _probe_tokens(config: ModelConfig, result: Any, text: str, chunks: int) -> tuple[int | None, str]:
    """Completion tokens and where the number comes from. A transformers backend counts its own tokens; an
    OpenAI-compatible server reports `usage`, and without it the backend counts streamed chunks (about one
    token each on vLLM and llama.cpp); else characters ÷ 4, a rough figure for English text."""
    if not text:
        return None, ""
    if result is not None and not result.stopped_early and result.completion_tokens:
        if config.backend == ModelConfig.Backend.TRANSFORMERS:
            return result.completion_tokens, "reported (counted by the model's tokenizer)"
        if result.completion_tokens != chunks:
            return result.completion_tokens, "reported (the server's usage)"
        return result.completion_tokens, "reported (the server's usage, or streamed chunks if it sends none)"
    return max(1, round(len(text) / 4)), "estimated (characters ÷ 4)"


# --- health ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigHealth:
    """One config over the last HEALTH_WINDOW: replies finished, how many failed, the median wait for the
    first token, the latest failure (it may name the server: staff only), and whether it can answer now."""

    pk: int
    name: str
    enabled: bool
    backend: str
    queue: str
    ready: bool | None  # None: not known from the web process
    readiness: str
    finished: int
    failed: int
    waiting: int
    median_first_token_seconds: float | None
    last_error: str
    last_error_at: datetime | None

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None


@dataclass(frozen=True)
class QueueHealth:
    """A Celery queue: messages waiting in the broker (None: this broker cannot say), the replies PENDING in
    the database for it (generation queues), and the workers that consume it (None: no answer)."""

    name: str
    messages: int | None
    pending_replies: int | None
    consumers: int | None


@dataclass(frozen=True)
class Health:
    configs: list[ConfigHealth]
    queues: list[QueueHealth]
    workers: list[str] | None  # names of the workers that answered; None: the broadcast failed
    broker: str  # the transport (redis, filesystem, amqp, …), never the URL: it may hold a password
    notes: list[str] = field(default_factory=list)
    checked_at: datetime = field(default_factory=timezone.now)

    @property
    def worker_count(self) -> int | None:
        return None if self.workers is None else len(self.workers)


def model_health(*, fresh: bool = False) -> Health:
    """Every config's recent figures (read each time: a few indexed queries) and the live part (servers,
    broker, workers), cached for HEALTH_CACHE_SECONDS so a reloaded page never waits on the network twice."""
    live = None if fresh else cache.get("workers:health:live")
    if live is None:
        live = _live_state()
        cache.set("workers:health:live", live, HEALTH_CACHE_SECONDS)
    readiness, messages, workers, consumers, broker, notes = live
    since = timezone.now() - HEALTH_WINDOW
    stats = _recent_stats(since)
    pending = _pending_replies()
    configs = []
    for config in ModelConfig.objects.order_by("name"):
        row = stats.get(config.pk, {})
        ready, said = readiness.get(config.pk, (None, "unknown"))
        configs.append(
            ConfigHealth(
                pk=config.pk,
                name=config.name,
                enabled=config.enabled,
                backend=config.backend,
                queue=generation_queue(config.backend),
                ready=ready,
                readiness=said,
                finished=row.get("finished", 0),
                failed=row.get("failed", 0),
                waiting=pending.get(config.pk, 0),
                median_first_token_seconds=row.get("median_first_token"),
                last_error=row.get("last_error", ""),
                last_error_at=row.get("last_error_at"),
            )
        )
    from workers.celery_app import QUEUES

    by_queue: dict[str, int] = {}
    for health in configs:
        by_queue[health.queue] = by_queue.get(health.queue, 0) + health.waiting
    queues = [
        QueueHealth(
            name=name,
            messages=messages.get(name),
            pending_replies=by_queue.get(name, 0) if name in ("generation", "generation_io") else None,
            consumers=None if consumers is None else consumers.get(name, 0),
        )
        for name in QUEUES
    ]
    return Health(configs=configs, queues=queues, workers=workers, broker=broker, notes=list(notes))


def _recent_stats(since: datetime) -> dict[int, dict[str, Any]]:
    """Per config pk: replies finished since `since`, failed ones, median first-token latency (claim to first
    token, done replies) and the latest error. Planted attention checks are not the model's."""
    mine = Q(turns__finished_at__gte=since, turns__is_attention_check=False, turns__role="assistant")
    stats: dict[int, dict[str, Any]] = {}
    counted = ModelConfig.objects.annotate(
        finished=Count("turns", filter=mine), failed=Count("turns", filter=mine & Q(turns__status="failed"))
    ).values_list("pk", "finished", "failed")
    for pk, finished, failed in counted:
        stats[pk] = {"finished": finished, "failed": failed}
    latencies: dict[int, list[float]] = {}
    timed = (
        # One filter() call: every condition on the same reply (an exclude() would drop whole configs).
        ModelConfig.objects.filter(
            mine, turns__status="done", turns__first_token_at__isnull=False, turns__started_at__isnull=False
        ).values_list("pk", "turns__started_at", "turns__first_token_at")
    )
    for pk, started_at, first_token_at in timed:
        if started_at is None or first_token_at is None:
            continue
        latencies.setdefault(pk, []).append((first_token_at - started_at).total_seconds())
    for pk, values in latencies.items():
        stats.setdefault(pk, {})["median_first_token"] = statistics.median(values)
    failures = (
        ModelConfig.objects.filter(mine, turns__status="failed")
        .order_by("pk", "-turns__finished_at")
        .values_list("pk", "turns__error", "turns__finished_at")
    )
    for pk, error, finished_at in failures:
        if "last_error" not in stats.setdefault(pk, {}):
            stats[pk].update(last_error=error, last_error_at=finished_at)
    return stats


def _pending_replies() -> dict[int, int]:
    """Replies waiting for a worker, per config (a partial index keeps this small)."""
    rows = ModelConfig.objects.filter(turns__status="pending").annotate(n=Count("turns")).values_list("pk", "n")
    return dict(rows)


# --- the live part: model servers, broker, workers -----------------------------------------------


def _live_state() -> tuple[Any, ...]:
    from workers.celery_app import QUEUES, app

    broker_url = str(app.conf.broker_url or "")
    broker = broker_url.split(":", 1)[0] or "unknown"
    notes: list[str] = []
    configs = list(ModelConfig.objects.all())
    with ThreadPoolExecutor(max_workers=8) as pool:
        readiness_future = {c.pk: pool.submit(_readiness, c) for c in configs}
        depth_future = pool.submit(_queue_depths, app, broker_url, QUEUES, notes)
        workers_future = pool.submit(_workers, app, notes)
        readiness = {pk: future.result() for pk, future in readiness_future.items()}
        messages = depth_future.result()
        workers, consumers = workers_future.result()
    return readiness, messages, workers, consumers, broker, tuple(notes)


def _readiness(config: ModelConfig) -> tuple[bool | None, str]:
    """Whether a reply of this config could start now, as far as the web process can tell: a local model's
    weights are ready to load (whether a worker holds it in memory only that worker knows); a model server
    answers GET /models with the config's key."""
    if config.backend == ModelConfig.Backend.TRANSFORMERS:
        try:
            prepared = model_prepared(config.model_path, config.gguf_file)
        except Exception as exc:  # a bundled package missing, an unreadable path
            return False, f"cannot find the model: {type(exc).__name__}: {exc}"
        if config.model_path not in BUNDLED_MODELS and not Path(config.model_path).expanduser().exists():
            return False, f"model path {config.model_path} does not exist on the web machine"
        if not prepared:
            return None, "weights not converted yet: the first reply converts them (1–2 min; manage.py prepare_models)"
        return True, "weights ready (loaded by each worker at start or on first use)"
    refusal = api_key_env_refusal(config.api_key_env)
    if refusal:
        return False, refusal
    if config.api_key_env and not os.environ.get(config.api_key_env):
        return False, f"API key variable {config.api_key_env} is not set in the web process"
    headers = {"Accept": "application/json"}
    if config.api_key_env:
        headers["Authorization"] = f"Bearer {os.environ[config.api_key_env]}"
    url = f"{config.base_url.rstrip('/')}/models"
    started = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=NETWORK_TIMEOUT_SECONDS) as r:
            r.read(65536)
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError, OSError) as exc:
        return False, f"unreachable at {config.base_url}: {getattr(exc, 'reason', exc)}"
    took = (time.monotonic() - started) * 1000
    if status in (401, 403):
        return False, f"the server refused the key (HTTP {status} on /models)"
    if status >= 500:
        return False, f"the server is failing (HTTP {status} on /models)"
    return True, f"reachable (HTTP {status} on /models in {took:.0f} ms)"


def _queue_depths(app: Any, broker_url: str, queues: tuple[str, ...], notes: list[str]) -> dict[str, int]:
    """Messages waiting per queue. Redis: the lengths of the queue's lists (every priority level); the embedded
    filesystem broker: its message files; any other broker: not known here (an empty dict)."""
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        try:
            client = redis.Redis.from_url(
                broker_url, socket_timeout=NETWORK_TIMEOUT_SECONDS, socket_connect_timeout=NETWORK_TIMEOUT_SECONDS
            )
            pipe = client.pipeline()
            for name in queues:
                pipe.llen(name)
                for step in _REDIS_PRIORITY_STEPS:
                    pipe.llen(f"{name}{_REDIS_PRIORITY_SEP}{step}")
            pipe.hlen("unacked")
            lengths = pipe.execute()
        except Exception as exc:  # the broker down is what this page is for
            notes.append(f"Broker unreachable: {type(exc).__name__}: {exc}")
            return {}
        per = 1 + len(_REDIS_PRIORITY_STEPS)
        depths = {name: sum(lengths[i * per : (i + 1) * per]) for i, name in enumerate(queues)}
        notes.append(f"{lengths[-1]} message(s) taken by workers and not yet acknowledged (all queues).")
        return depths
    if broker_url.startswith("filesystem"):
        folder = Path(app.conf.broker_transport_options.get("data_folder_in", ""))
        try:
            names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        except OSError as exc:
            notes.append(f"Broker folder unreadable: {exc}")
            return {}
        return {queue: sum(1 for n in names if n.partition(".")[2] == f"{queue}.msg") for queue in queues}
    notes.append("Queue depth is not known for this broker (only Redis and the embedded filesystem broker).")
    return {}


def _workers(app: Any, notes: list[str]) -> tuple[list[str] | None, dict[str, int] | None]:
    """The workers that answer a broadcast within PING_TIMEOUT_SECONDS, and how many consume each queue."""
    try:
        answers = app.control.inspect(timeout=PING_TIMEOUT_SECONDS).active_queues() or {}
    except Exception as exc:
        notes.append(f"Workers did not answer: {type(exc).__name__}: {exc}")
        return None, None
    consumers: dict[str, int] = {}
    for queues in answers.values():
        for queue in queues or []:
            consumers[queue["name"]] = consumers.get(queue["name"], 0) + 1
    return sorted(answers), consumers
