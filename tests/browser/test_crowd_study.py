"""A crowd participant's whole visit, in headless Chromium against the real server, worker and a tiny model.

They open the study link with their panel ids, agree to the consent, send one message, vote, finish with the
survey, and are sent on to the panel's completion URL with the study's code (here a page of the live server,
/accounts/login/?cc=CODE). The same id opened in another browser resumes (the code again); a second id,
with the study's one place taken (overlap 1, one scenario), is screened out with the screen-out code.

With SCREENSHOTS_DIR set (e.g. SCREENSHOTS_DIR=docs/img), the pages are saved there, 1000 px wide (admin 1280), for
docs/crowd-studies.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from annotate.models import Conversation, Participant, Study
from tests.browser.test_rater_session import send_message, wait_until_votable
from tests.helpers import PASSWORD, log_in

pytestmark = [pytest.mark.browser]

PID = "60c1d2e3f4a5b6c7d8e9f0a1"
SHOTS = Path(os.environ["SCREENSHOTS_DIR"]) if os.environ.get("SCREENSHOTS_DIR") else None
VIEWPORT = {"width": 1000, "height": 720}


def shot(page: Any, name: str) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        bottom = page.evaluate("Math.ceil(document.querySelector('main, #content').getBoundingClientRect().bottom)")
        size = page.viewport_size
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], bottom + 16)}
        page.screenshot(path=str(SHOTS / f"crowd-{name}.png"), clip=clip)


def study_link(base_url: str, study: Study, pid: str, session: str) -> str:
    return f"{base_url}/p/{study.slug}/?PROLIFIC_PID={pid}&STUDY_ID=prolific-study-1&SESSION_ID={session}"


@pytest.mark.django_db(transaction=True)
def test_participant_enters_consents_works_and_is_sent_back_with_the_code(
    start_worker, start_server, make_study, tiny_config, make_user, browser_page
):
    # Given a crowd study with one place (one scenario, overlap 1), a tiny model, a worker and the server
    study = make_study(
        configs=[tiny_config(max_new_tokens=12, min_new_tokens=4), tiny_config(max_new_tokens=12, min_new_tokens=4)],
        scenarios=1,
        name="Under-specified requests (crowd)",
        overlap=1,
        conversations_per_rater=1,
        max_user_turns=3,
        consent_text=(
            "This study is run by the Common Ground team. You will chat with AI assistants and judge their "
            "replies; it takes about 10 minutes.\n\nYour messages and choices are kept, without your name, to "
            "improve assistants. You may stop at any time by closing this page."
        ),
        instructions="Play the situation you are given. At each turn, pick the reply that helps you most.",
        completion_code="C0MPL3TE",
        screenout_code="SCR33N",
        returned_code="RETURN3D",
    )
    start_worker(concurrency=2)
    base_url = start_server()
    Study.objects.filter(pk=study.pk).update(completion_url=f"{base_url}/accounts/login/?cc={{code}}")
    page = browser_page.page
    page.set_viewport_size(VIEWPORT)

    # When the participant opens the study link with their panel ids
    page.goto(study_link(base_url, study, PID, "session-1"))

    # Then they see the consent and the instructions, and no work yet
    page.wait_for_url(f"{base_url}/p/{study.slug}/consent/")
    assert "You may stop at any time" in page.locator(".consent-text").inner_text()
    assert "pick the reply that helps you most" in page.locator(".instructions").inner_text()
    assert not Conversation.objects.exists()
    shot(page, "consent")

    # When they agree, they are in the conversation
    page.locator("#consent-agree").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    participant = Participant.objects.get(study=study, external_id=PID)
    assert participant.consented_at is not None and participant.panel_session_id == "session-1"

    # ... send one message, wait for both replies, vote with the keyboard
    cards = send_message(page, "Hi! Can you help me plan something for Saturday?")
    wait_until_votable(page, timeout_s=180)
    page.keyboard.press("1")
    assert page.locator(f"#{cards[0]['dom']} input[name=choice]").is_checked()
    page.keyboard.press("Enter")
    page.wait_for_selector("#message-form #message")

    # ... and finish with the survey
    page.locator("details.finish > summary").click()
    page.locator("#finish-form input[name=goal][value=yes]").check()
    page.locator("#finish-form input[name=understanding][value='4']").check()
    page.locator("#finish-submit").click()

    # Then the done page shows the completion code and sends them on to the panel's completion URL
    page.wait_for_selector("#panel-done")
    assert page.locator("#exit-code").inner_text() == "C0MPL3TE"
    shot(page, "done")
    page.wait_for_url(f"{base_url}/accounts/login/?cc=C0MPL3TE", timeout=15_000)
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED and participant.completed_at is not None
    conversation = Conversation.objects.get(study=study, rater=participant.user)
    assert conversation.status == Conversation.Status.COMPLETED and conversation.ended_at is not None
    assert participant.completed_at >= conversation.ended_at  # completed only after the finish was committed

    # When the same id opens the link in another browser, it resumes: the same account, the code again
    browser = page.context.browser
    again = browser.new_context(viewport=VIEWPORT)
    try:
        other = again.new_page()
        other.goto(study_link(base_url, study, PID, "session-1"))
        other.wait_for_url(f"{base_url}/accounts/login/?cc=C0MPL3TE", timeout=15_000)
    finally:
        again.close()
    assert Participant.objects.filter(study=study).count() == 1

    # When a second id takes part, the one place is gone: after consent they are screened out
    second = browser.new_context(viewport=VIEWPORT)
    try:
        late = second.new_page()
        late.goto(study_link(base_url, study, "70d2e3f4a5b6c7d8e9f0a1b2", "session-9"))
        late.wait_for_url(f"{base_url}/p/{study.slug}/consent/")
        late.locator("#consent-agree").click()
        late.wait_for_selector("#panel-done")
        assert "All places in this study are taken" in late.locator("#panel-done").inner_text()
        assert late.locator("#exit-code").inner_text() == "SCR33N"
        shot(late, "no-places")
        late.wait_for_url(f"{base_url}/accounts/login/?cc=SCR33N", timeout=15_000)
    finally:
        second.close()
    late_participant = Participant.objects.get(study=study, external_id="70d2e3f4a5b6c7d8e9f0a1b2")
    assert late_participant.status == Participant.Status.SCREENED_OUT
    assert Conversation.objects.filter(study=study).count() == 1

    # The researcher's view: the participants in admin, with the pay sheet action
    researcher = make_user(password=PASSWORD, is_staff=True, is_superuser=True)
    admin = browser.new_context(viewport={"width": 1280, "height": 440})
    try:
        desk = admin.new_page()
        log_in(desk, base_url, researcher.username, home="/admin/", login="/admin/login/")
        desk.goto(f"{base_url}/admin/annotate/participant/?study__id__exact={study.pk}")
        if desk.locator("#toggle-nav-sidebar").is_visible():
            desk.locator("#toggle-nav-sidebar").click()  # the list is what the screenshot is of
        desk.locator("#action-toggle").check()
        desk.locator("select[name=action]").select_option(label="Download pay sheet (CSV)")
        shot(desk, "admin-participants")
        with desk.expect_download() as info:
            desk.locator("button[name=index]").click()
        sheet = Path(info.value.path()).read_text()
    finally:
        admin.close()
    lines = sheet.splitlines()
    assert lines[0].startswith("participant_id,completion_code,time_minutes,status,bonus")
    assert any(line.startswith(f"{PID},C0MPL3TE,") and ",awaiting_review," in line for line in lines)
    assert any(line.startswith("70d2e3f4a5b6c7d8e9f0a1b2,SCR33N,") for line in lines)
    assert browser_page.page_errors == [] and browser_page.dialogs == []
    assert browser_page.bad_responses == []
