from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ActionRefused
from exports.build import export_build, termination_raises
from exports.selection import AGGREGATES, ARENA_HISTORIES, FILE_FORMATS, FORMATS, SEGMENT_KINDS, ExportParams


def _date(value: str) -> dt.date:
    """An argparse type: its error is reported as a usage error (exit 2), not a traceback."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _names(values: list[str] | None) -> tuple[str, ...]:
    """`--rater a --rater b` and `--rater a,b` alike."""
    return tuple(sorted({name.strip() for value in values or () for name in value.split(",") if name.strip()}))


class Command(BaseCommand):
    help = (
        "Export a study as a dataset directory: the data file (JSONL, JSONL.gz or Parquet), README.md (dataset "
        "card) and manifest.json (rows, sha256, parameters). The directory must not exist; nothing is left "
        "behind on failure. Formats: dpo, kto, reward, tree, arena, multiturn, segments (docs/exports.md)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--study", required=True, help="Slug of the study")
        parser.add_argument("--format", required=True, help=f"One of: {', '.join(FORMATS)}")
        parser.add_argument("--out", required=True, type=Path, help="Output directory to create")
        parser.add_argument("--file-format", default="jsonl", help=f"{' or '.join(FILE_FORMATS)} (default jsonl)")
        parser.add_argument("--gzip", action="store_true", help="Compress the JSONL file (.jsonl.gz)")
        parser.add_argument("--since", type=_date, help="Conversations started on or after this day (UTC)")
        parser.add_argument("--until", type=_date, help="Conversations started on or before this day (UTC)")
        parser.add_argument("--rater", action="append", help="Keep these raters' judgements (repeat or comma list)")
        parser.add_argument("--model", action="append", help="Keep rows involving only these model configs")
        parser.add_argument(
            "--min-agreement", type=float, help="Keep votes whose branch point has ≥ 2 votes and this share agreeing"
        )
        parser.add_argument("--completed-only", action="store_true", help="Only conversations ended with the survey")
        parser.add_argument(
            "--include-excluded",
            action="store_true",
            help="Keep the work of raters excluded by quality control (left out by default)",
        )
        parser.add_argument(
            "--include-ties", action="store_true", help="dpo/reward/segments: keep tie and all-bad pairs"
        )
        parser.add_argument("--gamma", type=float, default=0.9, help="multiturn: discount γ (default 0.9)")
        parser.add_argument("--grounding-weight", type=float, default=0.0, help="multiturn: reward per grounding act")
        parser.add_argument("--segment-turns", type=int, default=3, help="segments: longest segment in messages")
        parser.add_argument(
            "--segments",
            choices=SEGMENT_KINDS,
            default="sdpo",
            help="segments: sdpo (default; each segment starts at the reply the user reacted to as an error) or "
            "after-error (the vote pairs at the branch point after that reaction)",
        )
        parser.add_argument(
            "--aggregate",
            choices=AGGREGATES,
            default="none",
            help="dpo/reward: none (default; one row per vote), majority (one row per pair of replies, oriented by "
            "the most votes) or mean-margin (by the sign of the mean signed strength)",
        )
        parser.add_argument(
            "--arena-history",
            choices=ARENA_HISTORIES,
            default="own",
            help="arena: own (default; each side holds its own model's earlier replies, as Chatbot Arena) or lived "
            "(both sides the lived history, what the models were given)",
        )
        parser.add_argument("--licence", default="other", help="Licence written in the dataset card (e.g. cc-by-4.0)")
        parser.add_argument(
            "--split",
            default="",
            help="Share the conversations out among splits, one data file each, e.g. train=0.9,test=0.1 "
            "(every row of a conversation in one split)",
        )
        parser.add_argument(
            "--split-seed", type=int, default=0, help="Seed of the assignment to splits (default 0; same seed, same)"
        )
        parser.add_argument(
            "--processes",
            type=int,
            help="Processes writing the export at once (default EXPORT_PROCESSES, by CPU count; 1: this one only). "
            "The file is the same for any number.",
        )
        parser.add_argument("--quiet", action="store_true", help="No progress line")

    def handle(self, *args: Any, **options: Any) -> None:
        params = ExportParams.from_dict(
            {**options, "raters": _names(options["rater"]), "models": _names(options["model"])}
        )
        started = time.monotonic()
        show = not options["quiet"]

        def progress(done: int, total: int, rows: int) -> None:
            if show:
                rate = rows / max(time.monotonic() - started, 1e-6)
                sys.stderr.write(
                    f"\r{done}/{total} conversations ({100 * done // total}%), {rows} rows, {rate:,.0f} rows/s"
                )
                sys.stderr.flush()

        try:
            with termination_raises():
                result = export_build(
                    params=params, out=options["out"], progress=progress, processes=options["processes"]
                )
        except ActionRefused as exc:
            if show:
                sys.stderr.write("\n")
            raise CommandError(exc.message) from None
        if show:
            sys.stderr.write("\n")
        seconds = time.monotonic() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"{result.rows} {params.format} rows from {result.conversations} conversations in {seconds:.1f} s "
                f"→ {', '.join(str(path) for path in result.data_files)} (sha256 {result.sha256[:12]}…), "
                "README.md, manifest.json"
            )
        )
