"""core: the one path from a refused action to a response, validation, and tasks sent by name."""

from __future__ import annotations

import re
import uuid

import pytest
from django.http import HttpResponse
from django.test import RequestFactory
from django_htmx.middleware import HtmxDetails

from core.errors import ActionRefused
from core.http import answers_refusals
from core.tasks import task_send
from core.validation import (
    check_structure,
    clean_note,
    clean_text,
    is_id,
    parse_int,
    parse_json,
    parse_request_key,
    read_upload,
    unstorable,
)


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


@pytest.mark.parametrize("value", ["²", "١٢", "1.5", "1e3", "1_000", " ", "9" * 19, "0x10", "--1", "1\x00"])
def test_parse_int_takes_ascii_whole_numbers_that_fit_64_bits_only(value):
    with pytest.raises(ActionRefused, match="must be a whole number") as refused:
        parse_int(value, name="n")
    assert refused.value.status == 400
    assert not is_id(value)


def test_parse_int_and_is_id_accept_plain_numbers():
    assert [parse_int(v, name="n") for v in ("0", "-3", "+4", " 12 ", "9" * 18)] == [0, -3, 4, 12, int("9" * 18)]
    assert is_id("12") and not is_id("-3") and not is_id("")


def test_storable_text_and_structures():
    assert unstorable("fine ✓") is None
    assert "NUL" in (unstorable("a\x00") or "") and "surrogate" in (unstorable("\ud800") or "")
    with pytest.raises(ActionRefused, match="The note contains a lone surrogate"):
        clean_text("\udfff", limit=10, what="note")
    with pytest.raises(ActionRefused, match="malformed"):
        clean_note("half \ud800", what="reason")
    check_structure({"a": [1, "x", {"b": None}], "c": 1.5}, what="Data")
    for bad, fragment in [
        ({"a": {"b": {"c": 1}}}, "Data: 'a.b' is nested more than 2 levels deep"),
        ({"a": ["ok", "n\x00"]}, "Data: 'a[1]' contains a NUL"),
        ({"k\ud800": 1}, "the field name"),
        ({1: "x"}, "key that is not text"),
        ({"a": float("nan")}, "'a' is a number JSON cannot hold"),
        (list(range(50)), "more than 40 values"),
    ]:
        with pytest.raises(ActionRefused, match=re.escape(fragment)):
            check_structure(bad, what="Data", max_depth=2, max_nodes=40)


def test_parse_json_refuses_what_would_be_a_500():
    assert parse_json('{"a": [1]}', what="Line 1") == {"a": [1]}
    for text, fragment in [
        ("[" * 100_000 + "]" * 100_000, "nested too deep"),
        ("[" * 30 + "]" * 30, "nested more than 20 levels"),
        ("9" * 5000, "not valid JSON"),  # past Python's int digit limit: a ValueError, not a JSONDecodeError
        ("{nope", "not valid JSON"),
        ('"\\u0000"', "contains a NUL"),
        ("NaN", "number JSON cannot hold"),
    ]:
        with pytest.raises(ActionRefused, match=fragment) as refused:
            parse_json(text, what="Line 1")
        assert refused.value.status == 400


def test_read_upload_checks_the_size_before_reading(settings):
    class Upload:
        name, size = "f.txt", 10**12

        def read(self, size: int = -1) -> bytes:
            raise AssertionError("read despite its size")

    with pytest.raises(ActionRefused, match="larger than the limit of 100 bytes") as refused:
        read_upload(Upload(), limit=100)
    assert refused.value.status == 413

    class Lying(Upload):
        size = 5

        def read(self, size: int = -1) -> bytes:
            return b"x" * (size if size >= 0 else 10**6)

    with pytest.raises(ActionRefused, match="larger than"):
        read_upload(Lying(), limit=100)  # reads at most limit + 1 bytes, whatever the size said
    settings.IMPORT_MAX_BYTES = 3

    class Small(Upload):
        size = 3

        def read(self, size: int = -1) -> bytes:
            return b"abc"

    assert read_upload(Small()) == b"abc"  # the limit from settings.IMPORT_MAX_BYTES


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
