"""Per-rater rate limits: a fixed one-minute window per rater and kind of action, counted in Django's cache.

``@rate_limited("messages")`` under ``@answers_refusals`` (and ``@login_required``) lets a rater do at most
``settings.RATE_LIMITS["messages"]`` of those actions in each minute of the clock; the next ones are refused
before the view runs (nothing is written) with 429, "You are going too fast: try again in N s." and a
``Retry-After: N`` header, N being the seconds to the next minute. A limit of 0 turns it off.

The counters live in the default cache: local memory counts per process, so several web processes
need a shared cache (CACHE_URL=redis://...) for the limit to be one limit. A cache that cannot be
reached lets the action through (logged): the limit guards against runaway clients, it must not
take the site down with it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

from core.errors import ActionRefused
from core.http import client_ip

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
View = TypeVar("View", bound=Callable[..., HttpResponse])


def retry_after(scope: str, key: object, *, limit: int, window: int = WINDOW_SECONDS) -> int | None:
    """Count one action of `scope` by `key`; None when it is within `limit` per `window` seconds,
    otherwise the whole seconds until the window ends (at least 1)."""
    if limit <= 0:
        return None
    now = time.time()
    current = int(now // window)
    name = f"ratelimit:{scope}:{key}:{current}"
    try:
        cache.add(name, 0, timeout=window + 5)
        try:
            count = cache.incr(name)
        except ValueError:  # expired between add and incr
            cache.add(name, 1, timeout=window + 5)
            count = 1
    except Exception:  # a cache that is down must not take the site down with it
        log.exception("Rate limit %s not checked: the cache is unreachable", scope)
        return None
    if count <= limit:
        return None
    return max(math.ceil((current + 1) * window - now), 1)


def rate_limited(scope: str, *, by_address: bool = False) -> Callable[[View], View]:
    """Refuse the view with 429 once the logged-in user (or, `by_address`, the client's address: for pages
    anyone may open) did more than ``settings.RATE_LIMITS[scope]`` of these actions in the current minute."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            key = client_ip(request) if by_address else request.user.pk
            wait = retry_after(scope, key, limit=settings.RATE_LIMITS[scope])
            if wait is not None:
                raise ActionRefused(
                    f"You are going too fast: try again in {wait} s.", status=429, headers={"Retry-After": str(wait)}
                )
            return view(request, *args, **kwargs)

        return cast(View, wrapper)

    return decorate
