"""Who may not open the study dashboard gets the site's 403 page saying what is missing, and no traceback is
logged for it (a rater following a link is no server error)."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("staff", [False, True])
@pytest.mark.parametrize("method", ["get", "post"])
def test_without_the_permission_the_dashboard_is_a_403_page_saying_what_is_missing(
    make_study, make_user, client, caplog, staff, method
):
    study = make_study()
    client.force_login(make_user(is_staff=staff))
    url = reverse("labeling:dashboard" if method == "get" else "labeling:dashboard_refresh", args=[study.slug])
    with caplog.at_level(logging.INFO, logger="django.request"):
        response = getattr(client, method)(url)
    html = response.content.decode()
    assert response.status_code == 403
    assert '<header class="top">' in html and "You cannot open this page" in html
    assert "it needs the permission “Can view the study dashboard”" in html
    assert [record.exc_info for record in caplog.records if record.name == "django.request"] == [None]


def test_an_unknown_study_is_still_a_403_for_them(make_user, client):
    client.force_login(make_user())
    assert client.get(reverse("labeling:dashboard", args=["no-such-study"])).status_code == 403


def test_the_favicon_is_served(client):
    response = client.get("/favicon.ico", follow=True)
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:4] == b"\x00\x00\x01\x00"
