"""Rating-session services on PostgreSQL: messages, candidates, votes, rewrites, finishing."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from annotate import selectors, services
from annotate.models import Comparison, Conversation, Scenario, Turn
from core.errors import ActionRefused
from tests.helpers import choose, finish_candidates

pytestmark = pytest.mark.django_db


def test_message_creates_k_pending_candidates_and_enqueues_on_commit(
    make_conversation, django_capture_on_commit_callbacks
):
    conversation = make_conversation()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        user_turn = services.message_send(conversation=conversation, text="  Plan a party  ")
    candidates = selectors.candidates_of(user_turn)
    assert user_turn.text == "Plan a party" and user_turn.depth == 0 and user_turn.parent is None
    assert [c.position for c in candidates] == [0, 1]
    assert all(c.status == Turn.Status.PENDING and c.depth == 1 and c.seed is not None for c in candidates)
    assert {c.model_config_id for c in candidates} == set(conversation.study.model_pool.values_list("pk", flat=True))
    assert all(c.params["max_new_tokens"] > 0 for c in candidates)  # parameter snapshot
    assert len(callbacks) == 1  # one on_commit hook enqueues both candidates
    conversation.refresh_from_db()
    assert conversation.head_id == user_turn.pk


def test_resent_message_with_same_key_records_one_turn(make_conversation):
    conversation = make_conversation()
    key = uuid.uuid4()
    first = services.message_send(conversation=conversation, text="Hi", client_key=key)
    again = services.message_send(conversation=conversation, text="Hi", client_key=key)
    assert first.pk == again.pk
    assert conversation.turns.filter(role=Turn.Role.USER).count() == 1
    assert conversation.turns.filter(role=Turn.Role.ASSISTANT).count() == 2


@pytest.mark.parametrize(
    ("text", "status", "fragment"),
    [("   ", 400, "empty"), ("x" * 2001, 413, "limit is 2,000"), ("bad\x00byte", 400, "NUL")],
)
def test_bad_messages_are_refused_and_nothing_is_written(make_conversation, text, status, fragment):
    conversation = make_conversation()
    with pytest.raises(ActionRefused) as refused:
        services.message_send(conversation=conversation, text=text)
    assert refused.value.status == status and fragment in refused.value.message
    assert not conversation.turns.exists()


def test_hostile_html_is_stored_verbatim(make_conversation):
    conversation = make_conversation()
    turn = services.message_send(conversation=conversation, text="<script>alert(1)</script>")
    assert turn.text == "<script>alert(1)</script>"  # escaping is the template's job


def test_next_message_waits_for_a_choice(make_conversation):
    conversation = make_conversation()
    services.message_send(conversation=conversation, text="one")
    with pytest.raises(ActionRefused, match="Choose a reply"):
        services.message_send(conversation=conversation, text="two")


def test_vote_continues_from_chosen_and_keeps_the_other_as_branch(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="one")
    a, b = finish_candidates(user_turn)
    comparison = choose(
        conversation,
        user_turn.pk,
        choice="candidate",
        chosen_id=b.pk,
        strength="slight",
        reason="asks what I meant",
    )
    assert comparison.chosen_id == b.pk and comparison.continued_from_id == b.pk
    assert comparison.strength == "slight" and comparison.decision_ms is not None
    conversation.refresh_from_db()
    assert [t.pk for t in selectors.lived_path(conversation)] == [user_turn.pk, b.pk]
    # The conversation goes on from B; A stays as a branch without children.
    second = services.message_send(conversation=conversation, text="two")
    assert second.parent_id == b.pk and second.depth == 2
    assert not a.children.exists()


def test_double_vote_records_one_comparison(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="one")
    a, _ = finish_candidates(user_turn)
    key = uuid.uuid4()
    kwargs = dict(conversation=conversation, rater=conversation.rater, parent_id=user_turn.pk, idempotency_key=key)
    first = services.comparison_record(choice="candidate", chosen_id=a.pk, **kwargs)
    again = services.comparison_record(choice="candidate", chosen_id=a.pk, **kwargs)
    assert first.pk == again.pk
    assert Comparison.objects.count() == 1
    with pytest.raises(ActionRefused, match="already chose") as refused:
        services.comparison_record(
            choice="tie",
            **{**kwargs, "idempotency_key": uuid.uuid4()},  # a second, different vote
        )
    assert refused.value.status == 409


def test_vote_before_candidates_finish_is_refused(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="one")
    a = selectors.candidates_of(user_turn)[0]
    with pytest.raises(ActionRefused, match="Wait until every reply"):
        choose(
            conversation,
            user_turn.pk,
            choice="candidate",
            chosen_id=a.pk,
        )
    assert not Comparison.objects.exists()


def test_vote_for_a_turn_outside_the_candidates_is_refused(make_conversation):
    conversation = make_conversation()
    other = make_conversation(study=conversation.study)
    user_turn = services.message_send(conversation=conversation, text="one")
    finish_candidates(user_turn)
    foreign = services.message_send(conversation=other, text="x")
    foreign_candidate = finish_candidates(foreign)[0]
    with pytest.raises(ActionRefused, match="Pick one of the replies"):
        choose(
            conversation,
            user_turn.pk,
            choice="candidate",
            chosen_id=foreign_candidate.pk,
        )
    with pytest.raises(ActionRefused, match="not waiting"):
        choose(
            conversation,
            foreign.pk,
            choice="tie",
        )
    assert not Comparison.objects.exists()


def test_rewrite_joins_the_path_and_records_the_preference(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="one")
    a, _ = finish_candidates(user_turn)
    comparison = choose(
        conversation,
        user_turn.pk,
        choice="candidate",
        chosen_id=a.pk,
        rewrite_text="Do you mean a birthday party?",
    )
    rewrite = comparison.continued_from
    assert rewrite.is_rewrite and rewrite.rewrite_of_id == a.pk and rewrite.parent_id == user_turn.pk
    assert rewrite.text == "Do you mean a birthday party?" and rewrite.position == 2
    conversation.refresh_from_db()
    assert conversation.head_id == rewrite.pk
    assert selectors.messages_before(services.message_send(conversation=conversation, text="yes"))[-1] == {
        "role": "assistant",
        "content": "Do you mean a birthday party?",
    }


def test_tie_and_all_bad_continue_from_first_candidate_without_strength(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="one")
    a, _ = finish_candidates(user_turn)
    comparison = choose(
        conversation,
        user_turn.pk,
        choice="all_bad",
        strength="clear",
        continue_from_id=a.pk,
    )
    assert comparison.chosen is None and comparison.strength == "" and comparison.continued_from_id == a.pk


def test_prompt_is_the_whole_lived_path(make_conversation):
    conversation = make_conversation()
    first = services.message_send(conversation=conversation, text="one")
    _, b = finish_candidates(first, ("A1", "B1"))
    choose(
        conversation,
        first.pk,
        choice="candidate",
        chosen_id=b.pk,
    )
    second = services.message_send(conversation=conversation, text="two")
    candidate = selectors.candidates_of(second)[0]
    assert selectors.messages_before(candidate) == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "B1"},
        {"role": "user", "content": "two"},
    ]


def test_turn_limit(make_study, make_conversation):
    study = make_study(max_user_turns=1)
    conversation = make_conversation(study=study)
    first = services.message_send(conversation=conversation, text="one")
    a, _ = finish_candidates(first)
    choose(
        conversation,
        first.pk,
        choice="candidate",
        chosen_id=a.pk,
    )
    with pytest.raises(ActionRefused, match=r"1 message\(s\) per conversation"):
        services.message_send(conversation=conversation, text="two")


def test_finish_records_survey_once(make_conversation):
    conversation = make_conversation()
    with pytest.raises(ActionRefused, match="from 1 to 5"):
        services.conversation_finish(conversation=conversation, goal="yes", understanding="9")
    with pytest.raises(ActionRefused, match="yes, partly or no"):
        services.conversation_finish(conversation=conversation, goal="maybe", understanding="3")
    done = services.conversation_finish(conversation=conversation, goal="partly", understanding="4", comment="ok")
    assert done.status == Conversation.Status.COMPLETED and done.outcome_understanding == 4 and done.ended_at
    again = services.conversation_finish(conversation=conversation, goal="no", understanding="1")
    assert again.outcome_goal == "partly"  # a resend does not overwrite
    with pytest.raises(ActionRefused, match="has ended"):
        services.message_send(conversation=conversation, text="more")


def test_finish_waits_for_pending_choice(make_conversation):
    conversation = make_conversation()
    services.message_send(conversation=conversation, text="one")
    with pytest.raises(ActionRefused, match="Choose a reply"):
        services.conversation_finish(conversation=conversation, goal="yes", understanding="5")


def test_start_resumes_active_then_assigns_least_used_scenario(make_study, make_user):
    study = make_study(scenarios=2, overlap=1)
    alice, bob, carol = make_user(), make_user(), make_user()
    first = services.conversation_start(study=study, rater=alice)
    assert services.conversation_start(study=study, rater=alice).pk == first.pk
    second = services.conversation_start(study=study, rater=bob)
    assert second.scenario_id != first.scenario_id
    with pytest.raises(ActionRefused, match="no scenarios left"):
        services.conversation_start(study=study, rater=carol)


def test_study_without_enabled_models_refuses_clearly(make_study, make_config, make_conversation):
    study = make_study(configs=[make_config(enabled=False)])
    conversation = make_conversation(study=study)
    with pytest.raises(ActionRefused, match="no enabled model") as refused:
        services.message_send(conversation=conversation, text="hi")
    assert refused.value.status == 409
    assert not conversation.turns.exists()


def test_scenario_import_jsonl_and_csv_update_by_external_id(make_study):
    study = make_study(scenarios=0)
    jsonl = b'{"id": "a", "title": "A", "brief": "Brief A", "hidden_intent": "secret", "difficulty": 2}\n\n'
    rows = services.scenario_rows_read(name="s.jsonl", data=jsonl)
    assert services.scenarios_import(study=study, rows=rows) == (1, 0)
    csv_bytes = b"external_id,title,brief,hidden_intent\na,A2,Brief A2,secret2\nb,B,Brief B,\n"
    rows = services.scenario_rows_read(name="s.csv", data=csv_bytes)
    assert services.scenarios_import(study=study, rows=rows) == (1, 1)
    a = Scenario.objects.get(study=study, external_id="a")
    assert (a.title, a.brief, a.hidden_intent) == ("A2", "Brief A2", "secret2")
    assert Scenario.objects.filter(study=study).count() == 2


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("s.jsonl", b'{"id": "a", "brief": "ok"}\n{not json}\n', "Line 2 is not valid JSON"),
        ("s.jsonl", b'["a list"]\n', "not a JSON object"),
        ("s.csv", b"id,title\nx,no brief\n", "'brief' is required"),
        ("s.csv", b"\xff\xfe\x00bad", "not UTF-8"),
    ],
)
def test_scenario_import_rejects_bad_files_whole(make_study, name, data, fragment):
    study = make_study(scenarios=0)
    with pytest.raises(ActionRefused, match=fragment):
        services.scenarios_import(study=study, rows=services.scenario_rows_read(name=name, data=data))
    assert not Scenario.objects.filter(study=study).exists()


def test_runs_on_postgresql():
    assert connection.vendor == "postgresql", "make test must run on PostgreSQL (DATABASE_URL)"
