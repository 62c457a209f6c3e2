"""Tag POST latency with 100k tags stored, and the study dashboard's render time at 2,000 conversations.

Builds a study of N finished conversations (default 2,000: 3 user turns, 2 candidates each, votes)
with T tags (default 100,000, spread over 4 reviewers and the conversation's own rater) in a
PostgreSQL database of its own, starts the real ASGI server (uvicorn), and measures over HTTP:

- tag POST (htmx, as the rating page sends it) latency p50/p99, one client and 8 concurrent
  clients, against a plain GET of the login page measured in the same run (the framework's floor);
- the dashboard's render time (median of 5) against the rater home page in the same run.

    .venv/bin/python bench/tag_latency.py            # ~2-4 minutes here
    .venv/bin/python bench/tag_latency.py --quick    # 200 conversations, 10k tags
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common import ROOT, Child, ensure_database, free_port, percentile

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cg_bench_tags"
PASSWORD = "bench-password"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_TAGS_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=400, help="tag POSTs per client mode")
    parser.add_argument("--web-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--quick", action="store_true", help="200 conversations, 10k tags, 150 posts")
    args = parser.parse_args(argv)
    if args.quick:
        args.conversations, args.tags, args.posts = 200, 10_000, 150
    name = args.database_url.rsplit("/", 1)[-1]
    if name in {"commonground", "postgres"} or name.startswith(("test", "template")):
        parser.error(f"refusing to use the shared database {name!r}")
    return args


def build_study(n_conversations: int, n_tags: int) -> dict[str, object]:
    """Bulk-create the study, its conversations, votes and tags; returns ids the timing needs."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.utils import timezone

    from annotate.models import Comparison, Conversation, Scenario, Study, Turn
    from labeling.models import ReviewAssignment, Tag
    from labeling.services import default_taxonomy
    from workers.models import ModelConfig

    rng = random.Random(7)
    users = get_user_model()
    stamp = uuid.uuid4().hex[:6]
    owner = users.objects.create_user(f"bench-owner-{stamp}", password=PASSWORD)
    staff = users.objects.create_user(f"bench-staff-{stamp}", password=PASSWORD, is_staff=True)
    # The dashboard needs its permission (being staff is not enough).
    staff.user_permissions.add(
        Permission.objects.get(codename="view_study_dashboard", content_type__app_label="annotate")
    )
    reviewers = [users.objects.create_user(f"bench-rev{i}-{stamp}", password=PASSWORD) for i in range(4)]
    configs = [ModelConfig.objects.create(name=f"bench-{stamp}-{x}", model_path="/none", params={}) for x in ("a", "b")]
    taxonomy = default_taxonomy()
    study = Study.objects.create(name=f"tag bench {stamp}", slug=f"tag-bench-{stamp}", taxonomy=taxonomy)
    study.model_pool.set(configs)
    scenario = Scenario.objects.create(study=study, external_id="s", title="Bench", brief="Bench brief")
    now = timezone.now()
    conversations = Conversation.objects.bulk_create(
        [
            Conversation(study=study, scenario=scenario, rater=owner, status="completed", ended_at=now)
            for _ in range(n_conversations)
        ],
        batch_size=2000,
    )
    texts = ["Can you help me plan a party for my daughter?", "Do you mean a birthday party? How many guests?"]
    all_turns: list[Turn] = []
    parents: dict[int, Turn | None] = {c.pk: None for c in conversations}
    comparisons = []
    for depth in range(3):
        users_turns = Turn.objects.bulk_create(
            [
                Turn(conversation=c, parent=parents[c.pk], role="user", depth=depth * 2, text=texts[0])
                for c in conversations
            ],
            batch_size=5000,
        )
        candidates = Turn.objects.bulk_create(
            [
                Turn(
                    conversation_id=u.conversation_id,
                    parent=u,
                    role="assistant",
                    depth=depth * 2 + 1,
                    position=p,
                    text=texts[1],
                    model_config=configs[p],
                    status="done",
                    finished_at=now,
                )  # fmt: skip
                for u in users_turns
                for p in (0, 1)
            ],
            batch_size=5000,
        )
        for i, u in enumerate(users_turns):
            chosen = candidates[2 * i + rng.randrange(2)]
            parents[u.conversation_id] = chosen
            comparisons.append(
                Comparison(
                    conversation_id=u.conversation_id,
                    parent=u,
                    choice="candidate",
                    chosen=chosen,
                    continued_from=chosen,
                    strength="clear",
                    rater=owner,
                    decision_ms=rng.randint(800, 9000),
                )  # fmt: skip
            )
        all_turns += users_turns + candidates
    Comparison.objects.bulk_create(comparisons, batch_size=5000)
    for c in conversations:
        c.head = parents[c.pk]
    Conversation.objects.bulk_update(conversations, ["head"], batch_size=5000)
    ReviewAssignment.objects.bulk_create(
        [ReviewAssignment(conversation=c, rater=r, status="done") for c in conversations for r in reviewers],
        batch_size=5000,
    )
    labels = list(taxonomy.labels.all())
    by_role = {role: [lab for lab in labels if lab.applies_to(role)] for role in ("user", "assistant")}
    taggers = [(r, "review") for r in reviewers] + [(owner, "live")]
    seen: set[tuple[int, int, int, str]] = set()
    tags = []
    while len(tags) < n_tags:
        turn = all_turns[rng.randrange(len(all_turns))]
        rater, task = taggers[rng.randrange(len(taggers))]
        label = rng.choice(by_role[turn.role])
        key = (turn.pk, label.pk, rater.pk, task)
        if key not in seen:
            seen.add(key)
            tags.append(Tag(turn=turn, label=label, rater=rater, task=task))
    Tag.objects.bulk_create(tags, batch_size=10_000)
    # The timed tags go on a live conversation of the owner: 100 messages with two finished
    # replies each, so each reply gets a handful of tags, as in a real session.
    live = Conversation.objects.create(study=study, scenario=scenario, rater=owner)
    reply = "Do you mean a birthday party? How many guests are coming, and what is your budget?"
    parent = None
    targets = []
    for depth in range(0, 200, 2):
        user_turn = Turn.objects.create(conversation=live, parent=parent, role="user", depth=depth, text=texts[0])
        pair = [
            Turn.objects.create(
                conversation=live,
                parent=user_turn,
                role="assistant",
                depth=depth + 1,
                position=p,
                status="done",
                text=reply,
                model_config=configs[p],
                finished_at=now,
            )  # fmt: skip
            for p in (0, 1)
        ]
        targets += [t.pk for t in pair]
        parent = pair[0]
    live.head = parent
    live.save(update_fields=["head"])
    span_labels = [lab.name for lab in by_role["assistant"] if lab.takes_span]
    return {"owner": owner.username, "staff": staff.username, "slug": study.slug, "targets": targets,
            "text_length": len(reply), "span_labels": span_labels}  # fmt: skip


def login(base_url: str, username: str):  # type: ignore[no-untyped-def]
    import requests

    session = requests.Session()
    session.get(f"{base_url}/accounts/login/")
    session.post(
        f"{base_url}/accounts/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": base_url},
    )
    session.headers.update({"X-CSRFToken": session.cookies["csrftoken"], "HX-Request": "true", "Referer": base_url})
    return session


def timed(call) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.url} answered {response.status_code}")
    return elapsed


def post_tags(base_url: str, data: dict[str, object], combos: list[tuple[int, str, int]], out: list[float]) -> None:
    """POST one new span tag per (turn, label, start), as one logged-in client."""
    session = login(base_url, str(data["owner"]))
    for turn_id, label, start in combos:
        payload = {"turn": turn_id, "label": label, "task": "live", "span_start": start,
                   "span_end": start + 5}  # fmt: skip
        out.append(timed(lambda p=payload: session.post(f"{base_url}/tags/", data=p)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # One rater posts every timed tag, far faster than a person: the per-rater tag limit is off here.
    os.environ.setdefault("RATE_LIMIT_TAGS", "0")
    sys.path.insert(0, str(ROOT))
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    started = time.perf_counter()
    data = build_study(args.conversations, args.tags)
    print(f"built {args.conversations:,} conversations and {args.tags:,} tags in {time.perf_counter() - started:.1f} s")

    log_dir = Path(tempfile.mkdtemp(prefix="tag_latency-"))
    port = free_port()
    argv_web = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--no-access-log",
                "--workers", str(args.web_workers)]  # fmt: skip
    server = Child("web", argv_web, dict(os.environ), log_dir)
    try:
        server.wait_for("Application startup complete", timeout=60)
        base_url = f"http://127.0.0.1:{port}"
        rater = login(base_url, str(data["owner"]))
        for _ in range(20):  # warm-up
            timed(lambda: rater.get(f"{base_url}/accounts/login/"))
        floor = [timed(lambda: rater.get(f"{base_url}/accounts/login/")) for _ in range(args.posts)]
        room = int(data["text_length"]) - 5  # type: ignore[call-overload]
        rng = random.Random(1)
        targets: list[int] = data["targets"]  # type: ignore[assignment]
        labels: list[str] = data["span_labels"]  # type: ignore[assignment]
        combos = [(targets[i % len(targets)], rng.choice(labels), rng.randrange(room)) for i in range(2 * args.posts)]
        single: list[float] = []
        post_tags(base_url, data, combos[: args.posts], single)
        concurrent: list[float] = []
        per_client = max(args.posts // 8, 1)
        threads = [
            threading.Thread(
                target=post_tags,
                args=(
                    base_url,
                    data,
                    combos[args.posts + i * per_client : args.posts + (i + 1) * per_client],
                    concurrent,
                ),
            )  # fmt: skip
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        staff = login(base_url, str(data["staff"]))
        home = [timed(lambda: staff.get(f"{base_url}/")) for _ in range(5)]
        timed(lambda: staff.get(f"{base_url}/studies/{data['slug']}/dashboard/"))  # warm-up
        dashboard = [timed(lambda: staff.get(f"{base_url}/studies/{data['slug']}/dashboard/")) for _ in range(5)]
    finally:
        server.stop()

    def line(name: str, values: list[float]) -> str:
        return (f"{name:34} p50 {percentile(values, 50):8.1f} ms   p99 {percentile(values, 99):8.1f} ms"
                f"   n={len(values)}")  # fmt: skip

    print(
        f"\ntag_latency  ({args.conversations:,} conversations, {args.tags:,} tags stored, PostgreSQL, "
        f"uvicorn x{args.web_workers})"
    )
    print(line("baseline: GET login page", floor))
    print(line("tag POST, 1 client", single))
    print(line("tag POST, 8 concurrent clients", concurrent))
    print(f"tag POST p50 / baseline p50: {percentile(single, 50) / percentile(floor, 50):.2f}x (1 client)")
    print(f"dashboard render (median of 5):    {statistics.median(dashboard):8.1f} ms "
          f"({statistics.median(dashboard) / statistics.median(home):.1f}x the home page, "
          f"{statistics.median(home):.1f} ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
