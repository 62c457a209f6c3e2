"""The arena leaderboard's computation at 10k, 100k and 1M battles (issue 14).

Synthetic battles between 8 models of known Bradley-Terry strengths (evenly spread over 700 Elo points, mean
1000), every pair equally likely; ties and "both bad" drawn so that a tie is half a win in expectation (the
outcome's mean score is the model's win probability), so the fit should recover the true ratings. Battles are
made and counted in chunks of 100k, as the database hands the leaderboard counts (a GROUP BY), never a row per
battle; then the full computation: `labeling.leaderboard.ratings_table` (point fit and 1,000 bootstrap rounds)
and the win matrix.

Each size runs in a child process of its own, so its peak RSS (`resource.getrusage`, ru_maxrss) is its own.
Beside the times: the baseline of the same run, one Bradley-Terry fit on the aggregated counts, and the
computation's ratio to it (the median of 5 fits after a warm-up one); and how many of the true ratings fall
inside their 95% intervals.

Target (issue 14): 1M battles with 1,000 bootstrap rounds in under 60 s on 2 CPUs, memory flat.

`--database` times the whole page computation instead (`labeling.leaderboard_data.leaderboard_compute`: the
battle and tag queries on PostgreSQL, then the maths) on the studies `bench/export_throughput.py` generates
(export-bench-<size>: two models, one battle per vote), against the baseline of the same run: PostgreSQL's time
to count those votes (`SELECT count(*)`).

    .venv/bin/python bench/leaderboard.py                      # 10k, 100k, 1M battles, 1,000 rounds
    .venv/bin/python bench/leaderboard.py --sizes 1000000 --rounds 200
    .venv/bin/python bench/export_throughput.py --formats arena   # makes the studies (and times the arena export)
    .venv/bin/python bench/leaderboard.py --database           # then the leaderboard from those studies
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = 8
CHUNK = 100_000


def true_ratings() -> list[float]:
    return [1000 + 100 * (k - (MODELS - 1) / 2) for k in range(MODELS)]


def one(size: int, rounds: int, seed: int) -> dict[str, float]:
    """Time one size in this process; the figures as a dict."""
    import numpy as np

    from labeling import leaderboard as lb

    truth = np.array(true_ratings())
    rng = np.random.default_rng(seed)
    dense = np.zeros((MODELS, MODELS, 3), dtype=np.int64)
    generate = aggregate = 0.0
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        t0 = time.perf_counter()
        a = rng.integers(0, MODELS, n)
        b = (a + rng.integers(1, MODELS, n)) % MODELS
        p = 1 / (1 + 10 ** ((truth[b] - truth[a]) / 400))
        tie = 0.4 * np.minimum(p, 1 - p)  # P(win) = p − tie/2 ≥ 0: a tie is half a win in expectation
        u = rng.random(n)
        outcome = np.select(
            [u < p - tie / 2, u < p, u < p + tie / 2], [lb.A_WINS, lb.TIE, lb.BOTH_BAD], default=lb.B_WINS
        )
        t1 = time.perf_counter()
        chunk = lb.aggregate(a, b, outcome, MODELS)
        dense[chunk.pairs[:, 0], chunk.pairs[:, 1]] += chunk.counts
        aggregate += time.perf_counter() - t1
        generate += t1 - t0
    seen = np.argwhere(dense.sum(axis=2) > 0)
    data = lb.Aggregated(pairs=seen, counts=dense[seen[:, 0], seen[:, 1]], n_models=MODELS)

    lb.bt_ratings(data)  # warm: the first fit pays for scikit-learn's lazy set-up
    fits = []
    for _ in range(5):
        t0 = time.perf_counter()
        lb.bt_ratings(data)
        fits.append(time.perf_counter() - t0)
    one_fit = sorted(fits)[2]
    t0 = time.perf_counter()
    table = lb.ratings_table(data, rounds=rounds, seed=seed)
    lb.win_matrix(data)
    compute = time.perf_counter() - t0
    covered = int(sum(r.lower <= truth[r.model] <= r.upper for r in table))
    worst = float(max(abs(r.rating - truth[r.model]) for r in table))
    width = float(np.mean([r.upper - r.lower for r in table]))
    return {
        "battles": size,
        "generate_s": generate,
        "aggregate_s": aggregate,
        "one_fit_s": one_fit,
        "compute_s": compute,
        "total_s": aggregate + compute,
        "ratio": compute / one_fit,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "covered": covered,
        "worst_error": worst,
        "mean_width": width,
    }


DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cg_bench_export"  # bench/export_throughput.py's


def one_database(size: int, rounds: int) -> dict[str, float]:
    """The leaderboard page's computation on the export bench's study of `size` comparisons, in this process."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-key-never-used-in-production-leaderboard-7d1e")  # as common.py
    import django

    django.setup()
    from django.db import connection

    from annotate.models import Comparison, Study
    from labeling.leaderboard_data import leaderboard_compute

    study = Study.objects.get(slug=f"export-bench-{size}")
    t0 = time.perf_counter()
    votes = Comparison.objects.filter(conversation__study=study).count()
    baseline = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = leaderboard_compute(study=study, rounds=rounds)
    total = time.perf_counter() - t0
    connection.close()
    return {
        "votes": votes,
        "battles": sum(row["battles"] for row in data["pairs"]) if data.get("pairs") else votes,
        "count_s": baseline,
        "compute_s": total,
        "ratio": total / max(baseline, 1e-9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main_database(sizes: list[int], rounds: int, database_url: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": database_url}
    print(f"leaderboard from the database ({database_url}), {rounds} bootstrap rounds")
    print("| votes | count(*) (s) | leaderboard_compute (s) | ratio | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for size in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one-database", str(size), "--rounds", str(rounds)],
            env=env, check=True, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['votes']:,} | {r['count_s']:.2f} | {r['compute_s']:.2f} | {r['ratio']:.0f}× "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--database", action="store_true", help="time the page's computation on the export bench's studies"
    )
    parser.add_argument("--database-url", default=os.environ.get("BENCH_EXPORT_DATABASE_URL", DATABASE_URL))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: time this size, print JSON
    parser.add_argument("--one-database", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.rounds, args.seed)))
        return 0
    if args.one_database is not None:
        print(json.dumps(one_database(args.one_database, args.rounds)))
        return 0
    if args.database:
        return main_database(args.sizes, args.rounds, args.database_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(
        f"{MODELS} models, true ratings {true_ratings()[0]:.0f}…{true_ratings()[-1]:.0f},",
        f"{args.rounds} bootstrap rounds",
    )
    header = (
        "| battles | generate (s) | aggregate (s) | one fit (ms) | fit + bootstrap + matrix (s) | ratio to one fit "
        "| total (s) | peak RSS (MB) | true inside 95% | worst error | mean width |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--rounds", str(args.rounds), "--seed", str(args.seed)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['battles']:,} | {r['generate_s']:.2f} | {r['aggregate_s']:.2f} | {1000 * r['one_fit_s']:.1f} "
            f"| {r['compute_s']:.2f} | {r['ratio']:.0f}× | {r['total_s']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['covered']}/{MODELS} | {r['worst_error']:.1f} | {r['mean_width']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
