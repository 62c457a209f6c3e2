"""The study dashboard, for researchers (`annotate.view_study_dashboard`): agreement, activity, suggestions
and grounding rates."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRefresh

from annotate.models import Conversation, Study
from core.http import AppRequest
from labeling import services
from labeling.dashboard import GroundingRate, dashboard_from_json, dashboard_snapshot, labels_by_kind
from labeling.views.access import researcher_only

# Geometry of the bar chart, in SVG user units (the SVG scales to the page width).
CHART_WIDTH, LABEL_WIDTH, BAR_HEIGHT, GAP, TOP = 640, 200, 22, 10, 8


@dataclass(frozen=True)
class Bar:
    name: str
    rate: float
    turns: int
    is_baseline: bool
    y: float
    width: float

    @property
    def text_y(self) -> float:
        return self.y + BAR_HEIGHT * 0.7


def rate_bars(models: list[GroundingRate], baseline: GroundingRate) -> tuple[list[Bar], float | None, float]:
    """Horizontal bars for the grounding-act rates (models, then the user baseline), the x of the
    baseline line (None without user turns) and the chart height. Rates without turns are left out."""
    rows = [(rate, False) for rate in models] + [(baseline, True)]
    shown = [(rate, is_baseline) for rate, is_baseline in rows if rate.per_100 is not None]
    top = max([rate.per_100 or 0.0 for rate, _ in shown] + [1.0])
    span = CHART_WIDTH - LABEL_WIDTH - 60  # room for the value at the end of the bar
    bars = [
        Bar(
            name=rate.name,
            rate=rate.per_100 or 0.0,
            turns=rate.turns,
            is_baseline=is_baseline,
            y=TOP + i * (BAR_HEIGHT + GAP),
            width=span * (rate.per_100 or 0.0) / top,
        )
        for i, (rate, is_baseline) in enumerate(shown)
    ]
    line_x = LABEL_WIDTH + span * baseline.per_100 / top if baseline.per_100 is not None else None
    return bars, line_x, TOP * 2 + len(bars) * (BAR_HEIGHT + GAP)


def dashboard_max_age_seconds() -> int:
    """A snapshot older than this (settings.DASHBOARD_MAX_AGE_SECONDS) is refreshed in the background when the
    page is viewed (and still shown)."""
    return int(settings.DASHBOARD_MAX_AGE_SECONDS)


# With no snapshot yet, a study this small is computed on the request (about a second); a larger one waits for
# the worker while the page polls.
DASHBOARD_INLINE_MAX_CONVERSATIONS = 500


def _dashboard_url(slug: str, include_excluded: bool) -> str:
    url = reverse("labeling:dashboard", args=[slug])
    return f"{url}?include_excluded=1" if include_excluded else url


@require_GET
@login_required
def study_dashboard(request: AppRequest, slug: str) -> HttpResponse:
    """A study's figures from its stored snapshot (`labeling.services.dashboard_refresh`), with the time they
    are as of. A snapshot older than `dashboard_max_age_seconds()` is refreshed in the background; with none yet,
    a small study is computed now, a larger one shows "Computing the figures…" and polls (htmx) until the
    worker has stored them."""
    if (refused := researcher_only(request, "The study dashboard")) is not None:
        return refused
    study = get_object_or_404(Study, slug=slug)
    # Excluded raters' work is left out unless asked for (?include_excluded=1): a snapshot of its own.
    include_excluded = request.GET.get("include_excluded") == "1"
    snapshot = dashboard_snapshot(study, include_excluded)
    figures = dashboard_from_json(snapshot.data, study) if snapshot and snapshot.data else None
    now = timezone.now()
    missing = figures is None and not request.htmx
    if missing and Conversation.objects.filter(study=study).count() < DASHBOARD_INLINE_MAX_CONVERSATIONS:
        snapshot = services.dashboard_refresh(study_id=study.pk, include_excluded=include_excluded)
        figures = dashboard_from_json(snapshot.data, study) if snapshot and snapshot.data else None
    if figures is None:
        services.dashboard_refresh_request(study=study, include_excluded=include_excluded, now=now)
        if request.htmx:
            return HttpResponse(status=204)  # still computing: the page polls again
        return render(request, "labeling/dashboard.html", {"study": study, "include_excluded": include_excluded})
    if request.htmx:
        return HttpResponseClientRefresh()  # the figures are there: reload the page
    assert snapshot is not None and snapshot.computed_at is not None
    age = (now - snapshot.computed_at).total_seconds()
    refreshing = snapshot.refresh_requested_at is not None and (snapshot.refresh_requested_at > snapshot.computed_at)
    if age > dashboard_max_age_seconds():
        refreshing = (
            services.dashboard_refresh_request(study=study, include_excluded=include_excluded, now=now) or refreshing
        )
    bars, line_x, height = rate_bars(figures.model_rates, figures.user_baseline)
    context = {
        "study": study,
        "d": figures,
        "label_groups": labels_by_kind(figures.labels),
        "include_excluded": include_excluded,
        "as_of": snapshot.computed_at,
        "age_s": max(0, int(age)),
        "refreshing": refreshing,
        "bars": bars,
        "line_x": line_x,
        "chart": {"width": CHART_WIDTH, "height": height, "label_width": LABEL_WIDTH, "bar_height": BAR_HEIGHT},
    }
    return render(request, "labeling/dashboard.html", context)


@require_POST
@login_required
def dashboard_refresh(request: HttpRequest, slug: str) -> HttpResponse:
    """The page's "Refresh now": ask the worker for fresh figures (deduped: a repeat within seconds sends
    nothing) and go back to the page. Same permission as the page."""
    if (refused := researcher_only(request, "The study dashboard")) is not None:
        return refused
    study = get_object_or_404(Study, slug=slug)
    include_excluded = request.POST.get("include_excluded") == "1"
    services.dashboard_refresh_request(study=study, include_excluded=include_excluded)
    return redirect(_dashboard_url(study.slug, include_excluded))
