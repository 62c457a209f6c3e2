"""The arena leaderboard page and its downloads, for researchers (the study dashboard's permission): Bradley-Terry
ratings, pair win rates, per-turn win rates and grounding/feedback rates, from the cached figures
(`labeling.leaderboard_data`)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRefresh

from annotate.models import Comparison, Study
from core.http import AppRequest
from labeling import leaderboard_data as data
from labeling.views.access import researcher_only

# With nothing cached, a study with fewer votes than this is computed on the request (a second or two: the
# bootstrap dominates); a larger one waits for the worker while the page polls.
INLINE_MAX_VOTES = 20_000

# Chart geometry, in SVG user units (the SVG scales to the page width).
WIDTH, LABEL_WIDTH, ROW, TOP = 640, 200, 26, 24


def _options(query: Any) -> tuple[bool, bool]:
    return query.get("include_excluded") == "1", query.get("include_flagged") == "1"


def _page_url(slug: str, include_excluded: bool, include_flagged: bool) -> str:
    query = {k: "1" for k, on in (("include_excluded", include_excluded), ("include_flagged", include_flagged)) if on}
    url = reverse("labeling:leaderboard", args=[slug])
    return f"{url}?{urlencode(query)}" if query else url


def _scale(lo: float, hi: float) -> tuple[float, float]:
    pad = max((hi - lo) * 0.08, 10.0)
    return lo - pad, hi + pad


def rating_chart(ratings: list[dict[str, Any]]) -> dict[str, Any]:
    """Dots with 95% whiskers on a shared Elo axis, one row per model, best first."""
    if not ratings:
        return {"rows": [], "height": 0}
    lo, hi = _scale(min(r["lower"] for r in ratings), max(r["upper"] for r in ratings))
    span = WIDTH - LABEL_WIDTH - 70

    def x(value: float) -> float:
        return LABEL_WIDTH + span * (value - lo) / (hi - lo)

    rows = [
        {**r, "y": TOP + i * ROW + ROW / 2, "x": x(r["rating"]), "x_lo": x(r["lower"]), "x_hi": x(r["upper"])}
        for i, r in enumerate(ratings)
    ]
    ticks = [{"x": x(v), "label": v} for v in range(int(math.ceil(lo / 50) * 50), int(hi) + 1, 50)]
    step = max(1, len(ticks) // 8)
    return {"rows": rows, "ticks": ticks[::step], "height": TOP + len(rows) * ROW + 8, "width": WIDTH}


def rate_chart(rates: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars with Wilson whiskers for the grounding-act rate (any act) per model and the users' own rate."""
    shown = [r for r in rates if r["kind"] == "grounding" and r["label"] == "any" and r["per_100"] is not None]
    top = max([r["upper"] or 0.0 for r in shown] + [1.0])
    span = WIDTH - LABEL_WIDTH - 70
    rows = [
        {
            **r,
            "y": TOP + i * ROW,
            "width": span * r["per_100"] / top,
            "x_lo": LABEL_WIDTH + span * (r["lower"] or 0.0) / top,
            "x_hi": LABEL_WIDTH + span * (r["upper"] or 0.0) / top,
            "text_y": TOP + i * ROW + ROW * 0.55,
            "mid_y": TOP + i * ROW + (ROW - 6) / 2,
        }
        for i, r in enumerate(shown)
    ]
    return {"rows": rows, "height": TOP + len(rows) * ROW + 8, "width": WIDTH}


HEAT_DARKEST = 65  # lightness (%) of a 0% or 100% cell


def heat_map(figures: dict[str, Any]) -> dict[str, Any]:
    """The pair win-rate matrix as table rows (row model's wins + ties/2 against the column model), in rating
    order, with a cell colour from the rate."""
    order = [r["model"] for r in figures["ratings"]]
    cells: dict[tuple[str, str], tuple[float, int]] = {}
    for p in figures["pairs"]:
        cells[p["model_a"], p["model_b"]] = (p["a_win_rate"], p["battles"])
        cells[p["model_b"], p["model_a"]] = (1 - p["a_win_rate"], p["battles"])
    rows = []
    for a in order:
        row = []
        for b in order:
            rate, n = cells.get((a, b), (None, 0))
            # Blue above one half, red below; white at one half. Never darker than HEAT_DARKEST: the cell's dark text
            # keeps a 4.5:1 contrast at 0% and 100% too (WCAG AA; 55% gave 4.48).
            hue = 210 if rate is not None and rate >= 0.5 else 0
            light = 100 - (100 - HEAT_DARKEST) * abs(rate - 0.5) * 2 if rate is not None else 100
            row.append({"rate": rate, "battles": n, "colour": f"hsl({hue} 70% {light:.0f}%)", "self": a == b})
        rows.append({"model": a, "cells": row})
    return {"models": order, "rows": rows}


def depth_table(figures: dict[str, Any]) -> dict[str, Any]:
    """Win rate by user-turn number: a column per turn bucket, a row per model (rating order)."""
    turns = sorted({r["turn"] for r in figures["depth"]}, key=lambda t: int(t.rstrip("+")))
    found = {(r["model"], r["turn"]): r for r in figures["depth"]}
    order = [r["model"] for r in figures["ratings"]]
    return {"turns": turns, "rows": [{"model": m, "cells": [found.get((m, t)) for t in turns]} for m in order]}


@require_GET
@login_required
def leaderboard(request: AppRequest, slug: str) -> HttpResponse:
    """The leaderboard from the cached figures; `?format=json` or `?format=csv&table=…` downloads them. With
    nothing cached yet, a small study is computed now, a larger one shows "Computing…" and polls."""
    if (refused := researcher_only(request, "The leaderboard")) is not None:
        return refused
    study = get_object_or_404(Study, slug=slug)
    include_excluded, include_flagged = _options(request.GET)
    options = {"include_excluded": include_excluded, "include_flagged": include_flagged}
    figures = data.leaderboard_cached(study, **options)
    small = figures is None and Comparison.objects.filter(conversation__study=study).count() < INLINE_MAX_VOTES
    if small and not request.htmx:
        figures = data.leaderboard_refresh(study_id=study.pk, **options)
    if figures is None:
        data.leaderboard_refresh_request(study=study, **options)
        if request.htmx:
            return HttpResponse(status=204)  # still computing: the page polls again
        return render(request, "labeling/leaderboard.html", {"study": study, "f": None, **options})
    if request.htmx:
        return HttpResponseClientRefresh()
    return _answer(request, study, figures, options)


def _answer(request: HttpRequest, study: Study, figures: dict[str, Any], options: dict[str, bool]) -> HttpResponse:
    answer_format = request.GET.get("format", "")
    if answer_format == "json":
        response: HttpResponse = JsonResponse(figures, json_dumps_params={"indent": 1})
        response["Content-Disposition"] = f'attachment; filename="{study.slug}-leaderboard.json"'
        return response
    if answer_format == "csv":
        table = request.GET.get("table", "ratings")
        if table not in data.TABLES:
            return HttpResponse(f"table must be one of {', '.join(data.TABLES)}", status=400)
        response = HttpResponse(data.leaderboard_csv(figures, table), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{study.slug}-leaderboard-{table}.csv"'
        return response
    query = urlencode({k: "1" for k, on in options.items() if on})
    context = {
        "study": study,
        "f": figures,
        **options,
        "query": f"&{query}" if query else "",
        "as_of": datetime.fromisoformat(figures["computed_at"]),
        "pending": data.leaderboard_refresh_pending(study, **options),
        "ratings": rating_chart(figures["ratings"]),
        "rates": rate_chart(figures["rates"]),
        "heat": heat_map(figures),
        "depth": depth_table(figures),
    }
    return render(request, "labeling/leaderboard.html", context)


@require_POST
@login_required
def leaderboard_refresh(request: HttpRequest, slug: str) -> HttpResponse:
    """ "Refresh now": ask the worker for fresh figures (one task while one is pending) and go back to the page."""
    if (refused := researcher_only(request, "The leaderboard")) is not None:
        return refused
    study = get_object_or_404(Study, slug=slug)
    include_excluded, include_flagged = _options(request.POST)
    data.leaderboard_refresh_request(study=study, include_excluded=include_excluded, include_flagged=include_flagged)
    return redirect(_page_url(study.slug, include_excluded, include_flagged))
