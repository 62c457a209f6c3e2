"""core: the one path from a refused action to a response, validation, and tasks sent by name."""

from __future__ import annotations

import uuid

import pytest
from django.http import HttpResponse
from django.test import RequestFactory
from django_htmx.middleware import HtmxDetails

from core.errors import ActionRefused
from core.http import answers_refusals
from core.tasks import task_send
from core.validation import clean_note, clean_text, parse_int, parse_request_key


def _request(htmx: bool):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    request = RequestFactory().post("/somewhere/", **headers)
    request.htmx = HtmxDetails(request)
    return request


@answers_refusals
def _refusing_view(request, pk):
    raise ActionRefused(f"No such thing {pk}.", status=404)


def _own_page(request, exc, pk):
    return HttpResponse(f"page {pk}: {exc.message}", status=exc.status)


@answers_refusals(page=_own_page)
def _refusing_view_with_page(request, pk):
    raise ActionRefused("Too late.", status=409)


def test_htmx_refusal_is_swapped_into_the_pages_errors_with_its_status():
    response = _refusing_view(_request(htmx=True), pk=7)
    assert response.status_code == 404
    assert response["HX-Retarget"] == "#errors"
    assert response["HX-Reswap"] == "innerHTML"
    assert b"No such thing 7." in response.content


def test_plain_post_refusal_gets_the_error_page_or_the_views_own_page():
    plain = _refusing_view(_request(htmx=False), pk=7)
    assert plain.status_code == 404 and "HX-Retarget" not in plain
    assert b"No such thing 7." in plain.content and b"Back to your studies" in plain.content
    own = _refusing_view_with_page(_request(htmx=False), pk=3)
    assert (own.status_code, own.content) == (409, b"page 3: Too late.")
    swapped = _refusing_view_with_page(_request(htmx=True), pk=3)
    assert swapped.status_code == 409 and swapped["HX-Retarget"] == "#errors"


def test_validation_refuses_with_messages_and_statuses():
    assert clean_text("  hi  ", limit=10) == "hi"
    with pytest.raises(ActionRefused, match="empty"):
        clean_text("   ", limit=10)
    with pytest.raises(ActionRefused, match="NUL") as nul:
        clean_text("a\x00b", limit=10)
    assert nul.value.status == 400
    with pytest.raises(ActionRefused, match="11 characters long; the limit is 10") as long:
        clean_text("x" * 11, limit=10)
    assert long.value.status == 413
    assert clean_note(None, what="reason") == ""
    with pytest.raises(ActionRefused, match="reason is too long"):
        clean_note("x" * 4001, what="reason")
    assert parse_int("", name="turn") is None and parse_int("12", name="turn") == 12
    with pytest.raises(ActionRefused, match="turn must be a whole number, not '1.5'"):
        parse_int("1.5", name="turn")
    key = uuid.uuid4()
    assert parse_request_key(str(key)) == key
    with pytest.raises(ActionRefused, match="request key"):
        parse_request_key(None)


def test_task_send_publishes_by_name_without_importing_the_task(monkeypatch):
    from celery import current_app

    sent = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args: sent.append((name, args)))
    task_send("labeling.tasks.suggest_tags_task", 42)
    assert sent == [("labeling.tasks.suggest_tags_task", (42,))]


def test_every_task_sent_by_name_is_registered_and_routed():
    """A renamed task would otherwise be sent into the void: check the names against the app."""
    from annotate.services import SAMPLE_TASK, SUGGEST_TASK
    from workers.celery_app import app

    app.loader.import_default_modules()
    for name in (SAMPLE_TASK, SUGGEST_TASK, "exports.tasks.export_dataset_task"):
        assert name in app.tasks
        assert name in app.conf.task_routes
    assert app.conf.task_annotations["exports.tasks.export_dataset_task"]["time_limit"] == 3660
