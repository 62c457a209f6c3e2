"""The study dashboard at scale (issue 11): 10k conversations and 500k tags.

Builds (once; reused while the counts match, `--fresh` to build again) a study in a PostgreSQL database of its
own (`cg_bench_dashboard`) with the ORM's bulk_create: N finished conversations by 50 live raters, 3 user turns
each answered by 2 candidates (two model configs), a live vote per user turn (the chosen reply continues), each
conversation reviewed (done) by 2 of 20 reviewers, who also vote at the branch points of a share of the
conversations (`--voted-share`), and T confirmed tags spread evenly over the conversations: the live rater on any
turn of their conversation, the reviewers on the lived path, correlated (each turn has two "true" labels that
most coders pick) so that agreement is neither 0 nor 1; 5% of the tags are suggestions (accepted, rejected or
pending).

Then, in this process, Django set up and the database warm (each figure the median of `--repeat` runs):

- old: the dashboard computation as it was before issue 11 (labeling/dashboard.py at OLD_COMMIT, loaded from
  git, with today's pure-Python labeling.agreement, which kept those functions unchanged);
- reference: today's `study_dashboard(reference=True)` (today's queries, the pure-Python maths);
- new: today's `study_dashboard()` (NumPy maths), with the part spent in the queries beside it;
- page: GET of the dashboard page from a stored snapshot (Django's test client, in process, logged in), against
  the rater home page in the same run (the framework's floor); the snapshot is stored by the task's service
  function first (`labeling.services.dashboard_refresh`), timed too.

Target (issue 11): the page renders in < 1 s at 10k conversations and 500k tags.

    .venv/bin/python bench/dashboard.py                                 # 10k conversations, 500k tags
    .venv/bin/python bench/dashboard.py --conversations 2000 --tags 100000 --skip-old
    .venv/bin/python bench/dashboard.py --profile                       # cProfile of the new computation
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

from common import ROOT, ensure_database

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cg_bench_dashboard"
OLD_COMMIT = "5958ab3e5f072d5bf309806f66ee86570f37548a"  # labeling/dashboard.py before issue 11
LIVE_RATERS, REVIEWERS, REVIEWS_PER_CONVERSATION = 50, 20, 2
USER_TURNS = 3
CHUNK = 500  # conversations per round of bulk_create
PASSWORD = "bench-password"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DASHBOARD_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--tags", type=int, default=500_000)
    parser.add_argument(
        "--voted-share", type=float, default=0.1, help="share of conversations whose reviewers also vote"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each computation (median)")
    parser.add_argument("--skip-old", action="store_true", help="leave out the old and the reference computations")
    parser.add_argument("--fresh", action="store_true", help="build the study again")
    parser.add_argument("--profile", action="store_true", help="cProfile the new computation, print the top")
    args = parser.parse_args(argv)
    name = args.database_url.rsplit("/", 1)[-1]
    if name in {"commonground", "postgres"} or name.startswith(("test", "template")):
        parser.error(f"refusing to use the shared database {name!r}")
    return args


# --- the data ------------------------------------------------------------------------------------------


def slug_for(conversations: int, tags: int, voted_share: float) -> str:
    return f"dashboard-bench-{conversations}-{tags}-{round(voted_share * 100)}"


def build_study(slug: str, n_conversations: int, n_tags: int, voted_share: float) -> Any:
    """Bulk-create the study (see the module notes), CHUNK conversations at a time."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from annotate.models import Comparison, Conversation, Scenario, Study, Turn
    from labeling.models import ReviewAssignment, Tag
    from labeling.services import default_taxonomy
    from workers.models import ModelConfig

    rng = random.Random(11)
    users = get_user_model()
    live_raters = [users.objects.create_user(f"{slug}-live{i}") for i in range(LIVE_RATERS)]
    reviewers = [users.objects.create_user(f"{slug}-rev{i}") for i in range(REVIEWERS)]
    configs = [ModelConfig.objects.create(name=f"{slug}-{x}", model_path="/none", params={}) for x in ("a", "b")]
    taxonomy = default_taxonomy()
    study = Study.objects.create(name=f"Dashboard bench {n_conversations}", slug=slug, taxonomy=taxonomy)
    study.model_pool.set(configs)
    scenario = Scenario.objects.create(study=study, external_id="s", title="Bench", brief="Bench brief")
    labels = list(taxonomy.labels.all())
    by_role = {role: [label.pk for label in labels if label.applies_to(role)] for role in ("user", "assistant")}
    now = timezone.now()
    per_conversation, extra = divmod(n_tags, n_conversations)
    texts = ("Can you help me plan a party for my daughter?", "Do you mean a birthday party? How many guests?")
    for first in range(0, n_conversations, CHUNK):
        size = min(CHUNK, n_conversations - first)
        conversations = Conversation.objects.bulk_create(
            [
                Conversation(
                    study=study,
                    scenario=scenario,
                    rater=live_raters[(first + i) % LIVE_RATERS],
                    status="completed",
                    ended_at=now,
                )  # fmt: skip
                for i in range(size)
            ]
        )
        parents: dict[int, Any] = {c.pk: None for c in conversations}
        rater_of = {c.pk: c.rater_id for c in conversations}
        turns: dict[int, list[tuple[int, str, bool]]] = {c.pk: [] for c in conversations}  # (turn, role, lived)
        comparisons = []
        for depth in range(USER_TURNS):
            asked = Turn.objects.bulk_create(
                [
                    Turn(conversation=c, parent=parents[c.pk], role="user", depth=2 * depth, text=texts[0])
                    for c in conversations
                ]
            )
            replies = Turn.objects.bulk_create(
                [
                    Turn(
                        conversation_id=u.conversation_id,
                        parent=u,
                        role="assistant",
                        depth=2 * depth + 1,
                        position=p,
                        text=texts[1],
                        model_config=configs[p],
                        status="done",
                        finished_at=now,
                    )  # fmt: skip
                    for u in asked
                    for p in (0, 1)
                ]
            )
            for i, u in enumerate(asked):
                pick = rng.randrange(2)
                chosen, other = replies[2 * i + pick], replies[2 * i + 1 - pick]
                parents[u.conversation_id] = chosen
                turns[u.conversation_id] += [(u.pk, "user", True), (chosen.pk, "assistant", True),
                                             (other.pk, "assistant", False)]  # fmt: skip
                comparisons.append(
                    Comparison(
                        conversation_id=u.conversation_id,
                        parent=u,
                        choice="candidate",
                        chosen=chosen,
                        continued_from=chosen,
                        strength="clear",
                        rater_id=rater_of[u.conversation_id],
                        decision_ms=rng.randint(800, 9000),
                    )  # fmt: skip
                )
        reviewers_of = {c.pk: rng.sample(reviewers, REVIEWS_PER_CONVERSATION) for c in conversations}
        for c in conversations:
            c.head = parents[c.pk]
            if rng.random() < voted_share:
                for reviewer in reviewers_of[c.pk]:
                    for turn_id, role, _ in turns[c.pk]:
                        if role == "user":
                            reply = next(t for t, r, _ in turns[c.pk] if r == "assistant" and t > turn_id)
                            agree = rng.random() < 0.7
                            comparisons.append(
                                Comparison(
                                    conversation_id=c.pk,
                                    parent_id=turn_id,
                                    task="review",
                                    rater=reviewer,
                                    choice="candidate" if agree else "tie",
                                    chosen_id=reply if agree else None,
                                )  # fmt: skip
                            )
        Comparison.objects.bulk_create(comparisons)
        Conversation.objects.bulk_update(conversations, ["head"])
        ReviewAssignment.objects.bulk_create(
            [
                ReviewAssignment(conversation=c, rater=r, status="done", done_at=now)
                for c in conversations
                for r in reviewers_of[c.pk]
            ]
        )
        tags = []
        for k, c in enumerate(conversations):
            quota = per_conversation + (1 if first + k < extra else 0)
            truth = {t: rng.sample(by_role[role], 2) for t, role, _ in turns[c.pk]}
            slots = [
                (t, role, coder, "live" if coder == c.rater_id else "review")
                for t, role, lived in turns[c.pk]
                for coder in ([c.rater_id] + ([r.pk for r in reviewers_of[c.pk]] if lived else []))
            ]
            seen: set[tuple[int, int, int]] = set()
            while len(seen) < quota:
                t, role, coder, task = slots[rng.randrange(len(slots))]
                draw = rng.random()
                label = truth[t][0] if draw < 0.5 else truth[t][1] if draw < 0.75 else rng.choice(by_role[role])
                if (t, label, coder) in seen:
                    continue
                seen.add((t, label, coder))
                suggestion = rng.random() < 0.05
                status = rng.choice(("confirmed", "rejected", "suggested")) if suggestion else "confirmed"
                tags.append(
                    Tag(
                        turn_id=t,
                        label_id=label,
                        rater_id=coder,
                        task=task,
                        source="suggestion" if suggestion else "rater",
                        status=status,
                    )  # fmt: skip
                )
        Tag.objects.bulk_create(tags, batch_size=10_000)
        print(f"  {first + size:,} conversations", end="\r", flush=True)
    print()
    return study


def counts(study: Any) -> tuple[int, int]:
    from annotate.models import Conversation
    from labeling.models import Tag

    return Conversation.objects.filter(study=study).count(), Tag.objects.filter(turn__conversation__study=study).count()


# --- the timings ------------------------------------------------------------------------------------------


def old_dashboard() -> types.ModuleType | None:
    """labeling/dashboard.py as of OLD_COMMIT, loaded as a module of its own (None without git)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:labeling/dashboard.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="dashboard-old-"), "old_dashboard.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("old_dashboard", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_dashboard"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def median_time(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def query_time(study: Any) -> float:
    """The reads of the new computation alone: its queries, their rows turned into arrays and dicts, no maths."""
    from labeling import dashboard

    started = time.perf_counter()
    members = dashboard._members(study)
    excluded = dashboard._excluded(members)
    dashboard.labels_for(study)
    confirmed, _, tags, grounded = dashboard._tag_scan(study, excluded)
    dashboard._coded_sets(study, excluded, confirmed)
    dashboard._vote_units(study, excluded)
    dashboard._raters(study, tags, excluded, None, members)
    dashboard._grounding_rates(study, excluded, grounded)
    return time.perf_counter() - started


def same(a: Any, b: Any) -> bool:
    """Equal JSON-like figures, floats to 1e-9."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from annotate.models import Study
    from labeling import services
    from labeling.dashboard import dashboard_to_json, study_dashboard

    call_command("migrate", verbosity=0, interactive=False)
    slug = slug_for(args.conversations, args.tags, args.voted_share)
    study = Study.objects.filter(slug=slug).first()
    if study is not None and (args.fresh or counts(study) != (args.conversations, args.tags)):
        print("dropping the old bench study")
        call_command("flush", verbosity=0, interactive=False)
        study = None
    if study is None:
        started = time.perf_counter()
        study = build_study(slug, args.conversations, args.tags, args.voted_share)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        print(
            f"built {args.conversations:,} conversations, {args.tags:,} tags in {time.perf_counter() - started:.0f} s"
        )
    else:
        print(f"reusing {slug}")

    study_dashboard(study=study)  # warm the database's cache
    results: dict[str, float] = {}
    if not args.skip_old:
        old = old_dashboard()
        if old is not None:
            results["old"] = median_time(lambda: old.study_dashboard(study=study), 1)
        results["reference"] = median_time(lambda: study_dashboard(study=study, reference=True), 1)
        checked = same(
            dashboard_to_json(study_dashboard(study=study)),
            dashboard_to_json(study_dashboard(study=study, reference=True)),
        )
        print(f"new figures equal the reference figures (1e-9): {checked}")
    results["new"] = median_time(lambda: study_dashboard(study=study), args.repeat)
    results["queries"] = median_time(lambda: query_time(study), args.repeat)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(study_dashboard, study=study)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)

    started = time.perf_counter()
    services.dashboard_refresh(study_id=study.pk, include_excluded=False)
    results["refresh"] = time.perf_counter() - started
    researcher = get_user_model().objects.filter(is_superuser=True, username=f"{slug}-researcher").first()
    researcher = researcher or get_user_model().objects.create_superuser(f"{slug}-researcher", password=None)
    client = Client()
    client.force_login(researcher)
    url = f"/studies/{slug}/dashboard/"
    for path in (url, "/"):
        assert client.get(path).status_code == 200  # warm-up (and the snapshot is there: no refresh inline)
    queries: list[str] = []
    with connection.execute_wrapper(lambda execute, sql, *rest: queries.append(sql) or execute(sql, *rest)):
        page = client.get(url)
    assert b"Figures as of" in page.content, "the page did not render from the snapshot"
    results["page"] = median_time(lambda: client.get(url), max(args.repeat, 5))
    results["home"] = median_time(lambda: client.get("/"), max(args.repeat, 5))

    print(f"\ndashboard  ({args.conversations:,} conversations, {args.tags:,} tags, PostgreSQL)")
    if "old" in results:
        print(f"old computation (before issue 11)      {results['old']:8.2f} s")
    if "reference" in results:
        print(f"today's queries, pure-Python maths     {results['reference']:8.2f} s")
    print(f"new computation (NumPy maths)          {results['new']:8.2f} s   of which reads {results['queries']:.2f} s")
    if "old" in results:
        print(f"old / new                              {results['old'] / results['new']:8.1f}x")
    print(f"refresh (compute + store the snapshot) {results['refresh']:8.2f} s")
    print(
        f"page from the snapshot (median)        {results['page'] * 1000:8.1f} ms   {len(queries)} queries, "
        f"{len(page.content) // 1024} KB; {results['page'] / results['home']:.1f}x the home page "
        f"({results['home'] * 1000:.1f} ms); target < 1000 ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
