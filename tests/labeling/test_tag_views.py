"""Tagging views on PostgreSQL: htmx fragments, clear 4xx answers that write nothing, the live session's tag bars."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from annotate import services
from annotate.models import Turn
from labeling import services as labeling
from labeling.models import Label, Tag
from tests.helpers import HTMX, choose, finish_candidates

pytestmark = pytest.mark.django_db
ADD = reverse("labeling:tag_add")


@pytest.fixture
def live(client, make_conversation):
    """A logged-in rater, two user messages, a chosen reply between them, two finished candidates."""
    conversation = make_conversation()
    first = services.message_send(conversation=conversation, text="Can you plan a party?")
    reply, _ = finish_candidates(first, ("Sure: what kind of party?", "Here is a plan: cake."))
    choose(conversation, first.pk, choice="candidate", chosen_id=reply.pk)
    second = services.message_send(conversation=conversation, text="No, I meant a party for KIDS.")
    a, b = finish_candidates(second, ("Do you mean a birthday party?", "Kids love cake."))
    client.force_login(conversation.rater)
    client.turns = {"first": first, "reply": reply, "second": second, "a": a, "b": b}
    return client


def label(name: str) -> Label:
    return labeling.default_taxonomy().labels.get(name=name)


def test_add_a_span_tag_returns_the_turn_tag_bar_with_the_chip(live):
    a = live.turns["a"]
    response = live.post(
        ADD, {"turn": a.pk, "label": label("clarification").pk, "span_start": 14, "span_end": 28}, **HTMX
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="tags-{a.pk}"' in html and 'class="tag-chip confirmed"' in html
    assert '<q class="tag-span">birthday party</q>' in html
    tag = Tag.objects.get()
    assert (tag.turn_id, tag.task, tag.span_start, tag.span_end) == (a.pk, "live", 14, 28)
    assert a.text[tag.span_start : tag.span_end] == "birthday party"


def test_add_by_label_name_and_the_same_tag_twice_stores_one(live):
    b = live.turns["b"]
    for _ in range(2):
        assert live.post(ADD, {"turn": b.pk, "label": "over-response"}, **HTMX).status_code == 200
    assert Tag.objects.filter(turn=b, label__name="over-response").count() == 1


def test_feedback_on_a_user_turn_links_the_reply_it_reacts_to(live):
    second, reply = live.turns["second"], live.turns["reply"]
    response = live.post(ADD, {"turn": second.pk, "label": "rephrase", "linked_turn": reply.pk}, **HTMX)
    assert response.status_code == 200
    assert Tag.objects.get().linked_turn_id == reply.pk
    assert "→ reply" in response.content.decode()


def test_remove_and_decide_return_the_bar_without_the_chip(live):
    a = live.turns["a"]
    tag = labeling.tag_add(rater=a.conversation.rater, turn_id=a.pk, label="acknowledgment")
    response = live.post(reverse("labeling:tag_remove", args=[tag.pk]), **HTMX)
    assert response.status_code == 200 and "tag-chip" not in response.content.decode()
    assert not Tag.objects.exists()

    rater = a.conversation.rater
    suggestions = [
        Tag.objects.create(turn=a, label=label(name), rater=rater, source="suggestion", status="suggested")
        for name in ("clarification", "follow-up")
    ]
    html = live.get(reverse("annotate:conversation", args=[a.conversation_id]), **HTMX).content.decode()
    assert html.count('class="tag-chip suggested"') == 2 and "tag-accept" in html
    decide = reverse("labeling:suggestion_decide", args=[suggestions[0].pk])
    response = live.post(decide, {"accept": "1"}, **HTMX)
    assert response.status_code == 200 and 'class="tag-chip confirmed"' in response.content.decode()
    response = live.post(reverse("labeling:suggestion_decide", args=[suggestions[1].pk]), {"accept": "0"}, **HTMX)
    assert response.content.decode().count('class="tag-chip ') == 1
    assert dict(Tag.objects.values_list("label__name", "status")) == {
        "clarification": "confirmed",
        "follow-up": "rejected",
    }


def refused(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.content
    assert response["HX-Retarget"] == "#errors" and response["HX-Reswap"] == "innerHTML"
    assert fragment in response.content.decode()


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        ({"label": "no-such-label"}, 400, "Unknown label"),
        ({"label": "rephrase"}, 400, "not used on assistant turns"),
        ({"label": "clarification", "span_start": 0, "span_end": 999}, 400, "outside the turn"),
        ({"label": "clarification", "span_start": 5, "span_end": 5}, 400, "outside the turn"),
        ({"label": "clarification", "span_start": -1, "span_end": 3}, 400, "outside the turn"),
        ({"label": "clarification", "span_start": "abc", "span_end": 3}, 400, "span_start must be a whole number"),
        ({"label": "topic-switch", "span_start": 0, "span_end": 3}, 400, "whole turn"),
        ({"label": "repair", "linked_turn": "1.5"}, 400, "linked_turn must be a whole number"),
        ({"label": ""}, 400, "which label"),
        # "²".isdigit() is True but int("²") fails; NUL cannot reach PostgreSQL; digits past 64 bits
        ({"label": "²"}, 400, "Unknown label"),
        ({"label": "clari\x00fication"}, 400, "Unknown label"),
        ({"label": "9" * 30}, 400, "Unknown label"),
        ({"label": "clarification", "span_start": "²", "span_end": 3}, 400, "span_start must be a whole number"),
        ({"label": "clarification", "span_start": "9" * 30, "span_end": 3}, 400, "span_start must be a whole number"),
    ],
)
def test_bad_tags_are_refused_with_a_message_and_nothing_written(live, data, status, fragment):
    refused(live.post(ADD, {"turn": live.turns["a"].pk, **data}, **HTMX), status, fragment)
    assert not Tag.objects.exists()


def test_malformed_or_missing_turn_is_400(live):
    refused(live.post(ADD, {"turn": "x1", "label": "clarification"}, **HTMX), 400, "turn must be a whole number")
    refused(live.post(ADD, {"label": "clarification"}, **HTMX), 400, "which turn")
    refused(live.post(reverse("labeling:suggestion_decide", args=[1]), {"accept": "maybe"}, **HTMX), 400, "accept=1")
    assert not Tag.objects.exists()


def test_link_to_another_conversations_turn_is_refused(live, make_conversation):
    other = make_conversation()
    foreign = services.message_send(conversation=other, text="elsewhere")
    data = {"turn": live.turns["a"].pk, "label": "repair", "linked_turn": foreign.pk}
    refused(live.post(ADD, data, **HTMX), 400, "not part of this conversation")
    data["linked_turn"] = live.turns["b"].pk  # a sibling is not an earlier turn
    refused(live.post(ADD, data, **HTMX), 400, "earlier turn")
    assert not Tag.objects.exists()


def test_another_raters_turn_and_tag_are_404(live, make_conversation, make_user):
    other = make_conversation()
    user_turn = services.message_send(conversation=other, text="not yours")
    theirs = finish_candidates(user_turn)[0]
    refused(live.post(ADD, {"turn": theirs.pk, "label": "clarification"}, **HTMX), 404, "No such turn")
    tag = labeling.tag_add(rater=other.rater, turn_id=theirs.pk, label="acknowledgment")
    refused(live.post(reverse("labeling:tag_remove", args=[tag.pk]), **HTMX), 404, "No such tag")
    refused(live.post(reverse("labeling:suggestion_decide", args=[tag.pk]), {"accept": "1"}, **HTMX), 404, "No such")
    assert list(Tag.objects.values_list("pk", flat=True)) == [tag.pk]


def test_pending_candidate_cannot_be_tagged_yet(live):
    a = live.turns["a"]
    Turn.objects.filter(pk=a.pk).update(status=Turn.Status.STREAMING)
    refused(live.post(ADD, {"turn": a.pk, "label": "clarification"}, **HTMX), 409, "finished")
    assert not Tag.objects.exists()


def test_plain_form_post_redirects_back_and_takes_turn_from_the_query(live):
    a = live.turns["a"]
    page = reverse("annotate:conversation", args=[a.conversation_id])
    response = live.post(f"{ADD}?turn={a.pk}&task=live", {"label": label("acknowledgment").pk, "choice": "tie"})
    assert response.status_code == 302 and response["Location"] == page
    response = live.post(ADD, {"turn": a.pk, "label": "over-response"}, HTTP_REFERER=f"http://testserver{page}?x=1")
    assert response.status_code == 302 and response["Location"] == f"http://testserver{page}?x=1"
    response = live.post(ADD, {"turn": a.pk, "label": "follow-up"}, HTTP_REFERER="https://evil.example/")
    assert response["Location"] == page
    assert Tag.objects.count() == 3
    response = live.post(ADD, {"turn": a.pk, "label": "nope"})
    assert response.status_code == 400 and "Unknown label" in response.content.decode()


def test_offsets_count_line_breaks_as_the_browser_shows_them(live):
    a = live.turns["a"]
    Turn.objects.filter(pk=a.pk).update(text="Hi!\r\nDo you mean a birthday party?")
    # The page shows "Hi!\nDo you mean…": "birthday" starts at 18 there, at 19 in the stored text.
    response = live.post(ADD, {"turn": a.pk, "label": "clarification", "span_start": 18, "span_end": 26}, **HTMX)
    assert response.status_code == 200
    tag = Tag.objects.get()
    assert "Hi!\r\nDo you mean a birthday party?"[tag.span_start : tag.span_end] == "birthday"


def test_get_is_not_allowed_and_login_is_required(client, live):
    assert live.get(ADD).status_code == 405
    client.logout()
    response = client.post(ADD, {"turn": live.turns["a"].pk, "label": "clarification"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_session_fragment_shows_tag_bars_on_done_candidates_and_the_latest_user_turn(live):
    a, b, second, first = (live.turns[k] for k in ("a", "b", "second", "first"))
    Turn.objects.filter(pk=b.pk).update(status=Turn.Status.STREAMING, text="Kids")
    labeling.tag_add(rater=a.conversation.rater, turn_id=a.pk, label="clarification", span_start=14, span_end=28)
    html = live.get(reverse("annotate:conversation", args=[a.conversation_id]), **HTMX).content.decode()
    assert f'id="tags-{a.pk}"' in html and f'id="tags-{b.pk}"' not in html  # b is still being written
    assert f'id="tags-{second.pk}"' in html and f'id="tags-{first.pk}"' not in html  # no reply before the first
    bar = re.search(rf'<div class="tag-bar" id="tags-{a.pk}".*?</div>\s*</div>', html, re.S).group(0)
    keys = re.findall(r'data-key="(.)"', bar)
    assert keys == ["c", "a", "f", "u", "p", "w", "o", "g", "0"]  # the labels for assistant turns, in order
    assert 'title="A question that checks' in bar and "e.g. By car?" in bar  # definition and examples on hover
    assert '<q class="tag-span">birthday party</q>' in bar
    user_bar = re.search(rf'<div class="tag-bar" id="tags-{second.pk}".*?</div>\s*</div>', html, re.S).group(0)
    assert 'data-key="e"' in user_bar and 'data-key="o"' not in user_bar
    # The link select offers the turns above, defaulting to the reply the message reacts to.
    assert re.search(rf'<option value="{live.turns["reply"].pk}" selected>', user_bar)


def test_full_page_shows_the_tagging_legend(live):
    html = live.get(reverse("annotate:conversation", args=[live.turns["a"].conversation_id])).content.decode()
    assert "labeling/tagging.js" in html and "<kbd>e</kbd> Rephrase" in html


def test_earlier_messages_fold_their_labels_away_also_after_tagging(live):
    second, a = live.turns["second"], live.turns["a"]
    conversation = a.conversation
    choose(conversation, second.pk, choice="candidate", chosen_id=a.pk)
    third = services.message_send(conversation=conversation, text="Yes, for my son.")
    html = live.get(reverse("annotate:conversation", args=[conversation.pk]), **HTMX).content.decode()
    assert html.count('<details class="tag-more">') == 1  # the second message's; the third shows its labels
    assert f'id="tags-{third.pk}"' in html
    response = live.post(ADD, {"turn": second.pk, "label": "hedging"}, **HTMX)
    assert '<details class="tag-more">' in response.content.decode()
    response = live.post(ADD, {"turn": third.pk, "label": "positive", "linked_turn": a.pk}, **HTMX)
    assert response.status_code == 200 and "tag-more" not in response.content.decode()
