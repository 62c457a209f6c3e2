"""Attention checks planted among a message's candidates: drawn at `Study.attention_check_rate`, never
sampled, scored on the vote, never continued from, and counted towards the rater's gold items passed."""

from __future__ import annotations

import pytest

from annotate import services
from annotate.models import Comparison, Participant, Turn
from tests.helpers import choose, finish_candidates

pytestmark = pytest.mark.django_db


def _send(conversation, text="Please help me plan a birthday party"):
    user_turn = services.message_send(conversation=conversation, text=text)
    return user_turn, list(Turn.objects.filter(parent=user_turn).order_by("position"))


def test_rate_one_always_plants_exactly_one_and_never_samples_it(
    make_study, make_conversation, django_capture_on_commit_callbacks, monkeypatch
):
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(services, "task_send", lambda name, *args, **_: sent.append((name, *args)))
    study = make_study(attention_check_rate=1.0, candidates_per_turn=3, max_user_turns=20)
    conversation = make_conversation(study=study)
    slots = set()
    for _ in range(8):
        with django_capture_on_commit_callbacks(execute=True):
            user_turn, candidates = _send(conversation)
        planted = [c for c in candidates if c.is_attention_check]
        assert len(candidates) == 3 and len(planted) == 1
        check = planted[0]
        assert check.status == Turn.Status.DONE and check.model_config_id is None and check.finished_at
        assert sorted(check.text.split()) == sorted(["Please", "help", "me", "plan", "a", "birthday", "party"])
        assert check.text != "Please help me plan a birthday party"  # shuffled: word salad
        sampled = [args[0] for name, *args in sent if name == services.SAMPLE_TASK]
        assert check.pk not in sampled and len(sampled) == 2  # only the real candidates go to a worker
        sent.clear()
        slots.add(check.position)
        real = [c for c in candidates if not c.is_attention_check]
        for turn in real:
            Turn.objects.filter(pk=turn.pk).update(status=Turn.Status.DONE, text=f"real {turn.position}")
        choose(conversation, user_turn.pk, choice="candidate", chosen_id=real[0].pk)
        conversation.refresh_from_db()
    assert len(slots) > 1  # the planted slot is drawn, not always the same


def test_rate_zero_never_plants_and_one_candidate_never_plants(make_study, make_conversation):
    for study in (make_study(attention_check_rate=0.0), make_study(attention_check_rate=1.0, candidates_per_turn=1)):
        conversation = make_conversation(study=study)
        for _ in range(5):
            user_turn, candidates = _send(conversation)
            assert not any(c.is_attention_check for c in candidates)
            first, *_ = finish_candidates(user_turn)
            choose(conversation, user_turn.pk, choice="tie", continue_from_id=first.pk)
            conversation.refresh_from_db()
        assert not Comparison.objects.filter(conversation=conversation, attention_passed__isnull=False).exists()


def test_a_short_message_gets_the_fixed_nonsense_reply(make_study, make_conversation):
    conversation = make_conversation(study=make_study(attention_check_rate=1.0))
    _, candidates = _send(conversation, text="Hi there")
    assert [c.text for c in candidates if c.is_attention_check] == [services.ATTENTION_FALLBACK]


def _planted_round(conversation):
    """A message whose candidates hold a planted check; the real candidate finished. (real, planted)."""
    user_turn, candidates = _send(conversation)
    planted = next(c for c in candidates if c.is_attention_check)
    real = next(c for c in candidates if not c.is_attention_check)
    Turn.objects.filter(pk=real.pk).update(status=Turn.Status.DONE, text="A real reply")
    return user_turn, real, planted


@pytest.mark.parametrize(
    "vote,passed",
    [("real", True), ("all_bad", True), ("planted", False), ("tie", False)],
)
def test_the_vote_is_scored_and_the_conversation_continues_from_a_real_reply(make_study, make_user, vote, passed):
    study = make_study(attention_check_rate=1.0)
    rater = make_user()
    conversation = services.conversation_start(study=study, rater=rater)
    user_turn, real, planted = _planted_round(conversation)
    if vote in ("real", "planted"):
        comparison = choose(
            conversation, user_turn.pk, choice="candidate", chosen_id=(real if vote == "real" else planted).pk
        )
    else:
        # going on from the planted reply is asked for (the form offers it like any reply): the real one is used
        comparison = choose(conversation, user_turn.pk, choice=vote, continue_from_id=planted.pk)
    assert comparison.attention_passed is passed
    assert comparison.continued_from_id == real.pk  # never the planted reply
    conversation.refresh_from_db()
    assert conversation.head_id == real.pk
    if vote == "planted":
        assert comparison.chosen_id == planted.pk  # what the rater did is kept
    participant = Participant.objects.filter(study=study, user=rater).first()  # made on demand
    assert (participant.gold_passed if participant else 0) == (1 if passed else 0)


def test_a_rewrite_after_choosing_the_planted_reply_is_credited_to_a_real_one(make_study, make_conversation):
    conversation = make_conversation(study=make_study(attention_check_rate=1.0))
    user_turn, real, planted = _planted_round(conversation)
    comparison = choose(
        conversation, user_turn.pk, choice="candidate", chosen_id=planted.pk, rewrite_text="My own better reply"
    )
    rewrite = Turn.objects.get(pk=comparison.continued_from_id)
    assert rewrite.is_rewrite and rewrite.rewrite_of_id == real.pk and rewrite.model_config_id == real.model_config_id
    assert comparison.attention_passed is False
