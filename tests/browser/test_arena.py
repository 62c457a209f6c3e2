"""An arena conversation in Chromium: two anonymous replies, a vote by keyboard, the names revealed, the vote
final, the conversation going on from the winner (docs/arena.md)."""

from __future__ import annotations

import re

import pytest

from annotate.models import Comparison, Conversation, Turn
from tests.helpers import PASSWORD, log_in

pytestmark = [pytest.mark.browser]


@pytest.mark.django_db(transaction=True)
def test_arena_turn_anonymous_then_revealed_and_final(
    start_worker, start_server, make_user, make_study, tiny_config, browser_page
):
    left, right = (tiny_config(max_new_tokens=8, min_new_tokens=8) for _ in range(2))
    study = make_study(configs=[left, right], arena=True, slug="arena-browser")
    rater = make_user(password=PASSWORD)
    start_worker(concurrency=1)
    base_url = start_server()
    page = browser_page.page
    log_in(page, base_url, rater.username)
    page.locator(f"#start-{study.slug}").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))

    page.locator("#message").fill("Which of you is better at planning parties?")
    page.keyboard.press("Enter")
    page.wait_for_function(
        """() => { const f = document.querySelector('#vote-form fieldset.vote-bar'); return f && !f.disabled; }""",
        timeout=120_000,
    )
    # Two replies, one per model, and no model name anywhere on the page before the vote.
    assert page.locator("#vote-form .candidate").count() == 2
    html = page.content()
    assert left.name not in html and right.name not in html

    # The rater picks reply B with the keyboard and votes with Enter.
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    page.wait_for_selector("#message-form #message")
    conversation = Conversation.objects.get(rater=rater)
    vote = Comparison.objects.get(conversation=conversation)
    b = Turn.objects.select_related("model_config").get(pk=vote.chosen_id)
    a = Turn.objects.select_related("model_config").get(parent=vote.parent, position=0)
    assert b.position == 1
    notice = page.locator("#notice").inner_text()
    assert f"Reply A was {a.model_config.name}, Reply B was {b.model_config.name}" in notice
    assert "final" in notice
    # The winner is on the lived path, now named; the conversation goes on from it.
    assert page.locator(f"#turn-{b.pk} .model-name").inner_text() == f"· {b.model_config.name}"
    conversation.refresh_from_db()
    assert conversation.head_id == b.pk

    # The vote is final: Back to the voting page and voting again changes nothing.
    page.go_back()
    page.wait_for_load_state()
    if page.locator("#vote-form").count():
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        page.wait_for_timeout(500)
    assert list(Comparison.objects.filter(conversation=conversation).values_list("chosen_id", flat=True)) == [b.pk]
    assert browser_page.page_errors == []
