"""The one path from a refused action to a response.

htmx requests get the message as a small fragment swapped into the page's ``#errors`` element
(``HX-Retarget``/``HX-Reswap`` through django-htmx), with the refusal's 4xx status, which the
page's htmx config swaps instead of dropping. Plain form posts get a whole page: the error page,
or a page of the view's own (the conversation, with the message above the form).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

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


def refused_fragment(request: HttpRequest, exc: ActionRefused) -> HttpResponse:
    """The message, retargeted into the page's #errors."""
    response = render(request, "_error.html", {"error": exc.message}, status=exc.status)
    return reswap(retarget(response, "#errors"), "innerHTML")


def refused_page(request: HttpRequest, exc: ActionRefused) -> HttpResponse:
    """The message on a page of its own, with a way back."""
    return render(request, "error_page.html", {"error": exc.message}, status=exc.status)


def refused_response(
    request: HttpRequest, exc: ActionRefused, *, page: FullPage | None = None, **view_kwargs: Any
) -> HttpResponse:
    """htmx: the fragment; otherwise `page(request, exc, **view_kwargs)` or the error page."""
    if getattr(request, "htmx", False):
        return refused_fragment(request, exc)
    if page is not None:
        return page(request, exc, **view_kwargs)
    return refused_page(request, exc)


def answers_refusals(view: View | None = None, *, page: FullPage | None = None) -> Any:
    """Decorate a view so an `ActionRefused` it raises becomes `refused_response`.

    ``@answers_refusals`` alone shows plain posts the error page; ``@answers_refusals(page=f)``
    calls ``f(request, exc, **view_kwargs)`` for them instead.
    """

    def decorate(func: View) -> View:
        @functools.wraps(func)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                return func(request, *args, **kwargs)
            except ActionRefused as exc:
                return refused_response(request, exc, page=page, **kwargs)

        return cast(View, wrapper)

    return decorate(view) if view is not None else decorate
