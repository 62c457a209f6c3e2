"""Suggested tags on PostgreSQL with the real all-MiniLM-L6-v2 model, and how raters receive them."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from annotate import generation, selectors, services
from annotate.models import Conversation, Turn
from labeling import receivers, suggestions
from labeling import services as labeling
from labeling.models import Tag
from labeling.tasks import suggest_tags_task
from tests.helpers import choose, finish_candidates
from workers.backends import GenerationResult

pytestmark = pytest.mark.django_db

REQUEST = "Can you recommend a good restaurant for dinner tonight?"
REPHRASED = "Could you suggest a nice place to eat dinner this evening?"
UNRELATED = "What is the capital of Australia?"


def second_message(conversation: Conversation, first: str, second: str) -> tuple[Turn, Turn]:
    """The rater says `first`, picks reply A, then says `second`. Returns (reply A, second user turn)."""
    user_turn = services.message_send(conversation=conversation, text=first)
    a, _ = finish_candidates(user_turn, ("Sure, what kind of food?", "Here is a list."))
    choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    return a, services.message_send(conversation=conversation, text=second)


def suggested(turn: Turn) -> dict[str, Tag]:
    return {t.label.name: t for t in Tag.objects.filter(turn=turn, source=Tag.Source.SUGGESTION)}


# --- the embedding model -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "low", "high"),
    [
        (REQUEST, REPHRASED, 0.8, 0.9),
        ("How do I fix my bike chain?", "My bicycle chain keeps falling off, how do I repair it?", 0.8, 0.85),
        ("Book me a flight to Paris next Monday", "Actually, I also need a hotel near the Louvre", 0.3, 0.5),
        (REQUEST, UNRELATED, -0.1, 0.3),
    ],
)
def test_similarities_sit_on_the_documented_side_of_the_threshold(first, second, low, high):
    score = suggestions.similarity(first, second)
    assert low <= score <= high
    assert (score >= suggestions.REPHRASE_THRESHOLD) == (low >= suggestions.REPHRASE_THRESHOLD)


def test_model_is_loaded_once_per_process():
    suggestions.embed(["warm up"])
    loaded = suggestions._embedding_model()
    suggestions.similarity("a b c", "d e f")
    assert suggestions._embedding_model() is loaded


# --- rephrase and thanks on user turns -----------------------------------------------------


def test_rephrased_message_gets_a_rephrase_linked_to_the_reply_between(make_conversation):
    conversation = make_conversation()
    reply, second = second_message(conversation, REQUEST, REPHRASED)

    made = suggestions.suggest_for_turn(turn_id=second.pk)

    assert [t.label.name for t in made] == ["rephrase"]
    tag = made[0]
    assert tag.rater_id == conversation.rater_id and tag.task == Tag.Task.LIVE
    assert tag.source == Tag.Source.SUGGESTION and tag.status == Tag.Status.SUGGESTED
    assert tag.linked_turn_id == reply.pk and "similarity 0.8" in tag.suggestion_note


def test_unrelated_or_short_or_first_messages_get_no_rephrase(make_conversation):
    conversation = make_conversation()
    _, unrelated = second_message(conversation, REQUEST, UNRELATED)
    assert suggestions.suggest_for_turn(turn_id=unrelated.pk) == []
    first = conversation.turns.get(depth=0)
    assert suggestions.suggest_for_turn(turn_id=first.pk) == []

    other = make_conversation()
    _, short = second_message(other, "yes", "yes")  # identical, but too short to mean anything
    assert suggestions.suggest_for_turn(turn_id=short.pk) == []


def test_thanks_is_suggested_as_positive_feedback_on_the_reply(make_conversation):
    conversation = make_conversation()
    reply, thanks = second_message(conversation, REQUEST, "Thanks, that is perfect!")
    made = suggestions.suggest_for_turn(turn_id=thanks.pk)
    assert [(t.label.name, t.linked_turn_id) for t in made] == [("positive", reply.pk)]


def test_suggesting_twice_adds_nothing_and_keeps_the_raters_decision(make_conversation):
    conversation = make_conversation()
    _, second = second_message(conversation, REQUEST, REPHRASED)
    first_run = suggestions.suggest_for_turn(turn_id=second.pk)
    assert [t.pk for t in suggestions.suggest_for_turn(turn_id=second.pk)] == [t.pk for t in first_run]
    labeling.suggestion_decide(rater=conversation.rater, tag_id=first_run[0].pk, accept=False)

    assert suggestions.suggest_for_turn(turn_id=second.pk) == []

    tags = Tag.objects.filter(turn=second)
    assert tags.count() == 1 and tags.get().status == Tag.Status.REJECTED


def test_rater_tag_already_there_is_not_turned_into_a_suggestion(make_conversation):
    conversation = make_conversation()
    reply, second = second_message(conversation, REQUEST, REPHRASED)
    own = labeling.tag_add(rater=conversation.rater, turn_id=second.pk, label="rephrase", linked_turn_id=reply.pk)
    assert suggestions.suggest_for_turn(turn_id=second.pk) == []
    own.refresh_from_db()
    assert own.source == Tag.Source.RATER and own.status == Tag.Status.CONFIRMED


def test_finished_conversation_gets_no_suggestions(make_conversation):
    conversation = make_conversation()
    _, second = second_message(conversation, REQUEST, REPHRASED)
    Conversation.objects.filter(pk=conversation.pk).update(status=Conversation.Status.COMPLETED)
    assert suggestions.suggest_for_turn(turn_id=second.pk) == []


# --- clarification on assistant candidates --------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "user", "echoed"),
    [
        ("Do you mean a birthday party?", "Can you plan a party?", {"party"}),
        ("Sure. Which restaurants have you tried already?", REQUEST, {"restaurant"}),
        ("Happy to help!\nShould the dinner be vegetarian?", REQUEST, {"dinner"}),
        ("Here is a plan: cake, games, music.", "Can you plan a party?", set()),  # not a question
        ("Anything else I can do for you?", "Can you plan a party?", set()),  # asks, echoes nothing
        ("Is the party for kids? Here is a plan.", "Can you plan a party?", set()),  # question not at the end
        ("What do you mean?", "What do you mean?", set()),  # only stop words in common
    ],
)
def test_clarification_heuristic(reply, user, echoed):
    assert suggestions.echoing_question(reply, user) == echoed


def test_candidate_asking_about_the_users_words_gets_a_clarification(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Can you plan a party?")
    asks, plans = finish_candidates(user_turn, ("Do you mean a birthday party?", "Here is a plan: cake."))

    made = suggestions.suggest_for_turn(turn_id=asks.pk)

    assert [(t.label.name, t.linked_turn_id, t.turn_id) for t in made] == [("clarification", None, asks.pk)]
    assert "party" in made[0].suggestion_note
    assert suggestions.suggest_for_turn(turn_id=plans.pk) == []


def test_pending_candidate_gets_no_suggestion(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Can you plan a party?")
    candidate = selectors.candidates_of(user_turn)[0]
    Turn.objects.filter(pk=candidate.pk).update(text="Do you mean a birthday party?")
    assert suggestions.suggest_for_turn(turn_id=candidate.pk) == []


# --- wiring: message_send enqueues, the task and the worker run the rules ---------------------


def test_message_send_enqueues_suggestions_for_the_user_turn_after_commit(
    make_conversation, monkeypatch, django_capture_on_commit_callbacks
):
    short = {"annotate.tasks.sample_turn_task": "sample", "labeling.tasks.suggest_tags_task": "suggest"}
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(services, "task_send", lambda name, pk, **_: sent.append((short[name], pk)))
    conversation = make_conversation()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        user_turn = services.message_send(conversation=conversation, text="Plan a party")
    candidates = selectors.candidates_of(user_turn)
    assert len(callbacks) == 1
    assert sent == [("sample", candidates[0].pk), ("sample", candidates[1].pk), ("suggest", user_turn.pk)]


def test_task_runs_the_rules(make_conversation):
    conversation = make_conversation()
    _, second = second_message(conversation, REQUEST, REPHRASED)
    assert suggest_tags_task.run(second.pk) == 1
    assert suggest_tags_task.run(second.pk) == 1  # redelivered: still one tag
    assert Tag.objects.filter(turn=second).count() == 1


def test_worker_suggests_on_a_candidate_when_it_finishes(make_conversation, monkeypatch):
    class Asker:
        def generate(self, request, on_text):
            on_text("Do you mean")
            return GenerationResult(text="Do you mean a birthday party?", prompt_tokens=5, completion_tokens=7)

    monkeypatch.setattr(generation, "backend_for", lambda config: Asker())
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Can you plan a party?")
    candidate = selectors.candidates_of(user_turn)[0]

    assert generation.turn_generate(turn_id=candidate.pk) == "done"

    assert set(suggested(candidate)) == {"clarification"}


def test_failing_suggestions_do_not_fail_the_reply(make_conversation, monkeypatch):
    class Replier:
        def generate(self, request, on_text):
            return GenerationResult(text="Do you mean a birthday party?")

    def broken(**_):
        raise RuntimeError("no model here")

    monkeypatch.setattr(generation, "backend_for", lambda config: Replier())
    monkeypatch.setattr(receivers, "suggest_for_turn", broken)
    conversation = make_conversation()
    candidate = selectors.candidates_of(services.message_send(conversation=conversation, text="Plan a party"))[0]
    assert generation.turn_generate(turn_id=candidate.pk) == "done"
    candidate.refresh_from_db()
    assert candidate.status == Turn.Status.DONE


# --- acceptance ----------------------------------------------------------------------------


def test_acceptance_rates_count_decisions_per_label(make_study, make_conversation, capsys):
    study = make_study(scenarios=4)
    decisions = {"Thanks, that is perfect!": True, "Thank you so much": False, "thx!": None}
    for text, accept in decisions.items():
        conversation = make_conversation(study=study)
        _, thanks = second_message(conversation, REQUEST, text)
        (tag,) = suggestions.suggest_for_turn(turn_id=thanks.pk)
        if accept is not None:
            labeling.suggestion_decide(rater=conversation.rater, tag_id=tag.pk, accept=accept)
    conversation = make_conversation(study=study)
    _, rephrase = second_message(conversation, REQUEST, REPHRASED)
    (tag,) = suggestions.suggest_for_turn(turn_id=rephrase.pk)
    labeling.tag_add(rater=conversation.rater, turn_id=rephrase.pk, label="rephrase")  # confirming by tagging

    rows = {row["label"]: row for row in suggestions.acceptance_rates(study)}

    assert set(rows) == {"rephrase", "positive"}
    counts = ("suggested", "accepted", "rejected", "pending", "rate")
    assert [rows["positive"][k] for k in counts] == [3, 1, 1, 1, 0.5]
    assert (rows["rephrase"]["accepted"], rows["rephrase"]["rate"]) == (1, 1.0)
    assert suggestions.acceptance_rates(make_study()) == []

    call_command("suggestion_report", study.slug)
    out = capsys.readouterr().out
    assert study.slug in out and "positive" in out and "50%" in out and "100%" in out


def test_suggestion_report_help_and_unknown_study(capsys):
    from django.core.management import CommandError

    with pytest.raises(SystemExit):
        call_command("suggestion_report", "--help")
    assert "acceptance rate" in capsys.readouterr().out
    with pytest.raises(CommandError, match="No study"):
        call_command("suggestion_report", "nope")


def test_real_worker_suggests_a_rephrase_offline(start_worker, make_conversation):
    from tests.processes import wait_until

    # Given a rater who rephrased their request (published to Redis on commit)
    conversation = make_conversation()
    reply, second = second_message(conversation, REQUEST, REPHRASED)

    # When a worker without network access picks the tasks up
    start_worker(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    # Then the rephrase is suggested, linked to the reply in between
    tag = wait_until(lambda: Tag.objects.filter(turn=second, label__name="rephrase").first(), timeout=120)
    assert tag.status == Tag.Status.SUGGESTED and tag.linked_turn_id == reply.pk
