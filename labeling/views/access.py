"""Who may open the researchers' pages (the study dashboard and the leaderboard): one permission, one refusal."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

# The custom permission on Study (annotate/models.py) that opens every study's dashboard and leaderboard.
RESEARCHER_PERMISSION = "annotate.view_study_dashboard"


def researcher_only(request: HttpRequest, page: str) -> HttpResponse | None:
    """The 403 page (templates/403.html, in the site's layout) saying which permission is missing, for anyone but
    superusers and users granted `RESEARCHER_PERMISSION` (being staff is not enough); None for them. `page` names
    what was refused ("The study dashboard"). Answered, not raised: a PermissionDenied would be logged with its
    traceback, and a rater who followed a link is no server error."""
    if request.user.has_perm(RESEARCHER_PERMISSION):
        return None
    message = (
        f"{page} is for researchers: it needs the permission “Can view the study dashboard”, "
        "which your account does not have."
    )
    return render(request, "403.html", {"exception": message}, status=403)
