"""Quality control: gold scoring and the qualification before work (hand-made raters and panel participants),
per-rater figures, and excluding a rater (dashboard, re-queue of scenarios and reviews, admin)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from annotate import panel, services
from annotate.models import Comparison, Conversation, Participant, Study, Turn
from core.errors import ActionRefused
from labeling import agreement
from labeling import services as labeling
from labeling.dashboard import rater_figures, study_dashboard
from labeling.models import GoldAnswer, GoldItem, Label, ReviewAssignment
from labeling.selectors import labels_for
from tests.helpers import choose, finish_candidates, finished_conversation, staff_with

pytestmark = pytest.mark.django_db


def label_ids(study: Study, *names: str) -> list[int]:
    found = {label.name: label.pk for label in labels_for(study)}
    return [found[name] for name in names]


def gold(study: Study, expected: tuple[str, ...], kind: str = GoldItem.Kind.QUALIFICATION, n: int = 0) -> GoldItem:
    item = GoldItem.objects.create(
        study=study, kind=kind, context=f"Plan a party {n}", reply=f"What kind of party? {n}", order=n,
        explanation="It asks before answering.",
    )  # fmt: skip
    item.expected_labels.set(label_ids(study, *expected))
    return item


@pytest.fixture
def qualified_study(make_study: Any) -> Study:
    """Three qualification items; the pass mark is two of three."""
    study = make_study(qualification_pass_mark=0.6)
    gold(study, ("clarification",), n=1)
    gold(study, ("clarification", "acknowledgment"), n=2)
    gold(study, (), n=3)  # no label applies
    return study


def answer(study: Study, rater: Any, names_per_item: list[tuple[str, ...]]) -> None:
    for item, names in zip(GoldItem.objects.filter(study=study).order_by("order"), names_per_item, strict=True):
        labeling.qualification_answer(study=study, rater=rater, item_id=item.pk, label_ids=label_ids(study, *names))


# --- scoring -----------------------------------------------------------------------------------


def test_gold_score_is_jaccard_and_passes_at_one_half():
    assert labeling.gold_score([1], [1]) == (1.0, True)
    assert labeling.gold_score([], []) == (1.0, True)  # "no label applies", answered with none
    assert labeling.gold_score([1, 2], [1]) == (0.5, True)  # one extra label: at the mark
    assert labeling.gold_score([1], [1, 2]) == (0.5, True)
    assert labeling.gold_score([1, 3], [1, 2]) == (pytest.approx(1 / 3), False)
    assert labeling.gold_score([2], [1]) == (0.0, False)
    assert labeling.gold_score([1], []) == (0.0, False)


def test_per_coder_agreement_maths():
    units = {1: {"a": "x", "b": "x", "c": "y"}, 2: {"a": "x", "b": "y"}, 3: {"a": "x"}}
    # Unit 1: a's others are split (x, y), so x is one of their top values; unit 2: b said y, not x.
    assert agreement.majority_agreement(units) == {"a": (1, 2), "b": (1, 2), "c": (0, 1)}
    sets = {1: {"a": frozenset({1}), "b": frozenset({1, 2})}}
    similarity = agreement.coder_similarity(sets, agreement.masi_distance)
    assert similarity["a"] == similarity["b"] == (pytest.approx(1 - agreement.masi_distance({1}, {1, 2})), 1)


def test_passing_at_the_pass_mark_qualifies(qualified_study, make_user):
    rater = make_user()
    answer(qualified_study, rater, [("clarification",), ("clarification",), ("acknowledgment",)])
    participant = Participant.objects.get(study=qualified_study, user=rater)
    assert participant.qualification_score == pytest.approx(2 / 3) and participant.qualified_at is not None
    assert participant.status == Participant.Status.ACTIVE
    assert participant.gold_passed == 2  # the bonus is paid on gold items passed
    assert [a.passed for a in GoldAnswer.objects.filter(rater=rater).order_by("item__order")] == [True, True, False]


def test_failing_below_the_pass_mark_screens_out(qualified_study, make_user):
    rater = make_user()
    answer(qualified_study, rater, [("acknowledgment",), ("clarification",), ("acknowledgment",)])
    participant = Participant.objects.get(study=qualified_study, user=rater)
    assert participant.qualification_score == pytest.approx(1 / 3) and participant.qualified_at is None
    assert participant.status == Participant.Status.SCREENED_OUT
    assert participant.screenout_reason == labeling.QUALIFICATION_FAILED
    with pytest.raises(ActionRefused) as refused:
        services.conversation_start(study=qualified_study, rater=rater)
    assert refused.value.status == 403 and refused.value.link.endswith("/qualify/")


def test_the_first_answer_stands_and_unknown_labels_are_refused(qualified_study, make_user, make_study):
    rater = make_user()
    item = GoldItem.objects.filter(study=qualified_study).order_by("order").first()
    first = labeling.qualification_answer(
        study=qualified_study, rater=rater, item_id=item.pk, label_ids=label_ids(qualified_study, "clarification")
    )
    again = labeling.qualification_answer(study=qualified_study, rater=rater, item_id=item.pk, label_ids=[])
    assert again.pk == first.pk and again.passed
    user_only = Label.objects.filter(taxonomy__slug="default", roles=Label.Roles.USER).first()
    second = GoldItem.objects.filter(study=qualified_study).order_by("order")[1]
    for bad in ([user_only.pk], ["clarification"], ["²"], [10**17]):
        with pytest.raises(ActionRefused, match="Unknown label"):
            labeling.qualification_answer(study=qualified_study, rater=rater, item_id=second.pk, label_ids=bad)
    other = gold(make_study(), ("clarification",))
    with pytest.raises(ActionRefused) as refused:
        labeling.qualification_answer(study=qualified_study, rater=rater, item_id=other.pk, label_ids=[])
    assert refused.value.status == 404


# --- enforced before work ----------------------------------------------------------------------


def test_work_waits_for_the_qualification_and_the_pages_link_to_it(qualified_study, make_user, client):
    rater = make_user()
    with pytest.raises(ActionRefused) as refused:
        services.conversation_start(study=qualified_study, rater=rater)
    assert refused.value.status == 403
    assert refused.value.link == reverse("labeling:qualify", args=[qualified_study.slug])
    assert not Conversation.objects.filter(rater=rater).exists()

    client.force_login(rater)
    home = client.get(reverse("annotate:home")).content.decode()
    assert f'id="qualify-{qualified_study.slug}"' in home and f'id="start-{qualified_study.slug}"' not in home
    response = client.post(reverse("annotate:study_start", args=[qualified_study.slug]))
    assert response.status_code == 403
    assert reverse("labeling:qualify", args=[qualified_study.slug]) in response.content.decode()  # the link

    # The page: one item at a time, checkboxes for the reply labels.
    url = reverse("labeling:qualify", args=[qualified_study.slug])
    page = client.get(url).content.decode()
    assert "Item 1 of 3" in page and 'type="checkbox" name="labels"' in page and "What kind of party? 1" in page
    items = list(GoldItem.objects.filter(study=qualified_study).order_by("order"))
    for item, names in zip(items, [("clarification",), ("clarification", "acknowledgment"), ()], strict=True):
        response = client.post(url, {"item": item.pk, "labels": label_ids(qualified_study, *names)})
        assert response.status_code == 302 and response["Location"] == url
    page = client.get(url).content.decode()
    assert 'id="qualify-passed"' in page and "100% of the items" in page and "It asks before answering." in page
    home = client.get(reverse("annotate:home")).content.decode()
    assert f'id="start-{qualified_study.slug}"' in home
    assert client.post(reverse("annotate:study_start", args=[qualified_study.slug])).status_code == 302
    assert Conversation.objects.filter(rater=rater, study=qualified_study).exists()


def test_a_failed_rater_sees_the_not_qualified_page(qualified_study, make_user, client):
    rater = make_user()
    client.force_login(rater)
    url = reverse("labeling:qualify", args=[qualified_study.slug])
    for item in GoldItem.objects.filter(study=qualified_study).order_by("order"):
        client.post(url, {"item": item.pk, "labels": label_ids(qualified_study, "follow-up")})
    page = client.get(url).content.decode()
    assert 'id="qualify-failed"' in page and "0 of 3 items" in page and "Start or resume" not in page
    first = GoldItem.objects.filter(study=qualified_study).order_by("order").first()
    client.post(url, {"item": first.pk, "labels": label_ids(qualified_study, "clarification")})  # a resend
    assert not GoldAnswer.objects.get(item=first, rater=rater).passed  # the first answer stands


def test_a_study_without_qualification_items_starts_at_once(make_study, make_user, client):
    study = make_study()
    gold(study, ("clarification",), kind=GoldItem.Kind.ATTENTION)  # attention items do not gate the work
    rater = make_user()
    assert services.conversation_start(study=study, rater=rater).pk
    client.force_login(rater)
    assert 'id="qualify-none"' in client.get(reverse("labeling:qualify", args=[study.slug])).content.decode()


PANEL = {
    "completion_url": "https://app.prolific.com/submissions/complete?cc={code}",
    "completion_code": "C0MPL3TE",
    "screenout_code": "SCR33N",
    "consent_text": "You agree.",
    "conversations_per_rater": 1,
}


def test_panel_participants_qualify_between_consent_and_work_and_failing_screens_out(make_study):
    study = make_study(qualification_pass_mark=0.6, **PANEL)
    gold(study, ("clarification",), n=1)
    gold(study, ("acknowledgment",), n=2)
    qualify = reverse("labeling:qualify", args=[study.slug])
    results = {}
    for pid, names in (("pid-pass", ["clarification", "follow-up"]), ("pid-fail", ["follow-up", "follow-up"])):
        client = Client()
        client.get(f"{reverse('annotate:panel_enter', args=[study.slug])}?PROLIFIC_PID={pid}")
        participant = Participant.objects.get(study=study, external_id=pid)
        assert client.get(qualify)["Location"] == reverse("annotate:panel_consent", args=[study.slug])  # not yet
        response = client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "agree"})
        assert response["Location"] == qualify  # the step between consent and work
        for item, name in zip(GoldItem.objects.filter(study=study).order_by("order"), names, strict=True):
            response = client.post(qualify, {"item": item.pk, "labels": label_ids(study, name)})
        participant.refresh_from_db()
        results[pid] = (participant, response["Location"])
    passed, where = results["pid-pass"]  # one of two right: below the mark of 0.6
    assert passed.qualification_score == 0.5 and passed.status == Participant.Status.SCREENED_OUT
    failed, where_failed = results["pid-fail"]
    assert failed.status == Participant.Status.SCREENED_OUT and failed.screenout_reason == labeling.QUALIFICATION_FAILED
    assert where_failed == reverse("annotate:panel_done", args=[study.slug])
    assert panel.exit_code(failed) == "SCR33N"


def test_a_panel_participant_who_passes_goes_to_work(make_study):
    study = make_study(qualification_pass_mark=1.0, **PANEL)
    item = gold(study, ("clarification",))
    client = Client()
    client.get(f"{reverse('annotate:panel_enter', args=[study.slug])}?PROLIFIC_PID=pid-ok")
    client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "agree"})
    qualify = reverse("labeling:qualify", args=[study.slug])
    response = client.post(qualify, {"item": item.pk, "labels": label_ids(study, "clarification")})
    participant = Participant.objects.get(study=study, external_id="pid-ok")
    assert participant.qualified_at is not None and participant.status == Participant.Status.ACTIVE
    assert response["Location"] == panel.participant_next_step(participant)
    assert response["Location"] != qualify


# --- per-rater figures -------------------------------------------------------------------------


def _conversation_with_votes(study: Study, rater: Any, choices: list[int]) -> Conversation:
    """A finished conversation; at each message the rater chooses candidate slot `choices[i]`."""
    conversation = services.conversation_start(study=study, rater=rater)
    for number, slot in enumerate(choices):
        user_turn = services.message_send(conversation=conversation, text=f"Message number {number} please")
        candidates = finish_candidates(user_turn)
        comparison = choose(conversation, user_turn.pk, choice="candidate", chosen_id=candidates[slot].pk)
        Comparison.objects.filter(pk=comparison.pk).update(decision_ms=1000 * (number + 1))
    return services.conversation_finish(conversation=conversation, goal="yes", understanding=4)


def _review_votes(conversation: Conversation, reviewer: Any, slots: list[int]) -> None:
    review = ReviewAssignment.objects.create(conversation=conversation, rater=reviewer)
    for user_turn, slot in zip(conversation.turns.filter(role="user").order_by("depth"), slots, strict=True):
        candidates = list(Turn.objects.filter(parent=user_turn, is_rewrite=False).order_by("position"))
        labeling.review_vote(
            rater=reviewer, assignment_id=review.pk, parent_id=user_turn.pk, choice="candidate",
            chosen_id=candidates[slot].pk, idempotency_key=uuid.uuid4(),
        )  # fmt: skip


def test_rater_figures_gold_agreement_and_decision_time(qualified_study, make_user):
    study = qualified_study
    live, r1, r2 = make_user("live"), make_user("r1"), make_user("r2")
    for rater in (live, r1, r2):
        answer(study, rater, [("clarification",), ("clarification",), ()])  # all three right
    conversation = _conversation_with_votes(study, live, [0, 0])
    _review_votes(conversation, r1, [0, 1])
    _review_votes(conversation, r2, [0, 0])
    figures = {r.username: r for r in study_dashboard(study=study).raters}
    assert (figures["live"].gold_passed, figures["live"].gold_total, figures["live"].gold_accuracy) == (3, 3, 1.0)
    # Message 1: everyone chose A. Message 2: live A, r1 B, r2 A → live and r2 agree with the rest's majority
    # (for live, the others are split: A is one of the top values); r1 does not.
    assert (figures["live"].votes_agreeing, figures["live"].votes_compared) == (2, 2)
    assert (figures["r1"].votes_agreeing, figures["r1"].votes_compared) == (1, 2)
    assert figures["r2"].vote_agreement == 1.0
    assert figures["live"].median_decision_ms == 1500  # 1000 and 2000
    assert figures["live"].qualification_score == 1.0
    assert rater_figures(study=study, rater_id=r1.pk).vote_agreement == 0.5


def test_attention_checks_count_in_gold_accuracy_and_planted_replies_in_no_model_figure(make_study, make_user):
    study = make_study(attention_check_rate=1.0)
    rater = make_user("attentive")
    conversation = services.conversation_start(study=study, rater=rater)
    for number, pick_planted in enumerate((False, True)):
        user_turn = services.message_send(conversation=conversation, text=f"Please plan party number {number} now")
        candidates = list(Turn.objects.filter(parent=user_turn).order_by("position"))
        planted = next(c for c in candidates if c.is_attention_check)
        real = next(c for c in candidates if not c.is_attention_check)
        Turn.objects.filter(pk=real.pk).update(status="done", text="A real reply")
        labeling.tag_add(rater=rater, turn_id=planted.pk, label="clarification")
        choose(conversation, user_turn.pk, choice="candidate", chosen_id=(planted if pick_planted else real).pk)
        conversation.refresh_from_db()
    dashboard = study_dashboard(study=study)
    (figures,) = dashboard.raters
    assert (figures.gold_passed, figures.gold_total) == (1, 2)
    assert figures.tags == 0  # tags on planted replies are not counted
    assert sum(rate.turns for rate in dashboard.model_rates) == 2  # the two real replies only
    assert "—" not in {rate.name for rate in dashboard.model_rates}


# --- excluding a rater -------------------------------------------------------------------------


def test_an_excluded_raters_work_leaves_the_dashboard_unless_asked_for(make_study, make_user, client):
    study = make_study(overlap=2)
    good, bad = make_user("good"), make_user("bad")
    finished_conversation(study, good)
    finished_conversation(study, bad)
    before = study_dashboard(study=study)
    assert before.conversations == 2 and {r.username for r in before.raters} == {"good", "bad"}
    participant = Participant.objects.get(study=study, user=bad)  # made on their first start
    services.participant_exclude(participant, "Clicked through in 3 seconds")
    after = study_dashboard(study=study)
    assert after.conversations == 1 and [r.username for r in after.raters] == ["good"]
    assert after.excluded_raters == 1
    assert sum(rate.turns for rate in after.model_rates) == sum(rate.turns for rate in before.model_rates) / 2
    included = study_dashboard(study=study, include_excluded=True)
    assert included.conversations == 2 and next(r for r in included.raters if r.username == "bad").excluded

    researcher = make_user("researcher", is_staff=True)
    researcher.user_permissions.add(Permission.objects.get(codename="view_study_dashboard"))
    client.force_login(researcher)
    url = reverse("labeling:dashboard", args=[study.slug])
    page = client.get(url).content.decode()
    assert 'id="n-conversations">1<' in page and "1 excluded rater" in page and "?include_excluded=1" in page
    page = client.get(url, {"include_excluded": "1"}).content.decode()
    assert 'id="n-conversations">2<' in page and "excluded</span>" in page


def test_exclusion_requeues_the_scenario_and_the_reviews(make_study, make_user):
    study = make_study(scenarios=1, overlap=1, review_overlap=1)
    first, second, reviewer, reviewer2 = (make_user(n) for n in ("first", "second", "reviewer", "reviewer2"))
    finished_conversation(study, first)
    with pytest.raises(ActionRefused, match="no scenarios left"):
        services.conversation_start(study=study, rater=second)
    # Excluded without re-queueing: the place stays taken.
    participant = Participant.objects.get(study=study, user=first)
    services.participant_exclude(participant, "Off-task", requeue=False)
    with pytest.raises(ActionRefused, match="no scenarios left"):
        services.conversation_start(study=study, rater=second)
    # Re-queued: the scenario is handed to another rater.
    services.participant_exclude(participant, "Off-task", requeue=True)
    handed = services.conversation_start(study=study, rater=second)
    assert handed.scenario_id == Conversation.objects.get(rater=first).scenario_id
    with pytest.raises(ActionRefused):
        services.conversation_start(study=study, rater=first)  # the excluded rater gets no more work
    services.conversation_finish(conversation=_finish_one(handed), goal="yes", understanding=4)

    # Reviews: the excluded rater's conversation is not reviewed; a re-queued reviewer's review is handed out again.
    review = labeling.review_claim(rater=reviewer, study=study)
    assert review.conversation_id == handed.pk
    with pytest.raises(ActionRefused, match="Nothing left to review"):
        labeling.review_claim(rater=reviewer2, study=study)
    services.participant_exclude(Participant.objects.get(study=study, user=reviewer), "Random tags")
    assert labeling.review_claim(rater=reviewer2, study=study).conversation_id == handed.pk
    with pytest.raises(ActionRefused) as refused:
        labeling.review_claim(rater=reviewer, study=study)
    assert refused.value.status == 403


def _finish_one(conversation: Conversation) -> Conversation:
    user_turn = services.message_send(conversation=conversation, text="Hello there")
    a, _ = finish_candidates(user_turn)
    choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    return conversation


def test_exclusion_needs_a_reason_and_including_again_undoes_it(make_study, make_user):
    study = make_study()
    participant = Participant.objects.create(study=study, user=make_user())
    with pytest.raises(ActionRefused, match="Say why"):
        services.participant_exclude(participant, "  ")
    participant = services.participant_exclude(participant, "Spam")
    assert (participant.excluded, participant.requeued, participant.exclusion_reason) == (True, True, "Spam")
    participant = services.participant_include(participant)
    assert (participant.excluded, participant.requeued, participant.exclusion_reason) == (False, False, "")


# --- admin -------------------------------------------------------------------------------------


def test_participant_admin_shows_quality_figures_and_includes_again(qualified_study, make_user, client):
    rater = make_user("someone")
    answer(qualified_study, rater, [("clarification",), ("clarification",), ("acknowledgment",)])
    participant = Participant.objects.get(study=qualified_study, user=rater)
    services.participant_exclude(participant, "Too fast")
    client.force_login(staff_with(make_user, "annotate.view_participant", "annotate.change_participant"))
    page = client.get(reverse("admin:annotate_participant_change", args=[participant.pk])).content.decode()
    assert "gold accuracy 67% (2/3)" in page and "median decision time" in page
    changelist = reverse("admin:annotate_participant_changelist")
    response = client.post(changelist, {"action": "include_again", "_selected_action": [participant.pk]})
    assert response.status_code == 302
    participant.refresh_from_db()
    assert not participant.excluded
    client.post(changelist, {"action": "flag", "_selected_action": [participant.pk]})
    client.post(changelist, {"action": "unflag", "_selected_action": [participant.pk]})
    participant.refresh_from_db()
    assert not participant.flagged


def test_gold_items_import_from_yaml_and_jsonl(make_study, make_user, client):
    study = make_study()
    url = reverse("admin:labeling_golditem_import")
    client.force_login(staff_with(make_user, "labeling.add_golditem"))
    assert client.get(url).status_code == 403
    client.force_login(staff_with(make_user, "labeling.add_golditem", "labeling.change_golditem"))
    yaml_file = (
        b"- id: q1\n  context: Plan a party.\n  reply: What kind of party?\n  labels: [clarification]\n"
        b"  explanation: It asks.\n- id: q2\n  context: Hi\n  reply: Hello.\n  labels: []\n"
    )
    response = client.post(url, {"study": study.pk, "file": SimpleUploadedFile("gold.yaml", yaml_file)})
    assert response.status_code == 302
    items = {item.external_id: item for item in GoldItem.objects.filter(study=study)}
    assert [label.name for label in items["q1"].expected_labels.all()] == ["clarification"]
    assert not items["q2"].expected_labels.exists() and items["q1"].kind == GoldItem.Kind.QUALIFICATION
    jsonl = b'{"id": "q1", "context": "Plan a party.", "reply": "Sure!", "labels": []}\n'
    response = client.post(url, {"study": study.pk, "file": SimpleUploadedFile("gold.jsonl", jsonl)})
    assert response.status_code == 302
    assert GoldItem.objects.get(study=study, external_id="q1").reply == "Sure!"
    bad = b'{"id": "q3", "context": "x", "reply": "y", "labels": ["no-such-label"]}\n'
    response = client.post(url, {"study": study.pk, "file": SimpleUploadedFile("gold.jsonl", bad)})
    assert response.status_code == 400 and "no-such-label" in response.content.decode()
    assert GoldItem.objects.filter(study=study).count() == 2


# --- gaps closed: participants made on first work, retaking the qualification, attention gold in reviews


def test_raters_made_by_hand_get_a_participant_on_their_first_start_or_review(make_study, make_user, client):
    study = make_study(overlap=1, review_overlap=2)
    rater, reviewer = make_user("hand-made"), make_user("reviewer")
    assert not Participant.objects.filter(study=study).exists()
    finished_conversation(study, rater)
    labeling.review_claim(rater=reviewer, study=study)
    made = Participant.objects.filter(study=study).order_by("pk")
    assert [(p.user.username, p.external_id, p.status) for p in made] == [
        ("hand-made", None, "active"),
        ("reviewer", None, "active"),
    ]
    # ... so admin can exclude them like anyone else, and the next start says so
    client.force_login(staff_with(make_user, "annotate.view_participant", "annotate.change_participant"))
    changelist = reverse("admin:annotate_participant_changelist")
    chosen = made.get(user=rater)
    response = client.post(
        changelist,
        {"action": "exclude_work", "_selected_action": [chosen.pk], "apply": "1", "reason": "Spam", "requeue": "on"},
    )
    assert response.status_code == 302
    with pytest.raises(ActionRefused, match="Your work in this study has ended"):
        services.conversation_start(study=study, rater=rater)
    assert study_dashboard(study=study).conversations == 0


def test_a_rater_who_failed_may_retake_the_qualification_when_admin_lets_them(qualified_study, make_user, client):
    rater = make_user()
    answer(qualified_study, rater, [("acknowledgment",), ("clarification",), ("acknowledgment",)])  # 1 of 3
    participant = Participant.objects.get(study=qualified_study, user=rater)
    assert participant.status == Participant.Status.SCREENED_OUT and participant.gold_passed == 1

    client.force_login(staff_with(make_user, "annotate.view_participant"))  # a viewer cannot
    changelist = reverse("admin:annotate_participant_changelist")
    client.post(changelist, {"action": "retake_qualification", "_selected_action": [participant.pk]})
    participant.refresh_from_db()
    assert participant.status == Participant.Status.SCREENED_OUT
    client.force_login(staff_with(make_user, "annotate.view_participant", "annotate.change_participant"))
    response = client.post(changelist, {"action": "retake_qualification", "_selected_action": [participant.pk]})
    assert response.status_code == 302
    participant.refresh_from_db()
    assert (participant.status, participant.screenout_reason, participant.qualification_score) == ("active", "", None)
    assert participant.gold_passed == 0 and not GoldAnswer.objects.filter(rater=rater).exists()

    answer(qualified_study, rater, [("clarification",), ("clarification",), ("acknowledgment",)])  # 2 of 3
    participant.refresh_from_db()
    assert participant.qualified_at is not None and participant.gold_passed == 2
    assert services.conversation_start(study=qualified_study, rater=rater).status == Conversation.Status.ACTIVE


def test_retaking_is_refused_to_those_who_left_otherwise(qualified_study, make_user):
    participant = Participant.objects.create(study=qualified_study, user=make_user(), external_id="pid-1")
    panel.participant_screen_out(participant, panel.NO_PLACES)
    with pytest.raises(ActionRefused, match="not by failing the qualification") as refused:
        labeling.qualification_reset(participant)
    assert refused.value.status == 409


@pytest.fixture
def checked_study(make_study: Any) -> Study:
    """Conversations to review, and two attention gold items met between reviews."""
    study = make_study(scenarios=4, overlap=1, review_overlap=1)
    gold(study, ("clarification",), kind=GoldItem.Kind.ATTENTION, n=1)
    gold(study, (), kind=GoldItem.Kind.ATTENTION, n=2)
    return study


def test_attention_gold_items_come_between_reviews_and_count_as_gold(checked_study, make_study, make_user, client):
    study = checked_study
    for number in range(4):
        finished_conversation(study, make_user(f"talker{number}"))
    reviewer = make_user("reviewer")
    client.force_login(reviewer)
    next_url = reverse("labeling:review_next", args=[study.slug])
    check_url = reverse("labeling:review_check", args=[study.slug])

    first = client.post(next_url)  # no check before any review
    assert first["Location"].startswith("/review/")
    assert client.get(check_url)["Location"] == reverse("labeling:review_home")  # nothing due yet
    review = ReviewAssignment.objects.get(rater=reviewer)
    assert client.post(next_url)["Location"] == first["Location"]  # an open review resumes first
    labeling.review_finish(rater=reviewer, assignment_id=review.pk)

    assert client.post(next_url)["Location"] == check_url  # after the first review: a check
    page = client.get(check_url).content.decode()
    item = GoldItem.objects.get(study=study, order=1)
    assert item.reply in page and 'name="labels"' in page and "attention" not in page.lower()
    wrong_study = gold(make_study(), ("clarification",), kind=GoldItem.Kind.ATTENTION)
    assert client.post(check_url, {"item": wrong_study.pk}).status_code == 404
    response = client.post(check_url, {"item": item.pk, "labels": label_ids(study, "clarification")})
    second = ReviewAssignment.objects.filter(rater=reviewer, status="open").get()
    assert response["Location"] == reverse("labeling:review_detail", args=[second.pk])  # on to the next review
    client.post(check_url, {"item": item.pk, "labels": []})  # a resend: the first answer stands
    answer_row = GoldAnswer.objects.get(rater=reviewer)
    assert answer_row.passed and answer_row.item_id == item.pk
    assert Participant.objects.get(study=study, user=reviewer).gold_passed == 1

    labeling.review_finish(rater=reviewer, assignment_id=second.pk)
    third = client.post(next_url)  # the next check waits for the 3rd finished review
    assert third["Location"] != check_url
    labeling.review_finish(rater=reviewer, assignment_id=ReviewAssignment.objects.get(rater=reviewer, status="open").pk)
    assert client.post(next_url)["Location"] == check_url
    client.post(
        check_url, {"item": GoldItem.objects.get(study=study, order=2).pk, "labels": label_ids(study, "repair")}
    )
    figures = rater_figures(study=study, rater_id=reviewer.pk)
    assert (figures.gold_passed, figures.gold_total) == (1, 2)  # one right, one wrong: in gold accuracy

    # An excluded reviewer meets no check and gets no more reviews
    services.participant_exclude(Participant.objects.get(study=study, user=reviewer), "Random tags")
    assert client.get(check_url)["Location"] == reverse("labeling:review_home")
    assert client.post(next_url).status_code == 403
