"""The arena leaderboard of a study: its votes and tags read as counts, the figures, their cache and CSV.

Battles are counted by the database (one GROUP BY over votes × candidate pairs): a million battles reach Python
as a few hundred rows, never as model instances. The maths is `labeling.leaderboard`; the definitions are in
docs/leaderboard.md. A battle is one vote (live or review, as the arena export counts them) on two finished,
sampled candidates of different models answering the same user turn, where the vote decides the pair: a tie or
"both bad" decides every pair, a chosen candidate the pairs it is in (`exports.formats.arena_rows`' rule).
Left out: votes that failed a planted attention check; by default excluded raters' votes and everything on their
conversations (`include_excluded`), and flagged battles, where either reply named its own model
(`Turn.identity_leak`, `include_flagged`).

The figures are computed by a worker (`labeling.tasks.leaderboard_refresh_task`) and kept in the Django cache
until the next refresh, which a researcher asks for on the page.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Any

import numpy as np
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from annotate.models import Comparison, Conversation, Participant, Study, Turn
from annotate.selectors import excluded_raters
from core.tasks import task_send
from labeling import leaderboard as lb
from labeling.models import Label, ReviewAssignment, Tag
from workers.models import ModelConfig

VERSION = 2  # a cached result of another version is not read (2: intervals resampling raters)
ROUNDS = 1000
SEED = 0
DEPTH_TAIL = 6  # user turns from this one on share one bucket ("6+")
BASELINE = "Users (human baseline)"
REFRESH_TASK = "labeling.tasks.leaderboard_refresh_task"
REFRESH_QUEUE = "suggestions"  # with the dashboard's refreshes: never behind a generation or an export
REFRESH_DEDUPE_SECONDS = 60  # a refresh asked for while one is pending within this is not sent again
TABLES = ("ratings", "pairs", "depth", "rates")


# --- battles --------------------------------------------------------------------------------------

_BATTLES_SQL = """
SELECT a.model_config_id, b.model_config_id,
       CASE WHEN c.choice = %(tie)s THEN 2 WHEN c.choice = %(all_bad)s THEN 3 WHEN c.chosen_id = a.id THEN 0 ELSE 1 END,
       CASE WHEN a.identity_leak OR b.identity_leak THEN 1 ELSE 0 END,
       CASE WHEN c.task = %(review)s THEN 1 ELSE 0 END,
       u.depth,
       c.rater_id,
       COUNT(*)
FROM {comparison} c
JOIN {conversation} v ON v.id = c.conversation_id
JOIN {turn} u ON u.id = c.parent_id
JOIN {turn} a ON a.parent_id = c.parent_id
JOIN {turn} b ON b.parent_id = c.parent_id AND a.position < b.position
WHERE v.study_id = %(study)s
  AND a.status = %(done)s AND b.status = %(done)s
  AND a.is_rewrite = %(no)s AND b.is_rewrite = %(no)s
  AND a.is_attention_check = %(no)s AND b.is_attention_check = %(no)s
  AND a.model_config_id IS NOT NULL AND b.model_config_id IS NOT NULL
  AND a.model_config_id <> b.model_config_id
  AND (c.attention_passed IS NULL OR c.attention_passed = %(yes)s)
  AND (c.choice IN (%(tie)s, %(all_bad)s) OR c.chosen_id = a.id OR c.chosen_id = b.id)
  {excluded}
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""

_EXCLUDED_SQL = """
  AND c.rater_id NOT IN (SELECT p.user_id FROM {participant} p WHERE p.study_id = %(study)s AND p.excluded = %(yes)s)
  AND v.rater_id NOT IN (SELECT p.user_id FROM {participant} p WHERE p.study_id = %(study)s AND p.excluded = %(yes)s)
"""


def battle_rows(study: Study, *, include_excluded: bool = False) -> np.ndarray:
    """The study's battles counted by (model a, model b, outcome, flagged, review vote, user-turn depth, rater): an
    (n, 8) integer array, the last column the count (`COUNT`). Model a is the candidate in the lower slot; the
    outcome is
    `leaderboard.A_WINS`, `B_WINS`, `TIE` or `BOTH_BAD`."""
    tables = {
        "comparison": Comparison._meta.db_table,
        "conversation": Conversation._meta.db_table,
        "turn": Turn._meta.db_table,
        "participant": Participant._meta.db_table,
    }
    excluded = "" if include_excluded else _EXCLUDED_SQL.format(**tables)
    sql = _BATTLES_SQL.format(excluded=excluded, **tables)
    params: dict[str, str | int | bool] = {
        "study": study.pk,
        "tie": Comparison.Choice.TIE.value,
        "all_bad": Comparison.Choice.ALL_BAD.value,
        "review": Comparison.Task.REVIEW.value,
        "done": Turn.Status.DONE.value,
        "no": False,
        "yes": True,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return np.array(rows, dtype=np.int64).reshape(len(rows), 8)


# --- grounding acts and feedback signals ----------------------------------------------------------


def _replies(study: Study, excluded: QuerySet[Participant, Any] | None, prefix: str = "") -> Q:
    """Finished sampled model replies of the study (at `prefix`, e.g. "parent__"), not of excluded raters."""
    q = Q(
        **{
            f"{prefix}conversation__study": study,
            f"{prefix}role": Turn.Role.ASSISTANT,
            f"{prefix}status": Turn.Status.DONE,
            f"{prefix}is_rewrite": False,
            f"{prefix}is_attention_check": False,
            f"{prefix}model_config__isnull": False,
        }
    )
    return q & ~Q(**{f"{prefix}conversation__rater_id__in": excluded}) if excluded is not None else q


def _tags(study: Study, excluded: QuerySet[Participant, Any] | None) -> QuerySet[Tag]:
    """Confirmed tags that count, as on the dashboard: not by or on the work of an excluded rater, not put in a
    review that expired."""
    expired = ReviewAssignment.objects.filter(
        conversation_id=OuterRef("turn__conversation_id"),
        rater_id=OuterRef("rater_id"),
        status=ReviewAssignment.Status.EXPIRED,
    )
    tags = Tag.objects.filter(status=Tag.Status.CONFIRMED, turn__conversation__study=study).exclude(
        Q(task=Tag.Task.REVIEW) & Exists(expired)
    )
    if excluded is not None:
        tags = tags.exclude(rater_id__in=excluded).exclude(turn__conversation__rater_id__in=excluded)
    return tags.order_by()


def _counted(qs: QuerySet[Any, Any], *keys: str) -> dict[Any, int]:
    """{key(s): distinct turns} of a grouped count."""
    rows = qs.values(*keys).annotate(n=Count("turn_id", distinct=True)).values_list(*keys, "n")
    return {row[:-1] if len(keys) > 1 else row[0]: row[-1] for row in rows}


def rate_counts(study: Study, *, include_excluded: bool = False) -> dict[str, Any]:
    """Counts for the rates per 100 turns, in a handful of grouped queries.

    replies {model id: n}; grounding {(model id, label id): replies with it} and {model id: replies with any};
    user_turns n, user_grounding {label id: user turns with it}, user_any; reactions {model id: user turns
    answering that model's reply on the lived path}, feedback {(model id, label id): n}, feedback_any and
    feedback_negative {model id: n}."""
    excluded = None if include_excluded else excluded_raters(study)
    replies = dict(
        Turn.objects.filter(_replies(study, excluded)).order_by().values("model_config_id").annotate(n=Count("pk"))
        .values_list("model_config_id", "n")
    )  # fmt: skip
    user = Turn.objects.filter(conversation__study=study, role=Turn.Role.USER)
    if excluded is not None:
        user = user.exclude(conversation__rater_id__in=excluded)
    reactions = dict(
        user.filter(_replies(study, excluded, "parent__")).order_by().values("parent__model_config_id")
        .annotate(n=Count("pk")).values_list("parent__model_config_id", "n")
    )  # fmt: skip
    tags = _tags(study, excluded)
    on_replies = tags.filter(_replies(study, excluded, "turn__"), label__kind=Label.Kind.GROUNDING)
    on_users = tags.filter(turn__role=Turn.Role.USER, label__kind=Label.Kind.GROUNDING)
    reacting = tags.filter(
        _replies(study, excluded, "turn__parent__"), turn__role=Turn.Role.USER, label__kind=Label.Kind.FEEDBACK
    )
    model = "turn__model_config_id"
    reacted_to = "turn__parent__model_config_id"
    return {
        "replies": replies,
        "grounding": _counted(on_replies, model, "label_id"),
        "grounding_any": _counted(on_replies, model),
        "user_turns": user.count(),
        "user_grounding": _counted(on_users, "label_id"),
        "user_any": on_users.aggregate(n=Count("turn_id", distinct=True))["n"],
        "reactions": reactions,
        "feedback": _counted(reacting, reacted_to, "label_id"),
        "feedback_any": _counted(reacting, reacted_to),
        "feedback_negative": _counted(reacting.filter(label__polarity__lt=0), reacted_to),
    }


# --- the figures ----------------------------------------------------------------------------------


def _rate_row(model: str, kind: str, label: str, hits: int, turns: int, *, baseline: bool = False) -> dict[str, Any]:
    rate = lb.Rate(hits=hits, turns=turns)
    lower, upper = rate.interval
    return {
        "model": model,
        "kind": kind,
        "label": label,
        "hits": hits,
        "turns": turns,
        "per_100": rate.per_100,
        "lower": lower,
        "upper": upper,
        "baseline": baseline,
    }


def _rates(counts: dict[str, Any], names: dict[int, str], labels: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """Per model, the share of its replies with each grounding act (and any) and of its lived replies the user
    answered with each feedback signal (any, negative), per 100 with Wilson 95% intervals; then the users' own
    grounding acts per 100 user turns, the human baseline."""
    rows: list[dict[str, Any]] = []
    grounding = sorted(pk for pk, (_, kind) in labels.items() if kind == Label.Kind.GROUNDING)
    feedback = sorted(pk for pk, (_, kind) in labels.items() if kind == Label.Kind.FEEDBACK)
    for model_id in sorted(set(counts["replies"]) | set(counts["reactions"]), key=lambda pk: names.get(pk, "")):
        name, n = names.get(model_id, "—"), counts["replies"].get(model_id, 0)
        rows.append(_rate_row(name, "grounding", "any", counts["grounding_any"].get(model_id, 0), n))
        rows += [
            _rate_row(name, "grounding", labels[pk][0], counts["grounding"].get((model_id, pk), 0), n)
            for pk in grounding
        ]
        reacted = counts["reactions"].get(model_id, 0)
        rows.append(_rate_row(name, "feedback", "any", counts["feedback_any"].get(model_id, 0), reacted))
        rows.append(_rate_row(name, "feedback", "negative", counts["feedback_negative"].get(model_id, 0), reacted))
        rows += [
            _rate_row(name, "feedback", labels[pk][0], counts["feedback"].get((model_id, pk), 0), reacted)
            for pk in feedback
        ]
    n = counts["user_turns"]
    rows.append(_rate_row(BASELINE, "grounding", "any", counts["user_any"] or 0, n, baseline=True))
    rows += [
        _rate_row(BASELINE, "grounding", labels[pk][0], counts["user_grounding"].get(pk, 0), n, baseline=True)
        for pk in grounding
    ]
    return rows


# Columns of `battle_rows`.
RATER, COUNT = 6, 7


def _finite(value: float) -> float | None:
    """JSON has no NaN: None for "not measured"."""
    return None if math.isnan(value) else float(value)


def depth_bucket(depth: int) -> int:
    """The user-turn number (1 for the first message: user turns sit at even depths), the tail in one bucket."""
    return min(depth // 2 + 1, DEPTH_TAIL)


def _depth_rows(battles: np.ndarray, index: dict[int, int], names: list[str]) -> list[dict[str, Any]]:
    """Each model's win rate (wins + ties/2 over battles, Wilson 95%) by the user-turn number of the battle."""
    score: dict[tuple[int, int], float] = defaultdict(float)
    played: dict[tuple[int, int], int] = defaultdict(int)
    for a, b, outcome, _, _, depth, _, n in battles.tolist():
        bucket = depth_bucket(depth)
        half = 0.5 * n if outcome >= lb.TIE else 0.0
        for model, won in ((a, outcome == lb.A_WINS), (b, outcome == lb.B_WINS)):
            played[index[model], bucket] += n
            score[index[model], bucket] += n if won else half
    rows = []
    for (m, bucket), n in sorted(played.items(), key=lambda item: (names[item[0][0]], item[0][1])):
        lower, upper = lb.wilson(score[m, bucket], n)
        rows.append(
            {
                "model": names[m],
                "turn": f"{bucket}+" if bucket == DEPTH_TAIL else str(bucket),
                "battles": n,
                "score": score[m, bucket],
                "win_rate": score[m, bucket] / n,
                "lower": lower,
                "upper": upper,
            }
        )
    return rows


def leaderboard_compute(
    *,
    study: Study,
    include_excluded: bool = False,
    include_flagged: bool = False,
    rounds: int = ROUNDS,
    seed: int = SEED,
) -> dict[str, Any]:
    """Every figure of the leaderboard as JSON-ready data (the page, the JSON download and the cache hold it)."""
    started = timezone.now()
    all_battles = battle_rows(study, include_excluded=include_excluded)
    flagged = all_battles[:, 3] == 1
    battles = all_battles if include_flagged else all_battles[~flagged]
    model_ids = sorted(set(battles[:, 0].tolist()) | set(battles[:, 1].tolist()))
    counts = rate_counts(study, include_excluded=include_excluded)
    rated_ids = set(counts["replies"]) | set(counts["reactions"])
    config_names = dict(ModelConfig.objects.filter(pk__in=set(model_ids) | rated_ids).values_list("pk", "name"))
    names = [config_names.get(pk, "—") for pk in model_ids]
    index = {pk: i for i, pk in enumerate(model_ids)}
    model_a = np.array([index[pk] for pk in battles[:, 0].tolist()], dtype=np.int64)
    model_b = np.array([index[pk] for pk in battles[:, 1].tolist()], dtype=np.int64)
    data = lb.aggregate_weighted(model_a, model_b, battles[:, 2], battles[:, COUNT], len(model_ids))
    table = lb.ratings_table(data, rounds=rounds, seed=seed)
    # The same, resampling raters instead of battles (their votes are not independent): the honest interval
    # when a few raters cast most of the votes.
    clusters = lb.cluster_counts(data, model_a, model_b, battles[:, 2], battles[:, COUNT], battles[:, RATER])
    rater_lower, rater_upper = lb.bt_bootstrap_clustered(data, clusters, rounds=rounds, seed=seed)
    matrix_battles, matrix_rate = lb.win_matrix(data)
    labels = {pk: (name, kind) for pk, name, kind in Label.objects.values_list("pk", "name", "kind")}
    return {
        "version": VERSION,
        "study": study.slug,
        "computed_at": started.isoformat(),
        "include_excluded": include_excluded,
        "include_flagged": include_flagged,
        "rounds": rounds,
        "seed": seed,
        "battles": data.battles,
        "review_battles": int(battles[battles[:, 4] == 1, COUNT].sum()),
        "flagged_battles": int(all_battles[flagged, COUNT].sum()),
        "raters": len(clusters),
        "ratings": [
            {
                "rank": rank,
                "model": names[row.model],
                "rating": row.rating,
                "lower": row.lower,
                "upper": row.upper,
                "rater_lower": _finite(rater_lower[row.model]),
                "rater_upper": _finite(rater_upper[row.model]),
                "battles": row.battles,
                "wins": row.wins,
                "losses": row.losses,
                "ties": row.ties,
                "win_rate": row.win_rate,
            }
            for rank, row in enumerate(table, start=1)
        ],
        "pairs": [
            {
                "model_a": names[i],
                "model_b": names[j],
                "battles": int(matrix_battles[i, j]),
                "a_wins": int(wins_i),
                "b_wins": int(wins_j),
                "ties": int(ties),
                "a_win_rate": float(matrix_rate[i, j]),
            }
            for (i, j), (wins_i, wins_j, ties) in zip(data.pairs.tolist(), data.counts.tolist(), strict=True)
        ],
        "depth": _depth_rows(battles, index, names),
        "rates": _rates(counts, config_names, labels),
    }


# --- the cache and the refresh --------------------------------------------------------------------


def _key(study_id: int, include_excluded: bool, include_flagged: bool) -> str:
    return f"leaderboard:v{VERSION}:{study_id}:{int(include_excluded)}:{int(include_flagged)}"


def leaderboard_cached(study: Study, *, include_excluded: bool, include_flagged: bool) -> dict[str, Any] | None:
    """The figures of the last refresh, or None."""
    data = cache.get(_key(study.pk, include_excluded, include_flagged))
    return data if isinstance(data, dict) and data.get("version") == VERSION else None


def leaderboard_refresh(*, study_id: int, include_excluded: bool, include_flagged: bool) -> dict[str, Any] | None:
    """Compute the figures and keep them in the cache until the next refresh; None if the study is gone."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return None
    data = leaderboard_compute(study=study, include_excluded=include_excluded, include_flagged=include_flagged)
    key = _key(study_id, include_excluded, include_flagged)
    cache.set(key, data, timeout=None)
    cache.delete(f"{key}:pending")
    return data


def leaderboard_refresh_request(*, study: Study, include_excluded: bool, include_flagged: bool) -> bool:
    """Ask the worker for fresh figures after commit; True when a task was sent. `cache.add` claims the request
    atomically, so repeated clicks while one is pending send one task (a lost task is asked again after
    REFRESH_DEDUPE_SECONDS)."""
    key = _key(study.pk, include_excluded, include_flagged)
    if not cache.add(f"{key}:pending", True, timeout=REFRESH_DEDUPE_SECONDS):
        return False
    args = (study.pk, include_excluded, include_flagged)
    transaction.on_commit(lambda: task_send(REFRESH_TASK, *args, queue=REFRESH_QUEUE))
    return True


def leaderboard_refresh_pending(study: Study, *, include_excluded: bool, include_flagged: bool) -> bool:
    return bool(cache.get(f"{_key(study.pk, include_excluded, include_flagged)}:pending"))


# --- downloads ------------------------------------------------------------------------------------

CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "ratings": (
        "rank",
        "model",
        "rating",
        "lower",
        "upper",
        "rater_lower",
        "rater_upper",
        "battles",
        "wins",
        "losses",
        "ties",
        "win_rate",
    ),  # fmt: skip
    "pairs": ("model_a", "model_b", "battles", "a_wins", "b_wins", "ties", "a_win_rate"),
    "depth": ("model", "turn", "battles", "score", "win_rate", "lower", "upper"),
    "rates": ("model", "kind", "label", "hits", "turns", "per_100", "lower", "upper", "baseline"),
}


def leaderboard_csv(data: dict[str, Any], table: str) -> str:
    """One table of the figures as CSV (`CSV_COLUMNS[table]`); floats to 4 decimals, None as empty."""
    out = io.StringIO()
    writer = csv.writer(out)
    columns = CSV_COLUMNS[table]
    writer.writerow(columns)
    for row in data[table]:
        writer.writerow(["" if (v := row[c]) is None else round(v, 4) if isinstance(v, float) else v for c in columns])
    return out.getvalue()
