"""The study dashboard, for researchers (`annotate.view_study_dashboard`): agreement, activity, suggestions
and grounding rates."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from annotate.models import Study
from labeling.dashboard import GroundingRate
from labeling.dashboard import study_dashboard as dashboard_figures

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


# The custom permission on Study (annotate/models.py) that opens every study's dashboard.
DASHBOARD_PERMISSION = "annotate.view_study_dashboard"


@require_GET
@login_required
def study_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    """A study's figures, for superusers and users granted `annotate.view_study_dashboard` (being staff is
    not enough); anyone else gets the 403 page (templates/403.html), before any study is looked up."""
    if not request.user.has_perm(DASHBOARD_PERMISSION):
        raise PermissionDenied("The study dashboard is for researchers with access to it.")
    study = get_object_or_404(Study, slug=slug)
    # Excluded raters' work is left out unless asked for (?include_excluded=1).
    figures = dashboard_figures(study=study, include_excluded=request.GET.get("include_excluded") == "1")
    bars, line_x, height = rate_bars(figures.model_rates, figures.user_baseline)
    context = {
        "study": study,
        "d": figures,
        "bars": bars,
        "line_x": line_x,
        "chart": {"width": CHART_WIDTH, "height": height, "label_width": LABEL_WIDTH, "bar_height": BAR_HEIGHT},
    }
    return render(request, "labeling/dashboard.html", context)
