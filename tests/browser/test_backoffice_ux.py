"""The researcher's pages in Chromium: the study admin fits a 1366 px screen, the dashboard fits a phone, a rater
who opens the dashboard gets the site's 403 page (and the server logs no traceback), and no page asks for a
favicon in vain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labeling import services as labeling
from tests.helpers import PASSWORD, finished_conversation, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH = "[document.documentElement.scrollWidth, window.innerWidth]"


def admin_log_in(page: Any, base_url: str, username: str) -> None:
    log_in(page, base_url, username, home="/admin/", login="/admin/login/")


def test_the_study_admin_page_fits_a_1366_px_screen(start_server, make_user, browser_page):
    # Given the demo study (six scenarios with long briefs) and a superuser on a 1366×768 screen
    labeling.demo_setup()
    researcher = make_user(password=PASSWORD, is_staff=True, is_superuser=True)
    base_url = start_server()
    page = browser_page.page
    page.set_viewport_size({"width": 1366, "height": 768})
    admin_log_in(page, base_url, researcher.username)

    # When they open the study's change page
    page.goto(f"{base_url}/admin/annotate/study/")
    page.get_by_role("link", name="Demo: under-specified requests").click()
    page.wait_for_selector("#scenarios-group")

    # Then the page is no wider than the screen, and the scenarios are all there to edit
    document, viewport = page.evaluate(WIDTH)
    assert document <= viewport, f"the page is {document} px wide on a {viewport} px screen"
    assert page.locator("#scenarios-group textarea[name$='-brief']:not([name*='__prefix__'])").count() == 6


def test_the_dashboard_fits_a_phone(start_server, make_study, make_user, browser_page):
    # Given a study with finished work and a researcher on a 390×844 phone
    study = make_study(scenarios=2, overlap=1, review_overlap=1)
    finished_conversation(study, make_user("a-rater-with-a-long-name"))
    researcher = make_user(password=PASSWORD, is_staff=True, is_superuser=True)
    base_url = start_server()
    page = browser_page.page
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, base_url, researcher.username)

    # When they open the dashboard
    page.goto(f"{base_url}/studies/{study.slug}/dashboard/")
    page.wait_for_selector("#labels table")

    # Then the page is no wider than the phone: the wide tables scroll sideways inside their cards
    document, viewport = page.evaluate(WIDTH)
    assert document <= viewport == 390, f"the page is {document} px wide on a {viewport} px phone"
    # (the table is wider than the phone: it scrolls, in its wrapper or, where app.css makes it a block, itself)
    scrolls = "t => [t, t.closest('.table-scroll')].some(el => el.scrollWidth > el.clientWidth)"
    assert page.locator("#labels table").evaluate(scrolls)


def test_a_rater_opening_the_dashboard_gets_the_sites_403_page_and_no_traceback(
    start_server, make_study, make_user, browser_page, tmp_path: Path
):
    # Given a rater (and a staff member without the permission)
    study = make_study()
    make_user("plain-rater", password=PASSWORD)
    base_url = start_server()
    page = browser_page.page
    log_in(page, base_url, "plain-rater")

    # When the rater opens the study dashboard
    response = page.goto(f"{base_url}/studies/{study.slug}/dashboard/")

    # Then they get a 403 in the site's layout that says what is missing, and a way back
    assert response is not None and response.status == 403
    assert page.locator("header.top .brand").is_visible()
    assert page.get_by_role("heading", name="You cannot open this page").is_visible()
    assert "Can view the study dashboard" in page.locator("main").inner_text()
    assert page.get_by_role("link", name="Back to your studies").is_visible()
    browser_page.bad_responses.clear()  # the 403 was expected
    # and the server logged the refusal without a traceback
    log = (tmp_path / "web.log").read_text(errors="replace")
    assert "Traceback" not in log and "PermissionDenied" not in log


def test_no_page_asks_for_a_favicon_in_vain(start_server, make_user, browser_page):
    make_user("plain-rater", password=PASSWORD)
    base_url = start_server()
    page = browser_page.page
    icons: list[tuple[str, int]] = []

    def seen(response: Any) -> None:
        if "favicon" in response.url:
            icons.append((response.url, response.status))

    page.on("response", seen)
    log_in(page, base_url, "plain-rater")
    response = page.request.get(f"{base_url}/favicon.ico")
    assert response.status == 200 and response.body()[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert all(status < 400 for _, status in icons), icons
