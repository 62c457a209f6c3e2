"""A rater's whole session in headless Chromium, against the real server, worker and Gemma.

Log in, start the demo study, hold a 3-turn conversation (tokens stream in, every vote is cast
with the keyboard only), end it with the survey, land on the transcript; then check the tree
the database holds.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from annotate import selectors, services
from annotate.models import Comparison, Conversation, Turn
from tests.helpers import PASSWORD, log_in
from workers.models import ModelConfig

pytestmark = [pytest.mark.browser]

HOSTILE = "<img src=x onerror=alert(1)>"


def candidate_cards(page: Any) -> list[dict[str, Any]]:
    """The candidate cards in display order: DOM id, database id, keyboard index."""
    return page.eval_on_selector_all(
        "#vote-form .candidate",
        "cards => cards.map(c => ({dom: c.id, pk: Number(c.id.slice(5)), index: c.dataset.index}))",
    )


def send_message(page: Any, text: str) -> list[dict[str, Any]]:
    """Type a message and press Enter; returns the candidate cards that appear for it."""
    box = page.locator("#message")
    box.press_sequentially(text)
    box.press("Enter")
    page.wait_for_selector("#vote-form .candidate")
    cards = candidate_cards(page)
    assert len(cards) == 2
    return cards


def wait_until_votable(page: Any, timeout_s: float) -> None:
    """Both candidates done: the fragment was refetched and the vote controls are enabled."""
    page.wait_for_function(
        """() => {
          const fieldset = document.querySelector("#vote-form fieldset.choices");
          const radios = [...document.querySelectorAll("#vote-form .candidate input[name=choice]")];
          const cards = [...document.querySelectorAll("#vote-form .candidate")];
          return fieldset && !fieldset.disabled && radios.length === 2 && radios.every(r => !r.disabled)
            && cards.every(c => c.dataset.status === "done");
        }""",
        timeout=timeout_s * 1000,
    )


def streaming_seen(page: Any, cards: list[dict[str, Any]]) -> dict[str, list[int]]:
    """For each card: the non-empty text lengths shown while it was still streaming, vote disabled."""
    seen = page.evaluate("window.__cgSeen")
    return {
        c["dom"]: sorted(
            {
                s["len"]
                for s in seen
                if s["id"] == c["dom"] and s["status"] == "streaming" and s["len"] > 0 and s["voteEnabled"] is False
            }
        )
        for c in cards
    }


def vote_with_keys(page: Any, keys: list[str], expect_checked: str) -> None:
    """Cast the vote with key presses only (no clicks), then submit with Enter."""
    active = page.evaluate("document.activeElement ? document.activeElement.tagName : ''")
    assert active not in ("TEXTAREA", "INPUT"), f"focus is in a {active}: the vote keys would type into it"
    for key in keys:
        page.keyboard.press(key)
    assert page.locator(expect_checked).is_checked(), f"{keys} did not select {expect_checked}"
    page.keyboard.press("Enter")
    # The fresh fragment: the vote is recorded and the message box is back.
    page.wait_for_selector("#message-form #message")
    page.wait_for_selector("#vote-form", state="detached")


@pytest.mark.gemma
@pytest.mark.django_db(transaction=True)
def test_rater_holds_a_three_turn_conversation(start_worker, start_server, make_user, browser_page):
    # Given the demo study (two Gemma 3 270M configs), kept short, and a rater
    services.demo_setup()
    for config in ModelConfig.objects.filter(name__in=["gemma-plain", "gemma-clarify"]):
        config.params = {**config.params, "max_new_tokens": 24, "min_new_tokens": 8}
        config.save()
    rater = make_user(password=PASSWORD)
    # ... a real worker with both configs preloaded, and the real ASGI server
    start_worker(concurrency=2, preload="gemma-plain,gemma-clarify", ready_timeout=600)
    base_url = start_server()
    page = browser_page.page

    # When the rater logs in and starts the study
    log_in(page, base_url, rater.username)
    page.locator("#start-demo").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    conversation_url = page.url

    # ... and holds three turns, voting with the keyboard: "1"; "2" + slight; tie, going on from reply A (the
    # focus moves to "go on from" after "t": Space picks reply A)
    messages = ["Hi! Can you help me plan something?", "It is for a birthday next week.", HOSTILE]
    votes = [
        (["1"], 1, "candidate", "clear"),
        (["2", "s"], 2, "candidate", "slight"),
        (["t", "Space"], None, "tie", ""),
    ]
    shown: list[list[dict[str, Any]]] = []
    streamed: list[dict[str, list[int]]] = []
    timings: list[float] = []
    for turn, (text, (keys, index, _, _)) in enumerate(zip(messages, votes, strict=True)):
        started = time.monotonic()
        cards = send_message(page, text)
        shown.append(cards)
        # While the replies are sampled the vote is not possible yet
        assert page.locator("#vote-submit").is_disabled()
        wait_until_votable(page, timeout_s=300 if turn == 0 else 120)
        timings.append(time.monotonic() - started)
        streamed.append(streaming_seen(page, cards))
        for card in cards:
            assert page.locator(f"#{card['dom']} .cand-text").inner_text().strip(), f"turn {turn}: empty reply"
        expect = f"#{cards[index - 1]['dom']} input[name=choice]" if index else "#vote-form input[value=tie]"
        vote_with_keys(page, keys, expect)
        assert page.url == conversation_url  # the whole session is one page, swapped by htmx
    print(f"turn times (s): {[round(t, 1) for t in timings]}; lengths seen while streaming: {streamed}")

    # Then tokens were seen streaming in: for at least one reply the text grew on screen
    # (two or more lengths) while the reply was still streaming and the vote still disabled
    grew = [lengths for turn in streamed for lengths in turn.values() if len(lengths) >= 2]
    assert grew, f"no reply was seen growing while it streamed: {streamed}"
    assert page.evaluate("window.cgLastToken && window.cgLastToken.length") > 0  # set by the SSE handler

    # ... the hostile message is shown as text on the session page, never as markup
    transcript = page.locator("#session ol.transcript")
    assert transcript.locator("img").count() == 0
    assert transcript.locator("li.msg.user .text").last.inner_text() == HOSTILE

    # When the rater ends the conversation with the survey
    page.locator("details.finish > summary").click()
    page.locator("#finish-form input[name=goal][value=partly]").check()
    page.locator("#finish-form input[name=understanding][value='4']").check()
    page.locator("#finish-form textarea[name=comment]").fill("Fine <b>overall</b>")
    page.locator("#finish-submit").click()

    # Then they land on the transcript: every reply shown, chosen ones marked, branches kept
    page.wait_for_url(re.compile(r"/c/\d+/transcript/$"))
    full = page.locator("ol.transcript.full")
    assert full.locator("li.msg.user").count() == 3
    assert full.locator(".reply").count() == 6
    assert full.locator(".reply.chosen").count() == 3
    assert full.locator(".reply.branch").count() == 3
    assert full.locator("img, b").count() == 0
    assert full.locator("li.msg.user .text").last.inner_text() == HOSTILE
    assert "Goal reached: Partly" in page.locator(".outcome").inner_text()
    assert "Fine <b>overall</b>" in page.locator(".outcome").inner_text()
    assert browser_page.dialogs == [] and browser_page.page_errors == [] and browser_page.bad_responses == []

    # ... and the database holds the tree as lived
    conversation = Conversation.objects.get(rater=rater)
    assert conversation.status == Conversation.Status.COMPLETED
    assert (conversation.outcome_goal, conversation.outcome_understanding) == ("partly", 4)
    assert conversation.outcome_comment == "Fine <b>overall</b>"
    assert conversation.ended_at is not None
    users = list(conversation.turns.filter(role=Turn.Role.USER).order_by("depth"))
    assert [t.text for t in users] == messages
    assistants = list(conversation.turns.filter(role=Turn.Role.ASSISTANT))
    assert len(assistants) == 6
    for reply in assistants:
        assert reply.status == Turn.Status.DONE and reply.text.strip(), reply
        assert reply.attempt == 1 and reply.first_token_at is not None
        assert reply.completion_tokens and 1 <= reply.completion_tokens <= 24  # '\nUser:' may stop it early
        assert not reply.is_rewrite
    for user_turn, cards in zip(users, shown, strict=True):
        children = list(user_turn.children.order_by("position"))
        assert [c.pk for c in children] == [card["pk"] for card in cards]  # displayed in slot order
        assert {c.model_config.name for c in children} == {"gemma-plain", "gemma-clarify"}

    comparisons = list(Comparison.objects.filter(conversation=conversation).order_by("created_at"))
    assert len(comparisons) == 3
    continued = []
    for comparison, user_turn, cards, (_, index, choice, strength) in zip(
        comparisons, users, shown, votes, strict=True
    ):
        assert comparison.parent_id == user_turn.pk
        assert comparison.rater_id == rater.pk
        assert (comparison.choice, comparison.strength) == (choice, strength)
        expected = cards[index - 1]["pk"] if index else None
        assert comparison.chosen_id == expected
        assert comparison.continued_from_id == (expected or cards[0]["pk"])  # the tie: from A, as picked
        assert comparison.decision_ms is not None
        continued.append(comparison.continued_from_id)

    path = selectors.lived_path(conversation)
    assert [t.role for t in path] == ["user", "assistant"] * 3
    assert [t.pk for t in path[0::2]] == [t.pk for t in users]
    assert [t.pk for t in path[1::2]] == continued
    assert conversation.head_id == continued[-1]
    # The unchosen candidates stay in the tree as branches: finished, with no continuation
    branches = [t for t in assistants if t.pk not in continued]
    assert len(branches) == 3
    for branch in branches:
        assert branch.parent_id in {t.pk for t in users}
        assert not branch.children.exists()


def test_hostile_message_is_shown_as_text(start_server, make_user, make_study, broker_url, browser_page):
    """Markup typed as a message stays text on the live page and after a reload (no worker needed)."""
    study = make_study(slug="xss")
    rater = make_user(password=PASSWORD)
    base_url = start_server()
    page = browser_page.page
    log_in(page, base_url, rater.username)
    page.locator("#start-xss").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))

    hostile = HOSTILE + '</textarea><script>window.pwned = 1</script><b id="bold">x</b>'
    send_message(page, hostile)
    for _ in range(2):  # the fragment htmx swapped in, then the full page rendered by the server
        transcript = page.locator("#session ol.transcript")
        assert transcript.locator("li.msg.user .text").inner_text() == hostile
        assert page.locator("#session img, #bold").count() == 0
        assert page.evaluate("window.pwned") is None
        page.reload()
        page.wait_for_selector("#vote-form .candidate")
    assert browser_page.dialogs == [] and browser_page.page_errors == [] and browser_page.bad_responses == []
    conversation = Conversation.objects.get(rater=rater, study=study)
    assert conversation.turns.get(role=Turn.Role.USER).text == hostile
