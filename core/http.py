"""The one path from a refused action to a response.

htmx requests get the message as a small fragment swapped into the page's ``#errors`` element
(``HX-Retarget``/``HX-Reswap`` through django-htmx), with the refusal's 4xx status, which the
page's htmx config swaps instead of dropping. Plain form posts get a whole page: the error page,
or a page of the view's own (the conversation, with the message above the form).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_htmx.http import reswap, retarget
from django_htmx.middleware import HtmxDetails

from core.errors import ActionRefused


class AppRequest(HttpRequest):
    """A request as our middleware leaves it, for the type checker: django-htmx's `htmx` details,
    and (views are behind @login_required) a logged-in user."""

    user: User
    htmx: HtmxDetails


View = TypeVar("View", bound=Callable[..., HttpResponse])
FullPage = Callable[..., HttpResponse]


def _context(exc: ActionRefused) -> dict[str, str]:
    return {"error": exc.message, "error_link": exc.link, "error_link_text": exc.link_text}


def refused_fragment(request: HttpRequest, exc: ActionRefused) -> HttpResponse:
    """The message, retargeted into the page's #errors."""
    response = render(request, "_error.html", _context(exc), status=exc.status)
    return with_refusal_headers(reswap(retarget(response, "#errors"), "innerHTML"), exc)


def refused_page(request: HttpRequest, exc: ActionRefused) -> HttpResponse:
    """The message on a page of its own, with a way back."""
    return with_refusal_headers(render(request, "error_page.html", _context(exc), status=exc.status), exc)


def with_refusal_headers(response: HttpResponse, exc: ActionRefused) -> HttpResponse:
    """The refusal's own headers (e.g. Retry-After) on its response."""
    for name, value in exc.headers.items():
        response[name] = value
    return response


def refused_response(
    request: HttpRequest,
    exc: ActionRefused,
    *,
    page: FullPage | None = None,
    stale: FullPage | None = None,
    **view_kwargs: Any,
) -> HttpResponse:
    """htmx: the fragment, or for a conflict (409: the page is stale) `stale(request, exc, **view_kwargs)`, which
    brings the page up to date; otherwise `page(request, exc, **view_kwargs)` or the error page."""
    if getattr(request, "htmx", False):
        if stale is not None and exc.status == 409:
            return with_refusal_headers(stale(request, exc, **view_kwargs), exc)
        return refused_fragment(request, exc)
    if page is not None:
        return with_refusal_headers(page(request, exc, **view_kwargs), exc)
    return refused_page(request, exc)


def answers_refusals(view: View | None = None, *, page: FullPage | None = None, stale: FullPage | None = None) -> Any:
    """Decorate a view so an `ActionRefused` it raises becomes `refused_response`.

    ``@answers_refusals`` alone shows plain posts the error page; ``@answers_refusals(page=f)``
    calls ``f(request, exc, **view_kwargs)`` for them instead, and ``stale=g`` answers htmx conflicts (409)
    with ``g(request, exc, **view_kwargs)``.
    """

    def decorate(func: View) -> View:
        @functools.wraps(func)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                return func(request, *args, **kwargs)
            except ActionRefused as exc:
                return refused_response(request, exc, page=page, stale=stale, **kwargs)

        return cast(View, wrapper)

    return decorate(view) if view is not None else decorate


# --- logins (django-axes calls these: settings.AXES_CLIENT_IP_CALLABLE, AXES_LOCKOUT_CALLABLE) ----


def client_ip(request: HttpRequest) -> str:
    """The client's address: the connection's, or behind TRUSTED_PROXY_COUNT proxies that each append
    the address they were reached from to X-Forwarded-For, the one the outermost proxy saw."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return str(request.META.get("REMOTE_ADDR", ""))


def login_locked_out(request: HttpRequest, *_: Any, **__: Any) -> HttpResponse:
    """The page a locked-out login gets: what happened and when to try again (429, Retry-After)."""
    cool_off: dt.timedelta | None = settings.AXES_COOLOFF_TIME
    if cool_off:
        minutes = max(math.ceil(cool_off.total_seconds() / 60), 1)
        wait = f"Try again in {minutes} minute{'s' if minutes != 1 else ''}, or ask the researcher to unlock it."
    else:
        wait = "Ask the researcher to unlock it."
    message = f"Too many failed log-in attempts: logging in to this account from your address is locked. {wait}"
    response = render(request, "registration/locked_out.html", {"error": message}, status=429)
    if cool_off:
        response["Retry-After"] = str(math.ceil(cool_off.total_seconds()))
    return response
