"""Export throughput: `dpo` and `tree` rows per second and peak RSS at 10k, 100k and 1M comparisons.

For each size N the script keeps one study `export-bench-<N>` in a PostgreSQL database of its own
(`cg_bench_export`): N/5 completed conversations of 5 user turns, each answered by 2 candidates
(two model configs), one live vote per user turn (90% "one candidate is better", 10% ties), the
chosen reply continuing the conversation, and confirmed tags on about a third of the lived
replies, a fifth of the rejected ones and a quarter of the follow-up user turns. So N comparisons
are N user turns, 2N candidates, 0.9N `dpo` rows and N/5 `tree` rows. The data is written with
set-based SQL (`INSERT … SELECT … FROM generate_series`), not the ORM, and reused by later runs
when the counts match (`--fresh` drops the database and starts again).

Each export (`export_build`, JSONL, default chunks and processes, `--processes` to change) runs in
a fresh child process, so the peak RSS it reports (`ru_maxrss` of that process and of the part
processes it forks, the larger) belongs to that one export; the time is `export_build` alone (Django is
set up before the clock starts), wall clock for rows/s, with the child's CPU time beside it (on
a shared machine the wall clock moves with the neighbours). The output goes to a temporary
directory, removed afterwards.

Baseline, same run, same study: psycopg reading every block of a `COPY (SELECT …) TO STDOUT`
that yields one line per output row, best of two runs (the first also warms the cache), with
PostgreSQL's JIT off (the export's own queries are too small to be compiled):

- dpo: the candidate votes of the study, each joined with its conversation, scenario, the user
  turn it answers, the chosen reply and the rejected sibling (the other finished, non-rewrite
  candidate), with their ids, model names, the vote's columns and the three texts. Unlike the
  export, the earlier turns of the prompt are not repeated in each line.
- tree: the conversations of the study joined with their scenario, each with its turns, votes
  and confirmed tags aggregated into arrays of row values (`array_agg(ROW(…))` over LATERAL
  subqueries), i.e. one line per conversation holding what the tree row holds.

"inputs" (printed below the table) is the time to COPY out, unjoined, every row the export reads:
the conversations with their scenario, turns, comparisons and confirmed tags of the study.

Targets (issue 4): dpo ≥ 20,000 rows/s; peak RSS flat (max − min ≤ 50 MB) from 10k to 1M.

    .venv/bin/python bench/export_throughput.py            # 10k, 100k, 1M; first run builds the data
    .venv/bin/python bench/export_throughput.py --quick    # 10k and 100k
    .venv/bin/python bench/export_throughput.py --sizes 100000 --formats dpo --profile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, ensure_database

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cg_bench_export"
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
TURNS_PER_CONVERSATION = 5  # user turns, each with one live vote
RATERS = 300
SCENARIOS = 50
GENERATE_CHUNK = 10_000  # conversations per transaction
DPO_TARGET = 20_000
RSS_SPREAD_TARGET = 50.0
SYSTEM_PROMPT = "You are a helpful assistant. Ask a short question when the request is ambiguous."
PARAMS = '{"max_new_tokens": 96, "min_new_tokens": 0, "repetition_penalty": 1.0, "temperature": 0.8, "top_p": 0.95}'
USER_TEXTS = [
    "Can you help me plan a birthday party for my daughter next Saturday?",
    "What should I pack for a week of hiking in the Alps in late September?",
    "My sourdough starter smells like nail polish remover, is that normal?",
    "I need a polite email to tell my landlord the heating is broken again.",
    "How do I explain compound interest to a twelve-year-old?",
    "Which of these two laptops is better for photo editing on a budget?",
    "She’s six, as I said — dinosaurs or pirates, what’s easier to set up?",
    "Could you shorten that to three bullet points, please?",
]
ASSISTANT_TEXTS = [
    "Happy to help! Before I suggest anything: how many guests are you expecting, and is the party indoors?",
    "Sure. Here is a simple plan:\n1. Pick a theme.\n2. Send invitations two weeks ahead.\n3. Plan games.",
    "That smell usually means the starter is hungry: the yeast produces acetone-like esters when starved.",
    "Do you mean a formal complaint or a friendly reminder? The tone changes a lot between the two.",
    "Think of it as “interest on interest”: each year you earn on what you saved and on past interest.",
    "It depends on the screen: for photo editing, colour accuracy matters more than the processor.",
    "Dinosaurs are easier: a sandbox “dig”, some plastic fossils and a volcano cake go a long way.",
    "Of course — here is the short version, with the three points that matter most for your case.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_EXPORT_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument(
        "--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comparisons per study, comma-separated"
    )
    parser.add_argument("--formats", default="dpo,tree", help="export formats, comma-separated")
    parser.add_argument("--quick", action="store_true", help="10k and 100k comparisons only")
    parser.add_argument("--fresh", action="store_true", help="drop the bench database and generate everything again")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile each export (slower; one process) and print the top functions"
    )
    parser.add_argument(
        "--processes", type=int, help="processes per export (default: the app's EXPORT_PROCESSES, by CPU count)"
    )
    # Internal: one export in this (child) process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    name = args.database_url.rsplit("/", 1)[-1]
    if name in {"commonground", "postgres"} or name.startswith(("test", "template")):
        parser.error(f"refusing to use the shared database {name!r}")
    sizes = (10_000, 100_000) if args.quick else tuple(int(s) for s in args.sizes.split(",") if s.strip())
    if not sizes or any(n <= 0 or n % TURNS_PER_CONVERSATION for n in sizes):
        parser.error(f"sizes must be positive multiples of {TURNS_PER_CONVERSATION} (comparisons per conversation)")
    args.sizes = sizes
    args.formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    return args


# --- the data ------------------------------------------------------------------------------


def slug_for(size: int) -> str:
    return f"export-bench-{size}"


def study_counts(conn: Any, study_id: int) -> tuple[int, int]:
    """(conversations, comparisons) of a study."""
    conversations, comparisons = conn.execute(
        "SELECT (SELECT count(*) FROM annotate_conversation WHERE study_id = %(s)s), "
        "(SELECT count(*) FROM annotate_comparison m JOIN annotate_conversation c ON c.id = m.conversation_id "
        " WHERE c.study_id = %(s)s)",
        {"s": study_id},
    ).fetchone()
    return int(conversations), int(comparisons)


def study_delete(conn: Any, study_id: int) -> None:
    """Remove a study and everything in it with a few set-based DELETEs (the ORM would load it all)."""
    in_study = "SELECT id FROM annotate_conversation WHERE study_id = %(s)s"
    turns = f"SELECT id FROM annotate_turn WHERE conversation_id IN ({in_study})"
    with conn.transaction():
        for statement in (
            f"DELETE FROM labeling_tag WHERE turn_id IN ({turns})",
            f"DELETE FROM labeling_reviewassignment WHERE conversation_id IN ({in_study})",
            f"DELETE FROM annotate_comparison WHERE conversation_id IN ({in_study})",
            "UPDATE annotate_conversation SET head_id = NULL WHERE study_id = %(s)s",
            f"DELETE FROM annotate_turn WHERE conversation_id IN ({in_study})",
            "DELETE FROM annotate_conversation WHERE study_id = %(s)s",
            "DELETE FROM annotate_scenario WHERE study_id = %(s)s",
            "DELETE FROM annotate_study_model_pool WHERE study_id = %(s)s",
            "DELETE FROM annotate_study WHERE id = %(s)s",
        ):
            conn.execute(statement, {"s": study_id})


def shared_rows(conn: Any) -> dict[str, Any]:
    """Raters, model configs and the default taxonomy's labels, shared by every bench study."""
    from labeling.services import default_taxonomy
    from workers.models import ModelConfig

    taxonomy = default_taxonomy()
    configs = []
    for name in ("xbench-plain", "xbench-clarify"):
        config, _ = ModelConfig.objects.get_or_create(
            name=name, defaults={"model_path": "/none", "system_prompt": SYSTEM_PROMPT}
        )
        configs.append(config)
    conn.execute(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff, is_active,"
        " date_joined) SELECT '!', false, 'xbench-rater-' || lpad(g::text, 3, '0'), '', '', '', false, true, now()"
        " FROM generate_series(1, %s) g ON CONFLICT (username) DO NOTHING",
        [RATERS],
    )
    raters = [r for (r,) in conn.execute("SELECT id FROM auth_user WHERE username LIKE 'xbench-rater-%' ORDER BY id")]
    labels = list(taxonomy.labels.all())
    return {
        "taxonomy": taxonomy,
        "configs": configs,
        "raters": raters[:RATERS],
        "assistant_labels": [lab.pk for lab in labels if lab.applies_to("assistant")],
        # Feedback on the previous reply, linked to it as the rating page does.
        "user_labels": [lab.pk for lab in labels if lab.applies_to("user") and lab.links_turn],
    }


def study_create(size: int, shared: dict[str, Any]) -> int:
    from annotate.models import Scenario, Study

    study = Study.objects.create(
        name=f"Export bench, {size:,} comparisons", slug=slug_for(size), taxonomy=shared["taxonomy"]
    )
    study.model_pool.set(shared["configs"])
    Scenario.objects.bulk_create(
        Scenario(
            study=study,
            external_id=f"s{i:03d}",
            title=f"Scenario {i}",
            brief=USER_TEXTS[i % len(USER_TEXTS)],
            hidden_intent="The party is for a six-year-old who loves dinosaurs.",
        )  # fmt: skip
        for i in range(SCENARIOS)
    )
    return int(study.pk)


def ids_reserve(conn: Any, table: str, count: int) -> int:
    """The first of `count` consecutive ids taken from the table's identity sequence."""
    sequence = f"pg_get_serial_sequence('{table}', 'id')"
    first = int(conn.execute(f"SELECT nextval({sequence})").fetchone()[0])
    conn.execute(f"SELECT setval({sequence}, %s)", [first + count - 1])
    return first


# Ids are reserved up front and computed, not returned: conversation i is conv0 + i, its user turn k is
# turn0 + 15 i + 3 k and that turn's candidates follow it (positions 0 and 1). r(i, k) is a
# stable pseudo-random number in 0..1023 that decides the vote and varies lengths and tags.
R = "(hashint8((%(conv0)s + i) * 8 + k) & 1023)"
R_PREV = "(hashint8((%(conv0)s + i) * 8 + k - 1) & 1023)"
TIE = "(mod({r}, 10) = 0)"
POS = "(CASE WHEN mod({r}, 10) = 0 THEN 0 ELSE ({r} >> 4) & 1 END)"  # a tie continues from candidate A
USER_TURN = "(%(turn0)s + i * 15 + k * 3)"
CONTINUED = f"({USER_TURN} + 1 + {POS.format(r=R)})"
PREV_CONTINUED = f"({USER_TURN} - 2 + {POS.format(r=R_PREV)})"
RATER = "(%(raters)s::int[])[1 + mod(i, %(n_raters)s)]"
STARTED = "(timestamptz '2026-01-05 09:00:00+00' + (%(conv0)s + i) * interval '41 seconds')"
TURN_AT = f"({STARTED} + k * interval '45 seconds')"

CONVERSATIONS_SQL = f"""
INSERT INTO annotate_conversation (id, uuid, study_id, scenario_id, rater_id, status, head_id, outcome_goal,
    outcome_understanding, outcome_comment, started_at, ended_at)
SELECT %(conv0)s + i, md5('conversation ' || (%(conv0)s + i))::uuid, %(study)s,
    (%(scenarios)s::bigint[])[1 + mod(i, %(n_scenarios)s)], {RATER}, 'completed',
    {CONTINUED}, (ARRAY['yes', 'partly', 'no', ''])[1 + mod({R}, 4)], 1 + mod({R} >> 2, 5), '',
    {STARTED}, {TURN_AT} + interval '40 seconds'
FROM generate_series(%(lo)s, %(hi)s - 1) AS i, (SELECT 4 AS k) AS last
"""

TURNS_SQL = f"""
INSERT INTO annotate_turn (id, uuid, conversation_id, parent_id, role, depth, position, text, status, error,
    model_config_id, params, system_prompt, seed, is_rewrite, is_attention_check, identity_leak, note, client_key,
    attempt, claimed_by, prompt_tokens, completion_tokens, created_at, started_at, first_token_at, heartbeat_at,
    finished_at, rewrite_of_id)
SELECT {USER_TURN} + j, md5('turn ' || ({USER_TURN} + j))::uuid, %(conv0)s + i,
    CASE WHEN j > 0 THEN {USER_TURN} WHEN k > 0 THEN {PREV_CONTINUED} END,
    CASE WHEN j = 0 THEN 'user' ELSE 'assistant' END,
    2 * k + least(j, 1), greatest(j - 1, 0),
    CASE WHEN j = 0
        THEN left((%(user_texts)s::text[])[1 + mod(h, 8)] || ' ' || md5(h::text) || ' ' || md5(k::text),
            60 + mod(h, 61))
        ELSE left((%(assistant_texts)s::text[])[1 + mod(h, 8)] || ' ' || md5(h::text) || ' '
            || (%(assistant_texts)s::text[])[1 + mod(h >> 3, 8)] || ' ' || md5((h + 1)::text)
            || (%(assistant_texts)s::text[])[1 + mod(h >> 6, 8)], 150 + mod(h, 151))
    END,
    'done', '',
    (%(configs)s::bigint[])[nullif(j, 0)],
    CASE WHEN j = 0 THEN '{{}}'::jsonb ELSE %(params)s::jsonb END,
    CASE WHEN j = 0 THEN '' ELSE %(system)s END,
    CASE WHEN j > 0 THEN h END,
    false, false, false, '', NULL, least(j, 1), CASE WHEN j = 0 THEN '' ELSE 'worker-1' END,
    CASE WHEN j > 0 THEN 120 + 70 * k END, CASE WHEN j > 0 THEN 40 + mod(h, 50) END,
    {TURN_AT} + j * interval '1 millisecond',
    CASE WHEN j > 0 THEN {TURN_AT} + interval '20 milliseconds' END,
    CASE WHEN j > 0 THEN {TURN_AT} + interval '350 milliseconds' + mod(h, 200) * interval '1 millisecond' END,
    CASE WHEN j > 0 THEN {TURN_AT} + interval '3 seconds' + mod(h, 3000) * interval '1 millisecond' END,
    CASE WHEN j > 0 THEN {TURN_AT} + interval '3 seconds' + mod(h, 3000) * interval '1 millisecond' END,
    NULL
FROM generate_series(%(lo)s, %(hi)s - 1) AS i, generate_series(0, 4) AS k, generate_series(0, 2) AS j,
    LATERAL (SELECT hashint8({USER_TURN} + j) & 65535 AS h) AS hashed
"""

COMPARISONS_SQL = f"""
INSERT INTO annotate_comparison (id, conversation_id, parent_id, task, choice, chosen_id, continued_from_id,
    strength, reason, decision_ms, rater_id, idempotency_key, created_at)
SELECT %(cmp0)s + i * 5 + k, %(conv0)s + i, {USER_TURN}, 'live',
    CASE WHEN {TIE.format(r=R)} THEN 'tie' ELSE 'candidate' END,
    CASE WHEN NOT {TIE.format(r=R)} THEN {CONTINUED} END,
    {CONTINUED},
    CASE WHEN {TIE.format(r=R)} THEN '' WHEN mod({R}, 4) = 1 THEN 'slight' ELSE 'clear' END,
    CASE WHEN mod({R}, 16) = 3 THEN 'B answers the question; A asks one it does not need.' ELSE '' END,
    800 + {R} * 9, {RATER}, gen_random_uuid(), {TURN_AT} + interval '30 seconds'
FROM generate_series(%(lo)s, %(hi)s - 1) AS i, generate_series(0, 4) AS k
"""

TAGS_SQL = f"""
INSERT INTO labeling_tag (turn_id, label_id, rater_id, task, span_start, span_end, linked_turn_id, source, status,
    suggestion_note, created_at, decided_at)
SELECT turn_id, label_id, {RATER}, 'live', NULL, NULL, linked, 'rater', 'confirmed', '',
    {TURN_AT} + interval '25 seconds', NULL
FROM generate_series(%(lo)s, %(hi)s - 1) AS i, generate_series(0, 4) AS k,
LATERAL (
    SELECT {CONTINUED} AS turn_id, (%(assistant_labels)s::bigint[])[1 + mod({R} >> 2, %(n_assistant)s)] AS label_id,
        NULL::bigint AS linked
    WHERE mod({R}, 3) = 0
    UNION ALL
    SELECT {USER_TURN} + 2 - {POS.format(r=R)},
        (%(assistant_labels)s::bigint[])[1 + mod({R} >> 3, %(n_assistant)s)], NULL
    WHERE mod({R} >> 5, 5) = 0 AND NOT {TIE.format(r=R)}
    UNION ALL
    SELECT {USER_TURN}, (%(user_labels)s::bigint[])[1 + mod({R} >> 2, %(n_user)s)], {PREV_CONTINUED}
    WHERE k > 0 AND mod({R} >> 7, 4) = 0
) AS tags
"""


def study_generate(conn: Any, study_id: int, conversations: int, shared: dict[str, Any]) -> None:
    """Fill an empty study, GENERATE_CHUNK conversations per transaction."""
    conv0 = ids_reserve(conn, "annotate_conversation", conversations)
    turn0 = ids_reserve(conn, "annotate_turn", conversations * TURNS_PER_CONVERSATION * 3)
    cmp0 = ids_reserve(conn, "annotate_comparison", conversations * TURNS_PER_CONVERSATION)
    scenarios = [
        s for (s,) in conn.execute("SELECT id FROM annotate_scenario WHERE study_id = %s ORDER BY id", [study_id])
    ]
    params: dict[str, Any] = {
        "study": study_id, "conv0": conv0, "turn0": turn0, "cmp0": cmp0, "scenarios": scenarios,
        "n_scenarios": len(scenarios), "raters": shared["raters"], "n_raters": len(shared["raters"]),
        "configs": [c.pk for c in shared["configs"]], "params": PARAMS, "system": SYSTEM_PROMPT,
        "user_texts": USER_TEXTS, "assistant_texts": ASSISTANT_TEXTS,
        "assistant_labels": shared["assistant_labels"], "n_assistant": len(shared["assistant_labels"]),
        "user_labels": shared["user_labels"], "n_user": len(shared["user_labels"]),
    }  # fmt: skip
    for lo in range(0, conversations, GENERATE_CHUNK):
        chunk = {**params, "lo": lo, "hi": min(lo + GENERATE_CHUNK, conversations)}
        with conn.transaction():
            # The deferred foreign-key checks would double the time; study_check() verifies more.
            conn.execute("SET LOCAL session_replication_role = replica")
            for statement in (CONVERSATIONS_SQL, TURNS_SQL, COMPARISONS_SQL, TAGS_SQL):
                conn.execute(statement, chunk)
        print(f"  {chunk['hi']:,} / {conversations:,} conversations", end="\r", flush=True)
    study_check(conn, study_id)


CHECKS = {
    "turns whose parent is not a turn of the same conversation": """
        SELECT count(*) FROM annotate_turn t JOIN annotate_conversation c ON c.id = t.conversation_id
        LEFT JOIN annotate_turn p ON p.id = t.parent_id AND p.conversation_id = t.conversation_id
        WHERE c.study_id = %(s)s AND t.parent_id IS NOT NULL AND p.id IS NULL""",
    "votes whose parent, chosen or continued turn is missing or elsewhere": """
        SELECT count(*) FROM annotate_comparison m JOIN annotate_conversation c ON c.id = m.conversation_id
        LEFT JOIN annotate_turn u ON u.id = m.parent_id AND u.conversation_id = c.id AND u.role = 'user'
        LEFT JOIN annotate_turn ch ON ch.id = m.chosen_id AND ch.parent_id = m.parent_id
        LEFT JOIN annotate_turn co ON co.id = m.continued_from_id AND co.parent_id = m.parent_id
        WHERE c.study_id = %(s)s AND (u.id IS NULL OR co.id IS NULL OR (m.chosen_id IS NOT NULL AND ch.id IS NULL))""",
    "conversations whose head is not a reply they continued from": """
        SELECT count(*) FROM annotate_conversation c
        LEFT JOIN annotate_comparison m ON m.continued_from_id = c.head_id AND m.conversation_id = c.id
        WHERE c.study_id = %(s)s AND m.id IS NULL""",
    "tags on a missing turn, label or rater": """
        SELECT count(*) FROM labeling_tag g JOIN annotate_turn t ON t.id = g.turn_id
        JOIN annotate_conversation c ON c.id = t.conversation_id
        LEFT JOIN labeling_label l ON l.id = g.label_id LEFT JOIN auth_user r ON r.id = g.rater_id
        LEFT JOIN annotate_turn k ON k.id = g.linked_turn_id
        WHERE c.study_id = %(s)s
            AND (l.id IS NULL OR r.id IS NULL OR (g.linked_turn_id IS NOT NULL AND k.id IS NULL))""",
}


def study_check(conn: Any, study_id: int) -> None:
    """The references the disabled foreign keys would have checked, and a little more."""
    for what, query in CHECKS.items():
        bad = conn.execute(query, {"s": study_id}).fetchone()[0]
        if bad:
            raise RuntimeError(f"generated data is wrong: {bad} {what}")


def studies_ensure(database_url: str, sizes: tuple[int, ...]) -> dict[int, int]:
    """Study id per size, generating the studies that are missing or incomplete."""
    import psycopg

    from annotate.models import Study

    found: dict[int, int] = {}
    generated = False
    with psycopg.connect(database_url, autocommit=True) as conn:
        shared = shared_rows(conn)
        for size in sizes:
            conversations = size // TURNS_PER_CONVERSATION
            existing = Study.objects.filter(slug=slug_for(size)).values_list("pk", flat=True).first()
            if existing is not None and study_counts(conn, existing) == (conversations, size):
                print(f"reusing study {slug_for(size)} ({conversations:,} conversations, {size:,} comparisons)")
                found[size] = existing
                continue
            if existing is not None:
                print(f"removing incomplete study {slug_for(size)}")
                study_delete(conn, existing)
            started = time.perf_counter()
            found[size] = study_create(size, shared)
            study_generate(conn, found[size], conversations, shared)
            print(f"generated {slug_for(size)}: {conversations:,} conversations, {size:,} comparisons "
                  f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
            generated = True
        if generated:
            started = time.perf_counter()
            for table in ("annotate_conversation", "annotate_turn", "annotate_comparison", "labeling_tag"):
                conn.execute(f"VACUUM (ANALYZE) {table}")  # hint bits and statistics, before anything is timed
            print(f"VACUUM ANALYZE in {time.perf_counter() - started:.1f} s")
    return found


def database_drop(database_url: str) -> None:
    import psycopg
    from psycopg import sql

    name = database_url.rsplit("/", 1)[-1]
    maintenance = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"dropped database {name}")


# --- the baseline --------------------------------------------------------------------------

COPY_DPO = """
SELECT m.id, m.conversation_id, sc.external_id, m.task, m.rater_id, m.choice, m.strength, u.id, u.text,
    ch.id, ch.text, chm.name, rj.id, rj.text, rjm.name
FROM annotate_comparison m
JOIN annotate_conversation c ON c.id = m.conversation_id
JOIN annotate_scenario sc ON sc.id = c.scenario_id
JOIN annotate_turn u ON u.id = m.parent_id
JOIN annotate_turn ch ON ch.id = m.chosen_id
JOIN annotate_turn rj ON rj.parent_id = m.parent_id AND rj.id <> m.chosen_id AND rj.role = 'assistant'
    AND rj.status = 'done' AND NOT rj.is_rewrite
LEFT JOIN workers_modelconfig chm ON chm.id = ch.model_config_id
LEFT JOIN workers_modelconfig rjm ON rjm.id = rj.model_config_id
WHERE c.study_id = {study} AND m.choice = 'candidate'
"""

COPY_TREE = """
SELECT c.id, c.rater_id, c.status, c.head_id, c.outcome_goal, c.outcome_understanding, c.outcome_comment,
    c.started_at, c.ended_at, sc.external_id, sc.title, sc.brief, sc.hidden_intent, t.turns, v.votes, g.tags
FROM annotate_conversation c
JOIN annotate_scenario sc ON sc.id = c.scenario_id
CROSS JOIN LATERAL (
    SELECT array_agg(ROW(t.id, t.parent_id, t.role, t.depth, t.position, t.text, t.status, t.error, t.model_config_id,
        t.params, t.system_prompt, t.seed, t.is_rewrite, t.rewrite_of_id, t.prompt_tokens, t.completion_tokens,
        t.created_at, t.started_at, t.first_token_at, t.finished_at) ORDER BY t.depth, t.position, t.id) AS turns
    FROM annotate_turn t WHERE t.conversation_id = c.id) t
CROSS JOIN LATERAL (
    SELECT array_agg(ROW(m.id, m.parent_id, m.task, m.choice, m.chosen_id, m.continued_from_id, m.strength, m.reason,
        m.decision_ms, m.rater_id, m.created_at) ORDER BY m.parent_id, m.id) AS votes
    FROM annotate_comparison m WHERE m.conversation_id = c.id) v
CROSS JOIN LATERAL (
    SELECT array_agg(ROW(g.turn_id, g.label_id, g.rater_id, g.task, g.source, g.span_start, g.span_end,
        g.linked_turn_id) ORDER BY g.turn_id, g.id) AS tags
    FROM labeling_tag g JOIN annotate_turn gt ON gt.id = g.turn_id
    WHERE gt.conversation_id = c.id AND g.status = 'confirmed') g
WHERE c.study_id = {study}
"""

COPY_INPUTS = [
    """SELECT c.id, sc.external_id, sc.title, sc.brief, sc.hidden_intent, c.rater_id, c.status, c.head_id,
        c.outcome_goal, c.outcome_understanding, c.outcome_comment, c.started_at, c.ended_at
    FROM annotate_conversation c JOIN annotate_scenario sc ON sc.id = c.scenario_id WHERE c.study_id = {study}""",
    """SELECT t.conversation_id, t.id, t.parent_id, t.role, t.depth, t.position, t.text, t.status, t.error,
        t.model_config_id, t.params, t.system_prompt, t.seed, t.is_rewrite, t.rewrite_of_id, t.prompt_tokens,
        t.completion_tokens, t.created_at, t.started_at, t.first_token_at, t.finished_at
    FROM annotate_turn t JOIN annotate_conversation c ON c.id = t.conversation_id WHERE c.study_id = {study}""",
    """SELECT m.conversation_id, m.id, m.parent_id, m.task, m.choice, m.chosen_id, m.continued_from_id, m.strength,
        m.reason, m.decision_ms, m.rater_id, m.created_at
    FROM annotate_comparison m JOIN annotate_conversation c ON c.id = m.conversation_id WHERE c.study_id = {study}""",
    """SELECT t.conversation_id, g.turn_id, g.label_id, g.rater_id, g.task, g.source, g.span_start, g.span_end,
        g.linked_turn_id
    FROM labeling_tag g JOIN annotate_turn t ON t.id = g.turn_id
    JOIN annotate_conversation c ON c.id = t.conversation_id
    WHERE c.study_id = {study} AND g.status = 'confirmed'""",
]


@dataclass
class Copied:
    lines: int
    bytes: int
    seconds: float


def copy_out(database_url: str, queries: list[str], study_id: int) -> Copied:
    """Read every block of `COPY (query) TO STDOUT` for each query; best of two passes."""
    import psycopg

    best: Copied | None = None
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The export's small per-chunk queries never reach the JIT's cost threshold; these big ones
        # would, and compiling them costs up to a second on this machine: not what we compare.
        conn.execute("SET jit = off")
        for _ in range(2):
            lines = size = 0
            started = time.perf_counter()
            with conn.cursor() as cur:
                for query in queries:
                    with cur.copy(f"COPY ({query.format(study=int(study_id))}) TO STDOUT") as copy:
                        for block in copy:
                            lines += bytes(block).count(b"\n")
                            size += len(block)
            elapsed = time.perf_counter() - started
            if best is None or elapsed < best.seconds:
                best = Copied(lines, size, elapsed)
    assert best is not None
    return best


# --- one export, in a child process --------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    """Run one export and print its figures as one JSON line (the last line of stdout)."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    from exports.build import chunk_for, export_build
    from exports.selection import ExportParams

    params = ExportParams(study=args.study, format=args.format)
    processes = 1 if args.profile_out else args.processes or settings.EXPORT_PROCESSES
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_cpu = _children_cpu()
    profiler = None
    if args.profile_out:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started, cpu = time.perf_counter(), time.process_time()
    result = export_build(params=params, out=Path(args.out), processes=processes)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu + _children_cpu() - children_cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile_out)
    # The largest of the export's processes: this one, or one of the parts it forked.
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    figures = {"rows": result.rows, "conversations": result.conversations, "seconds": elapsed, "cpu": cpu,
               "peak_mb": peak, "before_mb": before, "bytes": result.data_file.stat().st_size,
               "processes": processes, "chunk": chunk_for(result.conversations)}  # fmt: skip
    print(json.dumps(figures))
    return 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def export_in_child(
    database_url: str, slug: str, fmt: str, work: Path, profile_out: Path | None, processes: int | None
) -> dict[str, Any]:
    out = work / f"{slug}-{fmt}"
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "config.settings"}
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--database-url", database_url,
            "--study", slug, "--format", fmt, "--out", str(out)]  # fmt: skip
    if profile_out is not None:
        argv += ["--profile-out", str(profile_out)]
    if processes is not None:
        argv += ["--processes", str(processes)]
    try:
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"export {slug} {fmt} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def print_profile(path: Path, title: str) -> None:
    import pstats

    print(f"\n--- profile: {title} (top 25 by own time) ---")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(25)
    print(f"--- profile: {title} (top 25 by cumulative time) ---")
    stats.sort_stats("cumulative").print_stats(25)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if args.child:
        return child_main(args)
    sys.path.insert(0, str(ROOT))
    if args.fresh:
        database_drop(args.database_url)
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    studies = studies_ensure(args.database_url, args.sizes)
    load = os.getloadavg()[0]

    results: list[dict[str, Any]] = []
    inputs: dict[int, Copied] = {}
    work = Path(tempfile.mkdtemp(prefix="export_throughput-"))
    try:
        for size in args.sizes:
            inputs[size] = copy_out(args.database_url, COPY_INPUTS, studies[size])
            for fmt in args.formats:
                query = {"dpo": COPY_DPO, "tree": COPY_TREE}.get(fmt)
                copied = copy_out(args.database_url, [query], studies[size]) if query else None
                profile_out = work / f"{size}-{fmt}.prof" if args.profile else None
                ours = export_in_child(args.database_url, slug_for(size), fmt, work, profile_out, args.processes)
                if copied is not None and copied.lines != ours["rows"]:
                    print(f"warning: COPY gave {copied.lines:,} lines, the {fmt} export {ours['rows']:,} rows")
                results.append({"size": size, "format": fmt, **ours, "copy": copied})
                rate = ours["rows"] / ours["seconds"]
                print(f"{size:>9,} {fmt:5} {ours['rows']:>9,} rows in {ours['seconds']:7.1f} s = {rate:9,.0f} rows/s,"
                      f" peak RSS {ours['peak_mb']:.0f} MB")  # fmt: skip
                if profile_out is not None:
                    print_profile(profile_out, f"{size:,} comparisons, {fmt}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    profiled = " (PROFILED: times include cProfile overhead)" if args.profile else ""
    processes = sorted({r["processes"] for r in results})
    chunks = ", ".join(f"{r['chunk']} at {r['size']:,}" for r in results if r["format"] == results[0]["format"])
    print(f"\nexport_throughput: JSONL, chunks of {chunks} conversations, {'/'.join(map(str, processes))} "
          f"process(es) per export, {os.cpu_count()} CPUs, PostgreSQL, load average {load:.2f} at start"
          f"{profiled}\n")  # fmt: skip
    header = (f"{'comparisons':>11}  {'format':6} {'rows':>9} {'seconds':>8} {'CPU s':>7} {'rows/s':>9} "
              f"{'RSS before':>10} {'peak RSS':>8} {'COPY rows/s':>11} {'ours/COPY':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in results:
        rate = r["rows"] / r["seconds"]
        copied: Copied | None = r["copy"]
        copy_rate = copied.lines / copied.seconds if copied else float("nan")
        print(f"{r['size']:>11,}  {r['format']:6} {r['rows']:>9,} {r['seconds']:>8.2f} {r['cpu']:>7.2f} "
              f"{rate:>9,.0f} {r['before_mb']:>7.0f} MB {r['peak_mb']:>5.0f} MB {copy_rate:>11,.0f} "
              f"{rate / copy_rate:>9.3f}")  # fmt: skip
    print()
    for size, copied in inputs.items():
        print(f"inputs, {size:>9,} comparisons: COPY of every row the export reads, {copied.lines:,} lines, "
              f"{copied.bytes / 1e6:,.0f} MB in {copied.seconds:.2f} s")  # fmt: skip
    for r in results:
        if r["copy"] is not None:
            c: Copied = r["copy"]
            print(f"COPY {r['format']:4} {r['size']:>9,}: {c.lines:,} lines, {c.bytes / 1e6:,.0f} MB "
                  f"in {c.seconds:.2f} s; export file {r['bytes'] / 1e6:,.0f} MB")  # fmt: skip

    print()
    dpo = [r for r in results if r["format"] == "dpo"]
    if dpo:
        slowest = min(r["rows"] / r["seconds"] for r in dpo)
        verdict = "met" if slowest >= DPO_TARGET else "NOT met"
        print(f"target dpo >= {DPO_TARGET:,} rows/s: {verdict} (slowest size: {slowest:,.0f} rows/s)")
    for fmt in args.formats:
        peaks = [r["peak_mb"] for r in results if r["format"] == fmt]
        if len(peaks) > 1:
            spread = max(peaks) - min(peaks)
            verdict = "met" if spread <= RSS_SPREAD_TARGET else "NOT met"
            print(f"target {fmt} peak RSS flat (max - min <= {RSS_SPREAD_TARGET:.0f} MB): {verdict} "
                  f"({min(peaks):.0f}-{max(peaks):.0f} MB, spread {spread:.0f} MB)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
