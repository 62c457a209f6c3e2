"""A reviewer in Chromium: told why there is nothing to review, a short page (each turn's label buttons folded but
where they work), and no hint of which reply the original rater chose unless the study shows it."""

from __future__ import annotations

import re

import pytest

from annotate.models import Study, Turn
from labeling.models import Tag
from tests.helpers import PASSWORD, finished_conversation, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_reviewer_sees_why_then_a_short_blind_review_page(start_server, make_study, make_user, browser_page):
    # Given a study with a review pass and a reviewer whose own conversation is the only one finished
    study = make_study(scenarios=3, overlap=1, review_overlap=1)
    reviewer = make_user(password=PASSWORD)
    finished_conversation(study, reviewer)
    base_url = start_server()
    page = browser_page.page
    log_in(page, base_url, reviewer.username)

    # When they open the review list, they are told why there is nothing for them
    page.goto(f"{base_url}/review/")
    nothing = page.locator("#nothing-to-review")
    assert "Nothing to review right now:" in nothing.inner_text()
    assert "1 finished conversation is your own: nobody reviews their own conversations." in nothing.inner_text()

    # Given another rater's finished conversation (reply A chosen at both messages), they claim it
    conversation = finished_conversation(study, make_user())
    page.reload()
    page.locator(f"#review-next-{study.slug}").click()
    page.wait_for_url(re.compile(r"/review/\d+/$"))

    # Then only the first turn's label buttons are unfolded: the other three turns' are folded away
    bars = page.locator(".tag-bar")
    assert bars.count() == 4
    user_labels = bars.nth(0).locator(".tag-label").count()
    visible = [b for b in page.locator(".tag-label").all() if b.is_visible()]
    assert len(visible) == user_labels
    assert page.locator("details.tag-more:not([open])").count() == 3

    # and nothing says which reply the rater chose: no badge, no slot letter on the lived replies
    main = page.locator("main").inner_text()
    assert "continued" not in main
    assert re.findall(r"Reply [AB]\b", page.locator("ol.transcript").inner_text().split("Your preference")[0]) == []

    # When they tag the second turn (folded) by key, it is saved and its buttons unfold
    reply = conversation.turns.filter(role=Turn.Role.ASSISTANT, depth=1, position=0).get()
    page.locator(f"#review-turn-{reply.pk} .text").click()
    page.keyboard.press("c")
    page.locator(f"#tags-{reply.pk} .tag-chip[data-label=clarification]").wait_for()
    assert page.locator(f"#tags-{reply.pk} details.tag-more").count() == 0
    assert page.locator(f"#tags-{reply.pk} .tag-label").first.is_visible()
    assert Tag.objects.filter(turn=reply, rater=reviewer, task=Tag.Task.REVIEW, label__name="clarification").exists()

    # When the study lets reviewers see the original choice, the page shows it
    Study.objects.filter(pk=study.pk).update(reviewers_see_choice=True)
    page.reload()
    assert page.locator(".review-vote .badge", has_text="continued").count() == 2
    assert "Reply A" in page.locator("ol.transcript").inner_text()
    assert browser_page.page_errors == [] and browser_page.bad_responses == []
