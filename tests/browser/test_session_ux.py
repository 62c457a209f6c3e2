"""The rater's session as the crowd uses it (issue 12): keyboard and mouse mixed, Back/Forward, a second tab,
quick tag keys, long text, tie and both bad, phone and laptop screens. Each test reproduces a defect found by
trying the demo in Chromium.

Most set the conversation up through the services (replies finished in the database: no worker, nothing is
enqueued by this process); the whole-turn tests at phone and laptop width run a worker with a tiny random model.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from annotate import services
from annotate.models import Comparison, Conversation, Study, Turn
from labeling.models import Tag
from tests.helpers import PASSWORD, choose, finish_candidates, log_in

pytestmark = [pytest.mark.browser]

BODY_BACKGROUND = "rgb(245, 246, 248)"  # body background from app.css: the stylesheet is applied


def _voting(monkeypatch: Any, make_user: Any, make_conversation: Any, **study_fields: Any) -> tuple[Any, Any, Any]:
    """A rater, their conversation with one earlier vote, and a second message whose two replies are done."""
    monkeypatch.setattr("annotate.services._enqueue", lambda *args, **kwargs: None)
    rater = make_user(password=PASSWORD)
    conversation = make_conversation(rater=rater)
    if study_fields:
        Study.objects.filter(pk=conversation.study_id).update(**study_fields)
        conversation.refresh_from_db()
    first = services.message_send(conversation=conversation, text="Can you plan a party?")
    reply, _ = finish_candidates(first, ("Sure: what kind of party?", "Here is a plan: cake."))
    choose(conversation, first.pk, choice="candidate", chosen_id=reply.pk)
    second = services.message_send(conversation=conversation, text="For kids.")
    a, b = finish_candidates(second, ("How many kids are coming?", "Kids love cake and games."))
    return rater, conversation, (second, a, b)


def _open(browser_page: Any, start_server: Any, rater: Any, conversation: Conversation) -> tuple[Any, str]:
    base_url = start_server()
    page = browser_page.page
    log_in(page, base_url, rater.username)
    page.goto(f"{base_url}/c/{conversation.pk}/")
    page.wait_for_selector("#vote-form .candidate")
    return page, base_url


def _full_page(page: Any) -> None:
    """The page is a whole page with its stylesheet, not a bare fragment."""
    assert page.locator("header.top").count() == 1, page.content()[:500]
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == BODY_BACKGROUND


def test_enter_after_tagging_with_the_mouse_submits_the_vote(
    start_server, make_user, make_conversation, browser_page, monkeypatch
):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation)
    page, _ = _open(browser_page, start_server, rater, conversation)
    # The rater clicks reply A, tags it with the mouse, then presses Enter
    page.locator(f"#cand-{a.pk} .cand-head").click()
    page.locator(f"#tags-{a.pk} button.tag-label").first.click()
    page.wait_for_selector(f"#tags-{a.pk} .tag-chip")
    page.keyboard.press("Enter")
    page.wait_for_selector("#message-form #message")
    vote = Comparison.objects.get(parent=second)
    assert vote.chosen_id == a.pk
    assert Tag.objects.filter(turn=a, rater=rater).count() == 1
    # and nothing was posted to the tag endpoint without a label
    assert browser_page.bad_responses == [], browser_page.bad_responses


def test_enter_on_a_focused_radio_submits_the_vote_not_a_tag(
    start_server, make_user, make_conversation, browser_page, monkeypatch
):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation)
    page, _ = _open(browser_page, start_server, rater, conversation)
    page.locator(f"#cand-{b.pk} input[name=choice]").focus()
    page.keyboard.press("Space")  # the radio, by keyboard
    page.keyboard.press("Enter")
    page.wait_for_selector("#message-form #message")
    assert Comparison.objects.get(parent=second).chosen_id == b.pk
    assert browser_page.bad_responses == []


def test_back_and_forward_show_a_whole_current_page(
    start_server, make_user, make_conversation, browser_page, monkeypatch
):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation)
    page, base_url = _open(browser_page, start_server, rater, conversation)
    page.goto(f"{base_url}/")  # somewhere else, then back to the session: history with two entries
    page.go_back()
    page.wait_for_selector("#vote-form .candidate")
    page.locator(f"#cand-{a.pk} .cand-head").click()
    page.locator("#vote-submit").click()
    page.wait_for_selector("#message-form #message")
    # Back, then Forward: whole pages, and the session as it is now (no stale vote form)
    page.go_back()
    page.wait_for_load_state()
    _full_page(page)
    page.go_forward()
    page.wait_for_selector("#message-form #message")
    _full_page(page)
    assert page.locator("#vote-form").count() == 0
    # the same after the end-of-conversation survey
    page.locator("details.finish summary").click()
    page.locator("input[name=goal][value=yes]").check()
    page.locator("input[name=understanding][value='4']").check()
    page.locator("#finish-submit").click()
    page.wait_for_url(re.compile(r"/c/\d+/transcript/$"))
    page.go_back()
    page.wait_for_load_state()
    _full_page(page)
    assert page.locator("#vote-form, #message-form").count() == 0
    page.go_forward()
    page.wait_for_load_state()
    _full_page(page)


def test_tag_keys_pressed_quickly_keep_every_tag(start_server, make_user, make_conversation, browser_page, monkeypatch):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation)
    page, _ = _open(browser_page, start_server, rater, conversation)
    page.locator(f"#cand-{a.pk} .cand-head").click()
    keys = page.eval_on_selector_all(
        f"#tags-{a.pk} button.tag-label[data-key]", "buttons => buttons.map(b => b.dataset.key).filter(k => k)"
    )[:3]
    assert len(keys) == 3
    for key in keys:  # no wait in between, as a fast rater types them
        page.keyboard.press(key)
    page.wait_for_function(f"document.querySelectorAll('#tags-{a.pk} .tag-chip').length === 3", timeout=10_000)
    assert sorted(Tag.objects.filter(turn=a, rater=rater).values_list("label__key", flat=True)) == sorted(keys)


def test_a_stale_second_tab_catches_up_on_conflict(
    start_server, make_user, make_conversation, browser_page, monkeypatch
):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation)
    page, base_url = _open(browser_page, start_server, rater, conversation)
    other = page.context.new_page()
    other.goto(f"{base_url}/c/{conversation.pk}/")
    other.wait_for_selector("#vote-form .candidate")
    page.locator(f"#cand-{a.pk} .cand-head").click()
    page.locator("#vote-submit").click()
    page.wait_for_selector("#message-form #message")
    # The second tab still shows the vote: voting there says why, and shows where the conversation is now
    other.locator(f"#cand-{b.pk} .cand-head").click()
    other.locator("#vote-submit").click()
    other.wait_for_selector("#message-form #message")
    assert "already chose" in other.locator("#errors").inner_text()
    assert other.locator("#vote-form").count() == 0
    assert Comparison.objects.filter(parent=second).count() == 1


def test_a_long_message_is_never_cut_and_says_how_much_too_long(
    start_server, make_user, make_conversation, browser_page, monkeypatch
):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation)
    page, _ = _open(browser_page, start_server, rater, conversation)
    page.locator(f"#cand-{a.pk} .cand-head").click()
    page.locator("#vote-submit").click()
    box = page.wait_for_selector("#message-form #message")
    limit = conversation.study.max_message_chars
    text = "x" * (limit + 500)
    page.locator("#message").fill(text)
    page.locator("#message").dispatch_event("input")
    assert len(box.input_value()) == limit + 500  # not cut
    assert "500 too many" in page.locator(".char-count").inner_text()
    page.locator("#message").press("Enter")
    time.sleep(0.5)
    assert conversation.turns.filter(role=Turn.Role.USER).count() == 2  # not sent
    # The rewrite box allows what the server allows
    assert page.locator("#message-form").count() == 1


@pytest.mark.parametrize("policy", ["pick", "rewrite"])
def test_tie_follows_the_studys_rule_and_tells_the_rater(
    policy, start_server, make_user, make_conversation, browser_page, monkeypatch
):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation, tie_policy=policy)
    page, _ = _open(browser_page, start_server, rater, conversation)
    page.keyboard.press("t")
    if policy == "pick":
        assert page.locator(".tie-continue").is_visible()
        page.locator(f".tie-continue input[value='{b.pk}']").check()
    else:
        assert page.locator("details.rewrite").evaluate("d => d.open")
        page.locator("textarea[name=rewrite]").fill("How old are the kids, and how many?")
    page.locator("#vote-submit").click()
    page.wait_for_selector("#message-form #message")
    notice = page.locator("#notice").inner_text()
    vote = Comparison.objects.get(parent=second)
    conversation.refresh_from_db()
    assert vote.choice == "tie" and vote.chosen_id is None
    if policy == "pick":
        assert vote.continued_from_id == b.pk and conversation.head_id == b.pk
        assert "Reply B" in notice
    else:
        assert conversation.head.is_rewrite and conversation.head.text.startswith("How old")
        assert "your rewrite" in notice


def test_transcript_is_blind_by_default_and_shows_the_raters_tags(
    start_server, make_user, make_conversation, browser_page, monkeypatch
):
    rater, conversation, (second, a, b) = _voting(monkeypatch, make_user, make_conversation)
    from labeling import services as labeling

    labeling.tag_add(rater=rater, turn_id=a.pk, label="clarification")
    page, base_url = _open(browser_page, start_server, rater, conversation)
    model_name = a.model_config.name
    page.goto(f"{base_url}/c/{conversation.pk}/transcript/")
    body = page.locator("main").inner_text()
    assert model_name not in body
    assert "Clarification" in page.locator(".transcript-tags").first.inner_text()
    Study.objects.filter(pk=conversation.study_id).update(show_model_names=True)
    page.reload()
    assert model_name in page.locator("main").inner_text()
    # On a phone the badges and names stay inside their cards, and the page inside the screen
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    overflowing = page.evaluate(
        """() => [...document.querySelectorAll('.reply')].flatMap(card => {
             const box = card.getBoundingClientRect();
             return [...card.querySelectorAll('.badge, small')]
               .filter(b => b.getBoundingClientRect().right > box.right + 1)
               .map(b => b.textContent);
           })"""
    )
    assert overflowing == []


def _whole_turn_by_click(page: Any, width: int) -> None:
    page.locator("#message").fill("Help me plan a party")
    page.locator("#message-form button[type=submit]").click()
    page.wait_for_function(
        """() => { const f = document.querySelector('#vote-form fieldset.vote-bar');
                   return f && !f.disabled; }""",
        timeout=120_000,
    )
    cards = page.locator("#vote-form .candidate")
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    if width < 700:  # stacked, one above the other, within the screen
        assert second["y"] >= first["y"] + first["height"] - 1, (first, second)
        assert first["x"] + first["width"] <= width + 1
    else:  # side by side
        assert abs(second["y"] - first["y"]) < 2 and second["x"] > first["x"]
    cards.nth(1).locator(".cand-head").click()
    submit = page.locator("#vote-submit")
    box = submit.bounding_box()
    viewport = page.viewport_size
    assert box["y"] + box["height"] <= viewport["height"] + 1, "the vote bar is not on screen"
    submit.click()
    page.wait_for_selector("#message-form #message")
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("size", [(390, 844), (1366, 768)])
def test_a_whole_turn_by_click_on_a_phone_and_a_laptop(
    size, start_worker, start_server, make_user, make_study, tiny_config, browser_page
):
    width, height = size
    # min_new_tokens: a tiny random model may otherwise end at once, an empty reply that fails the turn
    study = make_study(configs=[tiny_config(max_new_tokens=8, min_new_tokens=8)], slug=f"screen-{width}")
    rater = make_user(password=PASSWORD)
    start_worker(concurrency=1)
    base_url = start_server()
    page = browser_page.page
    page.set_viewport_size({"width": width, "height": height})
    log_in(page, base_url, rater.username)
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # the home page fits too
    page.locator(f"#start-{study.slug}").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    message = page.locator("#message").bounding_box()
    assert message["y"] + message["height"] <= height, "the message box is not on the first screen"
    _whole_turn_by_click(page, width)
    assert Comparison.objects.filter(conversation__rater=rater).count() == 1
    assert browser_page.page_errors == [] and browser_page.bad_responses == []
