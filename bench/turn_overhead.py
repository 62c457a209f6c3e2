#!/usr/bin/env python
"""turn_overhead: what the app adds on top of the model, and how late tokens reach the browser.

For each repetition the script

1. sends a rater message through the real HTTP endpoint (``POST /c/<id>/messages/`` as a logged-in
   rater, the way htmx does) to the real ASGI server (uvicorn), which creates one pending assistant
   turn and enqueues it; a real Celery worker (concurrency 1, model preloaded) samples it, writing
   every token to the Turn row;
2. meanwhile reads the SSE stream ``/c/<id>/stream/`` and, for every ``turn`` event, records
   ``receive time - t`` (``t`` = the worker's ``heartbeat_at``, stamped right after a token was
   decoded, just before it is written to the row);
3. takes the app turn time as ``Turn.finished_at - request start`` (same clock: one machine);
4. then, in this process, times a raw ``model.generate`` (no streamer, no database) on the very
   prompt the worker built, with the turn's own seed and parameters, producing exactly the number
   of tokens the turn produced (``min_new_tokens = max_new_tokens = completion_tokens``), and checks
   that it sampled the same text.

It also reports, per repetition, the CPU seconds the worker (main + pool process) and the raw call
used (less sensitive than wall time to other loads on a small shared machine), the turn's own
timestamps (queue pickup + claim, claim -> first token), and, once at the end, the app's own work
per token timed in isolation (the streamer's decode + stop check, the row UPDATE of ``on_text``).
``--no-stream`` leaves the SSE stream unread (profiling: what streaming to a browser costs).

The app config asks for ``min_new_tokens = max_new_tokens = --tokens`` (48), so a turn never ends
on EOS. The bundled Gemma has no chat template, so the app uses the plain ``User:/Assistant:``
prompt whose stop strings (``\\nUser:``) may still end a turn early; the raw call is therefore
matched per repetition to the turn's own token count and seed (same tokens, same work).

Runs on a database and Redis db of its own (default ``cg_bench`` and ``redis://.../3``, created and
migrated / flushed here); it refuses the shared ``commonground`` database and Redis dbs 0-2.
``DATABASE_URL`` and ``CELERY_BROKER_URL`` are deliberately ignored: use ``--database-url`` /
``BENCH_DATABASE_URL`` and ``--broker-url`` / ``BENCH_BROKER_URL``.

    .venv/bin/python bench/turn_overhead.py              # 5 repetitions + 1 warm-up (~2 min on 2 CPU cores)
    .venv/bin/python bench/turn_overhead.py --quick      # 2 repetitions (~1 min)
    .venv/bin/python bench/turn_overhead.py --reps 15    # tighter medians on a busy machine (~4 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, Child, ensure_database, flush_broker, free_port, percentile, refuse_shared, stack_stop  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cg_bench"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/3"
CONFIG_NAME = "bench-gemma"
RATER = ("bench-rater", "bench-rater-password")
SYSTEM_PROMPT = "The following is a conversation between a user and a helpful assistant."
MESSAGE = "I need help planning a weekend trip for my family. Any ideas?"
RATIO_TARGET = 1.10
DELAY_TARGET_MS = 250.0


# --- command line and safety ---------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure the Common Ground turn overhead (app turn time / raw model.generate time) and the "
            "SSE streaming delay, on a database and Redis db of its own."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database for the bench (created and migrated if missing); env BENCH_DATABASE_URL",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL),
        help="Redis broker db for the bench (flushed before and after); env BENCH_BROKER_URL",
    )
    parser.add_argument("--reps", type=int, default=5, help="measured repetitions (after one warm-up)")
    parser.add_argument("--quick", action="store_true", help="2 repetitions instead of --reps")
    parser.add_argument("--tokens", type=int, default=48, help="min_new_tokens = max_new_tokens of the app config")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--message", default=MESSAGE, help="the rater message sent each repetition")
    parser.add_argument(
        "--stream-poll-seconds",
        type=float,
        default=None,
        help="STREAM_POLL_SECONDS for the web server; None keeps the app setting (0.05 unless set in the env)",
    )
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="profiling: do not read the SSE stream (the web server stays idle); wait for DONE by polling the DB",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker/server logs (path printed)")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when a target is missed (ratio <= {RATIO_TARGET}, delay median "
        f"<= {DELAY_TARGET_MS:.0f} ms); without it the exit status is 0 whenever the run completed",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = 2
    if args.reps < 1 or args.tokens < 1:
        parser.error("--reps and --tokens must be positive")
    return args


# --- child processes -----------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def process_tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by a process and its direct children (Linux /proc)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(entry.name) == root or int(fields[1]) == root:  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return total


# --- measurements --------------------------------------------------------------------------


@dataclass
class AppTurn:
    turn_id: int
    seed: int
    tokens: int
    prompt_tokens: int
    text: str
    total_s: float  # request start -> finished_at
    request_s: float  # request start -> response received (htmx fragment)
    to_created_s: float  # request start -> Turn.created_at
    pickup_s: float  # created_at -> started_at (commit, enqueue, broker, worker claim)
    first_token_s: float  # started_at -> first_token_at (prompt, tokenize, prefill, first decode + write)
    rest_s: float  # first_token_at -> finished_at
    seen_done_s: float  # request start -> the SSE "done" event received
    worker_cpu_s: float  # CPU the worker (main + pool process) used from the request to the end of the stream
    web_cpu_s: float  # CPU the web server used over the same span
    delays_ms: list[float] = field(default_factory=list)  # SSE receive - t, per streaming event
    events: int = 0


@dataclass
class Rep:
    app: AppTurn
    raw_s: float
    raw_cpu_s: float
    same_text: bool

    @property
    def ratio(self) -> float:
        return self.app.total_s / self.raw_s

    @property
    def cpu_ratio(self) -> float:
        return self.app.worker_cpu_s / self.raw_cpu_s


def read_sse(response: Any) -> Any:
    """Yield (receive time, event, data) from a streaming requests response, as chunks arrive."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        received = time.time()
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            event, data = "message", ""
            for line in block.decode().splitlines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
            yield received, event, (json.loads(data) if data else None)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import requests

        from annotate.models import Scenario, Study
        from workers.models import ModelConfig

        self.args = args
        self.base_url = ""
        params = {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "max_new_tokens": args.tokens,
            "min_new_tokens": args.tokens,
            "repetition_penalty": 1.0,
        }
        self.config, _ = ModelConfig.objects.update_or_create(
            name=CONFIG_NAME,
            defaults={
                "description": "turn_overhead bench: bundled Gemma 3 270M, fixed length",
                "backend": ModelConfig.Backend.TRANSFORMERS,
                "model_path": "gemma3-270m",
                "gguf_file": "",
                "prompt_format": ModelConfig.PromptFormat.AUTO,
                "system_prompt": SYSTEM_PROMPT,
                "params": params,
                "enabled": True,
            },
        )
        self.study = Study.objects.create(
            name="turn_overhead bench",
            slug=f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}",
            candidates_per_turn=1,
            max_user_turns=10,
            overlap=1,
        )
        self.study.model_pool.set([self.config])
        for i in range(args.reps + 1):
            Scenario.objects.create(study=self.study, external_id=f"b{i}", title=f"Bench {i}", brief="Bench scenario")
        from django.contrib.auth import get_user_model

        self.rater, _ = get_user_model().objects.get_or_create(username=RATER[0])
        self.rater.set_password(RATER[1])
        self.rater.save()
        self.http = requests.Session()
        self.csrf = ""
        self.worker_pid = self.web_pid = 0

    def login(self) -> None:
        base_url = self.base_url
        self.http.get(f"{base_url}/accounts/login/", timeout=30).raise_for_status()
        response = self.http.post(
            f"{base_url}/accounts/login/",
            data={"username": RATER[0], "password": RATER[1], "csrfmiddlewaretoken": self.http.cookies["csrftoken"]},
            allow_redirects=False,
            timeout=30,
        )
        if response.status_code != 302:
            raise RuntimeError(f"login failed: HTTP {response.status_code}")
        self.csrf = self.http.cookies["csrftoken"]  # rotated at login

    def new_conversation(self) -> Any:
        from annotate import services
        from annotate.models import Conversation

        Conversation.objects.filter(study=self.study, rater=self.rater, status=Conversation.Status.ACTIVE).update(
            status=Conversation.Status.ABANDONED
        )
        return services.conversation_start(study=self.study, rater=self.rater)

    def read_stream(self, url: str) -> tuple[list[float], int, float]:
        """Consume /c/<id>/stream/ until "end": (receive - t per token event in ms, events, DONE seen at)."""
        from annotate.models import Turn

        delays: list[float] = []
        events = 0
        seen_done = float("nan")
        with self.http.get(f"{url}/stream/", stream=True, timeout=(10, 120)) as stream:
            stream.raise_for_status()
            for received, event, data in read_sse(stream):
                if event == "end":
                    break
                if event != "turn":
                    continue
                if data["status"] == Turn.Status.FAILED:
                    raise RuntimeError(f"turn {data['id']} failed: {data['error']}")
                if data["status"] == Turn.Status.DONE:
                    seen_done = received
                elif data["status"] == Turn.Status.STREAMING and data["text"] and data["t"] is not None:
                    events += 1
                    delays.append((received - data["t"]) * 1000)
        return delays, events, seen_done

    def app_turn(self) -> AppTurn:
        from annotate.models import Turn

        conversation = self.new_conversation()
        url = f"{self.base_url}/c/{conversation.pk}"
        worker_cpu, web_cpu = process_tree_cpu(self.worker_pid), process_tree_cpu(self.web_pid)
        started = time.time()
        response = self.http.post(
            f"{url}/messages/",
            data={"text": self.args.message, "client_key": str(uuid.uuid4())},
            headers={"X-CSRFToken": self.csrf, "HX-Request": "true"},
            allow_redirects=False,
            timeout=60,
        )
        responded = time.time()
        if response.status_code != 200:
            raise RuntimeError(f"message POST answered HTTP {response.status_code}: {response.text[:500]}")
        delays: list[float] = []
        events = 0
        if self.args.no_stream:  # profiling: no SSE client, so the web server stays idle
            pending = Turn.objects.filter(conversation=conversation, role=Turn.Role.ASSISTANT).exclude(
                status__in=[Turn.Status.DONE, Turn.Status.FAILED]
            )
            while pending.exists():
                time.sleep(0.1)
            seen_done = time.time()
        else:
            delays, events, seen_done = self.read_stream(url)
        worker_cpu = process_tree_cpu(self.worker_pid) - worker_cpu
        web_cpu = process_tree_cpu(self.web_pid) - web_cpu
        conversation.refresh_from_db()
        turn = Turn.objects.get(parent=conversation.head, role=Turn.Role.ASSISTANT)
        if turn.status != Turn.Status.DONE:
            raise RuntimeError(f"turn {turn.pk} ended {turn.status}: {turn.error}")

        def ts(value: Any) -> float:
            return float(value.timestamp())

        return AppTurn(
            turn_id=turn.pk,
            seed=int(turn.seed or 0),
            tokens=int(turn.completion_tokens or 0),
            prompt_tokens=int(turn.prompt_tokens or 0),
            text=turn.text,
            total_s=ts(turn.finished_at) - started,
            request_s=responded - started,
            to_created_s=ts(turn.created_at) - started,
            pickup_s=ts(turn.started_at) - ts(turn.created_at),
            first_token_s=ts(turn.first_token_at) - ts(turn.started_at),
            rest_s=ts(turn.finished_at) - ts(turn.first_token_at),
            seen_done_s=seen_done - started,
            worker_cpu_s=worker_cpu,
            web_cpu_s=web_cpu,
            delays_ms=delays,
            events=events,
        )


class RawModel:
    """model.generate in this process, exactly as TransformersBackend calls it minus streamer/stop flag."""

    def __init__(self) -> None:
        from transformers.utils import logging as hf_logging

        from workers.backends import load_transformers

        hf_logging.disable_progress_bar()
        self.model, self.tokenizer = load_transformers("gemma3-270m")
        self.last_ids: list[int] = []
        self.last_stops: list[str] = []

    def run(self, config: Any, messages: list[dict[str, str]], seed: int, tokens: int) -> tuple[float, float, str]:
        import torch

        from workers.backends import PLAIN_STOPS, GenerationRequest, TransformersBackend, cut_at_stop

        backend = TransformersBackend(config.model_path, config.gguf_file, config.prompt_format)
        params = config.effective_params()
        request = GenerationRequest(messages=messages, system_prompt=config.system_prompt, params=params, seed=seed)
        prompt, templated = backend.build_prompt(self.tokenizer, request)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated)
        temperature = float(params["temperature"])
        kwargs = {
            "max_new_tokens": tokens,
            "min_new_tokens": tokens,
            "do_sample": temperature > 0,
            "temperature": temperature if temperature > 0 else None,
            "top_p": float(params["top_p"]) if temperature > 0 else None,
            "top_k": None,
            "repetition_penalty": float(params["repetition_penalty"]),
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        torch.manual_seed(seed)
        with torch.inference_mode():
            began, began_cpu = time.perf_counter(), time.process_time()
            output = self.model.generate(**inputs, **kwargs)
            elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
        new = output[0, inputs["input_ids"].shape[1] :].tolist()
        if len(new) > len(self.last_ids):  # the longest turn: the decode cost grows with the length
            self.last_ids = new
        if len(new) != tokens:
            raise RuntimeError(f"raw generate produced {len(new)} tokens, not {tokens}")
        raw = self.tokenizer.decode(new, skip_special_tokens=True)
        stops = list(params.get("stop") or []) + ([] if templated else list(PLAIN_STOPS))
        self.last_stops = stops
        return elapsed, cpu, cut_at_stop(raw, stops)[0].strip()


def per_token_work(raw: RawModel, bench: Bench, rounds: int = 5) -> dict[str, float]:
    """The app's own work per token, timed in isolation (robust to CPU contention from other loads).

    Replays what the worker does for each token outside generate(): the streamer's decode of all
    ids so far plus the stop-string check, and the conditional row UPDATE on_text issues (on a
    scratch streaming turn in the bench database, deleted afterwards).
    """
    from django.utils import timezone

    from annotate.models import Turn
    from workers.backends import cut_at_stop

    ids = raw.last_ids  # the longest turn of the run
    decode: list[float] = []
    for _ in range(rounds):
        began = time.perf_counter()
        for k in range(1, len(ids) + 1):
            cut_at_stop(raw.tokenizer.decode(ids[:k], skip_special_tokens=True), raw.last_stops)
        decode.append((time.perf_counter() - began) / len(ids))
    texts = [
        cut_at_stop(raw.tokenizer.decode(ids[:k], skip_special_tokens=True), raw.last_stops)[0]
        for k in range(1, len(ids) + 1)
    ]
    template = Turn.objects.filter(conversation__study=bench.study, role=Turn.Role.ASSISTANT).latest("pk")
    scratch = Turn.objects.create(
        conversation_id=template.conversation_id,
        parent_id=template.parent_id,
        role=Turn.Role.ASSISTANT,
        depth=template.depth,
        position=template.position + 1,
        status=Turn.Status.STREAMING,
        attempt=1,
        model_config=bench.config,
    )
    mine = Turn.objects.filter(pk=scratch.pk, attempt=1, status=Turn.Status.STREAMING)
    updates: list[float] = []
    try:
        for _ in range(rounds):
            for text in texts:
                began = time.perf_counter()
                if mine.update(text=text, heartbeat_at=timezone.now()) != 1:
                    raise RuntimeError("scratch turn update matched no row")
                updates.append(time.perf_counter() - began)
    finally:
        scratch.delete()
    return {
        "decode_ms_per_token": statistics.median(decode) * 1000,
        "update_ms_median": statistics.median(updates) * 1000,
        "update_ms_mean": statistics.fmean(updates) * 1000,
        "update_ms_p90": percentile(updates, 90) * 1000,
        "tokens": len(ids),
    }


# --- report --------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    reps: list[Rep],
    poll_s: float,
    threads: int,
    loadavg: tuple[float, float],
    work: dict[str, float],
) -> dict[str, Any]:
    med = statistics.median
    apps = [r.app for r in reps]
    delays = [d for a in apps for d in a.delays_ms]
    per_token_app = [a.total_s / a.tokens * 1000 for a in apps]
    per_token_raw = [r.raw_s / r.app.tokens * 1000 for r in reps]
    summary = {
        "reps": len(reps),
        "tokens": [a.tokens for a in apps],
        "ratio_median": med([r.ratio for r in reps]),
        "ratio_pooled": sum(a.total_s for a in apps) / sum(r.raw_s for r in reps),
        "app_s_median": med([a.total_s for a in apps]),
        "raw_s_median": med([r.raw_s for r in reps]),
        "app_ms_per_token_median": med(per_token_app),
        "cpu_ratio_median": med([r.cpu_ratio for r in reps]),
        "worker_cpu_s_median": med([a.worker_cpu_s for a in apps]),
        "raw_cpu_s_median": med([r.raw_cpu_s for r in reps]),
        "web_cpu_ms_per_s_median": med([a.web_cpu_s / a.seen_done_s * 1000 for a in apps]),
        "raw_ms_per_token_median": med(per_token_raw),
        "delay_ms_median": med(delays) if delays else float("nan"),
        "delay_ms_p90": percentile(delays, 90),
        "delay_ms_max": max(delays) if delays else float("nan"),
        "delay_events": len(delays),
        "same_text": all(r.same_text for r in reps),
        "stream_poll_seconds": poll_s,
        "torch_num_threads": threads,
        "loadavg": loadavg,
        "per_token_work": work,
    }
    per_token_ms = work["decode_ms_per_token"] + work["update_ms_mean"]
    fixed_ms = med([a.pickup_s for a in apps]) * 1000
    tokens = med([a.tokens for a in apps])
    summary["estimated_ratio"] = 1 + (fixed_ms + tokens * per_token_ms) / (tokens * summary["raw_ms_per_token_median"])
    print()
    print(
        f"turn_overhead  ({platform.node()}, {os.cpu_count()} CPUs, torch threads {threads}, "
        f"SSE poll {poll_s * 1000:.0f} ms, {args.tokens}-token cap)"
    )
    header = (
        f"{'rep':>3} {'tok':>4} {'raw s':>7} {'app s':>7} {'ratio':>6} | {'post':>6} {'pickup':>6} "
        f"{'1st tok':>7} {'rest':>6} {'done seen':>9} | {'events':>6} {'delay p50':>9} {'p90':>6} | "
        f"{'raw cpu':>7} {'app cpu':>7} {'ratio':>6} {'same':>4}"
    )
    print(header)
    print("-" * len(header))
    for i, r in enumerate(reps, 1):
        a = r.app
        d50 = f"{med(a.delays_ms):.1f}ms" if a.delays_ms else "-"
        d90 = f"{percentile(a.delays_ms, 90):.0f}ms" if a.delays_ms else "-"
        print(
            f"{i:>3} {a.tokens:>4} {r.raw_s:>7.3f} {a.total_s:>7.3f} {r.ratio:>6.3f} | "
            f"{a.request_s * 1000:>4.0f}ms {a.pickup_s * 1000:>4.0f}ms {a.first_token_s * 1000:>5.0f}ms "
            f"{a.rest_s:>5.2f}s {a.seen_done_s:>8.3f}s | {a.events:>6} {d50:>9} {d90:>6} | "
            f"{r.raw_cpu_s:>6.2f}s {a.worker_cpu_s:>6.2f}s {r.cpu_ratio:>6.3f} {'yes' if r.same_text else 'NO':>4}"
        )
    print("-" * len(header))
    ok_ratio = summary["ratio_median"] <= RATIO_TARGET
    ok_delay = summary["delay_ms_median"] <= DELAY_TARGET_MS
    lines = [
        f"raw model.generate    median {summary['raw_s_median']:.3f} s "
        f"({summary['raw_ms_per_token_median']:.1f} ms/token)",
        f"app turn (HTTP->DONE) median {summary['app_s_median']:.3f} s "
        f"({summary['app_ms_per_token_median']:.1f} ms/token)",
        f"app / raw             median of per-rep ratios {summary['ratio_median']:.3f}, "
        f"pooled (sum app / sum raw) {summary['ratio_pooled']:.3f}  "
        f"(target <= {RATIO_TARGET:.2f} for the median: {'met' if ok_ratio else 'MISSED'})",
        f"CPU: worker / raw     median of per-rep ratios {summary['cpu_ratio_median']:.3f}  (worker main + pool "
        f"process CPU from request to end of stream; web server {summary['web_cpu_ms_per_s_median']:.0f} ms CPU/s)",
        "SSE delay             not measured (--no-stream)"
        if not delays
        else f"SSE delay (recv - t)  median {summary['delay_ms_median']:.1f} ms, p90 {summary['delay_ms_p90']:.1f} ms, "
        f"max {summary['delay_ms_max']:.1f} ms over {len(delays)} events "
        f"(target median <= {DELAY_TARGET_MS:.0f} ms: {'met' if ok_delay else 'MISSED'})",
        f"app breakdown (medians): POST answered {med([a.request_s for a in apps]) * 1000:.0f} ms, "
        f"queue pickup + claim {med([a.pickup_s for a in apps]) * 1000:.0f} ms, "
        f"claim -> first token {med([a.first_token_s for a in apps]) * 1000:.0f} ms, "
        f"DONE seen by the client {med([a.seen_done_s - a.total_s for a in apps]) * 1000:.0f} ms after finished_at",
        f"app work per token (timed apart): decode + stop check {work['decode_ms_per_token']:.2f} ms, row UPDATE "
        f"median {work['update_ms_median']:.2f} / mean {work['update_ms_mean']:.2f} / "
        f"p90 {work['update_ms_p90']:.2f} ms -> {per_token_ms / summary['raw_ms_per_token_median'] * 100:.1f}% "
        f"of a raw token; with the pickup, a "
        f"{tokens:.0f}-token turn: estimated ratio {summary['estimated_ratio']:.3f}",
        f"raw text identical to the app's in every rep: {'yes' if summary['same_text'] else 'NO'}",
        f"load average (1 min) at start / end: {summary['loadavg'][0]:.2f} / {summary['loadavg'][1]:.2f}",
    ]
    print("\n".join(lines))
    summary["targets_met"] = ok_ratio and ok_delay
    return summary


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_shared(args.database_url, args.broker_url, example_broker=DEFAULT_BROKER_URL)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["CELERY_BROKER_URL"] = args.broker_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if args.stream_poll_seconds is not None:
        os.environ["STREAM_POLL_SECONDS"] = str(args.stream_poll_seconds)
    sys.path.insert(0, str(ROOT))

    ensure_database(args.database_url)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from workers.celery_app import worker_argv

    call_command("migrate", verbosity=0, interactive=False)
    flush_broker(args.broker_url)

    log_dir = Path(tempfile.mkdtemp(prefix="turn_overhead-"))
    env = dict(os.environ)
    env.update(
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
        MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR),
        WORKER_PRELOAD_MODELS=CONFIG_NAME,
        TORCH_NUM_THREADS=str(settings.TORCH_NUM_THREADS),
    )
    children: list[Child] = []
    completed = False
    try:
        bench = Bench(args)  # the model config must exist before the worker preloads it by name
        print(f"starting worker and web server (logs in {log_dir}) ...", flush=True)
        worker = Child(
            "worker",
            worker_argv(concurrency=1, name=f"bench-{uuid.uuid4().hex[:6]}@%h"),
            env,
            log_dir,
        )
        children.append(worker)
        port = free_port()
        server = Child(
            "web",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            env,
            log_dir,
        )
        children.append(server)
        server.wait_for("Application startup complete", timeout=60)
        worker.wait_for("Loaded model gemma3-270m", "ready.", timeout=300)

        print("loading the model in-process for the raw baseline ...", flush=True)
        raw = RawModel()
        bench.base_url = f"http://127.0.0.1:{port}"
        bench.worker_pid, bench.web_pid = worker.proc.pid, server.proc.pid
        bench.login()
        from annotate import selectors
        from annotate.models import Turn

        reps: list[Rep] = []
        load_start = os.getloadavg()[0]
        for i in range(args.reps + 1):
            app = bench.app_turn()
            messages = selectors.messages_before(Turn.objects.get(pk=app.turn_id))
            raw_s, raw_cpu_s, raw_text = raw.run(bench.config, messages, app.seed, app.tokens)
            label = "warm-up" if i == 0 else f"rep {i}/{args.reps}"
            print(f"  {label}: {app.tokens} tokens, app {app.total_s:.3f} s, raw {raw_s:.3f} s", flush=True)
            if i > 0:
                reps.append(Rep(app=app, raw_s=raw_s, raw_cpu_s=raw_cpu_s, same_text=raw_text == app.text))
        loadavg = (load_start, os.getloadavg()[0])
        work = per_token_work(raw, bench)
        summary = report(args, reps, settings.STREAM_POLL_SECONDS, settings.TORCH_NUM_THREADS, loadavg, work)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "summary": summary,
                        "reps": [{**asdict(r.app), "raw_s": r.raw_s, "raw_cpu_s": r.raw_cpu_s} for r in reps],
                    },
                    indent=2,
                )
            )
        completed = True
        return 1 if args.check and not summary["targets_met"] else 0
    finally:
        stack_stop(children, args.broker_url, log_dir, keep_logs=args.keep_logs or not completed)


if __name__ == "__main__":
    sys.exit(main())
