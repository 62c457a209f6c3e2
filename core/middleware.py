"""Middleware of our own: a database that cannot take the request now is a 503 with Retry-After, not a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django_htmx.http import reswap, retarget

from core.db import database_unavailable

logger = logging.getLogger(__name__)

# What a client is told to wait: pool waits and server restarts last seconds.
RETRY_AFTER_SECONDS = 5
MESSAGE = f"The site is very busy right now: try again in {RETRY_AFTER_SECONDS} s."


class FreshPagesMiddleware:
    """Back and Forward must show a whole, current page. A URL such as /c/<id>/ answers htmx with a fragment and
    the browser with the page: `Vary: HX-Request` keeps the browser's cache from showing one for the other, and
    HTML gets `Cache-Control: no-store` (unless a view set its own) so history navigation asks the server again
    instead of showing a stale vote form from the cache."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        patch_vary_headers(response, ("HX-Request",))
        if response.get("Content-Type", "").startswith("text/html") and not response.has_header("Cache-Control"):
            add_never_cache_headers(response)
        return response


class DatabaseUnavailableMiddleware:
    """Answer a view that failed for want of a database connection (the pool's checkout timed out, the
    server refuses connections or restarts: `core.db.database_unavailable`) with 503 and Retry-After.

    The answer is rendered without the database (no user, no session: those need a connection too):
    htmx requests get the message in the page's #errors, others a page of its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unavailable(exception):
            return None
        logger.warning("Database unavailable, answered 503: %s %s: %s", request.method, request.path, exception)
        if getattr(request, "htmx", False):
            html = render_to_string("_error.html", {"error": MESSAGE})
            response = reswap(retarget(HttpResponse(html, status=503), "#errors"), "innerHTML")
        else:
            response = HttpResponse(render_to_string("core/unavailable.html", {"error": MESSAGE}), status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        response["Cache-Control"] = "no-store"
        return response
