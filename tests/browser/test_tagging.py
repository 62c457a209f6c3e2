"""Tagging in the live session, in headless Chromium against the real server (no model: replies are done).

The rater selects words of a reply with the mouse and presses a label key, clicks a label button for a
whole-reply tag, tags their own message as feedback on the reply before it, then votes with the keys as
before; the database holds the tags with the offsets of the selected words.
"""

from __future__ import annotations

from typing import Any

import pytest

from annotate import services
from annotate.models import Comparison
from labeling.models import Tag
from tests.helpers import PASSWORD, choose, finish_candidates, log_in

pytestmark = [pytest.mark.browser]


def drag_select(page: Any, selector: str, start: int, end: int) -> None:
    """Press the mouse before character `start` of the element's text and release it after character `end - 1`."""
    box = page.evaluate(
        """([selector, start, end]) => {
          const node = document.querySelector(selector).firstChild;
          const range = document.createRange();
          range.setStart(node, start); range.setEnd(node, start + 1);
          const first = range.getBoundingClientRect();
          range.setStart(node, end - 1); range.setEnd(node, end);
          const last = range.getBoundingClientRect();
          const middle = (rect) => rect.top + rect.height / 2;
          return {x1: first.left + 1, y1: middle(first), x2: last.right - 1, y2: middle(last)};
        }""",
        [selector, start, end],
    )
    page.mouse.move(box["x1"], box["y1"])
    page.mouse.down()
    page.mouse.move(box["x2"], box["y2"], steps=8)
    page.mouse.up()


def chip(page: Any, turn_id: int, label: str) -> Any:
    """The chip of a label on a turn, once shown and wired up by htmx (it settles a moment after the swap)."""
    found = page.locator(f"#tags-{turn_id} .tag-chip[data-label={label}]")
    found.wait_for()
    page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')")
    return found


@pytest.mark.django_db(transaction=True)
def test_rater_tags_a_span_by_key_a_reply_by_click_and_their_own_feedback(
    start_server, make_user, make_conversation, browser_page, monkeypatch
):
    # Given a conversation whose second message has two finished replies (no worker: nothing is enqueued)
    monkeypatch.setattr("annotate.services._enqueue", lambda *args, **kwargs: None)
    rater = make_user(password=PASSWORD)
    conversation = make_conversation(rater=rater)
    first = services.message_send(conversation=conversation, text="Can you plan a party?")
    reply, _ = finish_candidates(first, ("Sure: what kind of party?", "Here is a plan: cake."))
    choose(conversation, first.pk, choice="candidate", chosen_id=reply.pk)
    second = services.message_send(conversation=conversation, text="No, I meant a party for KIDS.")
    a, b = finish_candidates(second, ("Do you mean a birthday party? 🎂 Or another one?", "Kids love cake."))
    base_url = start_server()
    page = browser_page.page
    log_in(page, base_url, rater.username)
    page.goto(f"{base_url}/c/{conversation.pk}/")
    page.wait_for_selector(f"#tags-{a.pk} button.tag-label")

    # When the rater selects "birthday party" in reply A with the mouse and presses "c" (clarification)
    start = a.text.index("birthday party")
    drag_select(page, f"#cand-{a.pk} .cand-text", start, start + len("birthday party"))
    assert page.evaluate("window.getSelection().toString()") == "birthday party"
    assert not page.locator(f"#cand-{a.pk} input[name=choice]").is_checked()  # selecting is not voting
    page.keyboard.press("c")

    # Then a chip with the words appears on reply A
    assert chip(page, a.pk, "clarification").locator(".tag-span").inner_text() == "birthday party"

    # When they select text after an emoji (two UTF-16 units, one character) and press "a"
    start = a.text.index("Or another")
    dom_start = start + 1  # the page counts the emoji twice
    drag_select(page, f"#cand-{a.pk} .cand-text", dom_start, dom_start + len("Or another"))
    page.keyboard.press("a")
    chip(page, a.pk, "acknowledgment")
    acknowledged = Tag.objects.get(label__name="acknowledgment")
    assert a.text[acknowledged.span_start : acknowledged.span_end] == "Or another"  # offsets in characters

    # When they click the "Over-response" button on reply B (nothing selected): a whole-reply tag
    page.locator(f"#tags-{b.pk} button.tag-label[data-key=o]").click()
    assert chip(page, b.pk, "over-response").locator(".tag-span").count() == 0
    assert "tag-focus" in page.locator(f"#cand-{b.pk}").get_attribute("class")

    # When they click their own second message and press "e" (rephrase): linked to the reply before it
    page.locator(f"#turn-{second.pk} .text").click()
    assert "tag-focus" in page.locator(f"#turn-{second.pk}").get_attribute("class")
    page.keyboard.press("e")
    assert "→ reply" in chip(page, second.pk, "rephrase").locator(".tag-link").inner_text()

    # When they remove the acknowledgment chip again
    page.locator(f"#tags-{a.pk} .tag-chip[data-label=acknowledgment] button.tag-remove").click()
    page.locator(f"#tags-{a.pk} .tag-chip[data-label=acknowledgment]").wait_for(state="detached")

    # ... and a label that is not for this turn's role does nothing ("k" complaint is for user turns)
    page.locator(f"#cand-{a.pk} .cand-head").click()
    page.keyboard.press("k")

    # Then the vote keys still work as before: "2" picks reply B, Enter submits
    page.keyboard.press("2")
    assert page.locator(f"#cand-{b.pk} input[name=choice]").is_checked()
    assert "tag-focus" in page.locator(f"#cand-{b.pk}").get_attribute("class")  # the tag focus follows the vote
    page.keyboard.press("Enter")
    page.wait_for_selector("#message-form #message")
    assert Comparison.objects.get(parent=second).chosen_id == b.pk

    # ... no errors anywhere, and the database holds the tags as applied
    assert browser_page.page_errors == [] and browser_page.bad_responses == [] and browser_page.dialogs == []
    tags = {t.label.name: t for t in Tag.objects.select_related("label")}
    assert set(tags) == {"clarification", "over-response", "rephrase"}
    span = tags["clarification"]
    assert (span.turn_id, span.task, span.status) == (a.pk, "live", "confirmed")
    assert a.text[span.span_start : span.span_end] == "birthday party"
    assert (tags["over-response"].turn_id, tags["over-response"].span_start) == (b.pk, None)
    assert (tags["rephrase"].turn_id, tags["rephrase"].linked_turn_id) == (second.pk, reply.pk)
    assert all(t.rater_id == rater.pk for t in tags.values())
