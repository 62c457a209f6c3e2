"""Taxonomies (YAML round trip) and tag services on PostgreSQL, including bad input."""

from __future__ import annotations

import pytest
import yaml

from annotate import selectors, services
from annotate.models import Comparison
from core.errors import ActionRefused
from labeling import services as labeling
from labeling.models import Label, ReviewAssignment, Tag, Taxonomy
from tests.helpers import choose, finish_candidates

pytestmark = pytest.mark.django_db


@pytest.fixture
def live(make_conversation):
    """A conversation with one user message and two finished candidates."""
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Can you plan a party?")
    a, b = finish_candidates(user_turn, ("Do you mean a birthday party?", "Here is a plan: cake."))
    return conversation, user_turn, a, b


def test_default_taxonomy_yaml_round_trip():
    taxonomy = labeling.default_taxonomy()
    names = list(taxonomy.labels.values_list("name", flat=True))
    assert {"clarification", "acknowledgment", "repair", "rephrase", "correction", "positive"} <= set(names)
    exported = labeling.taxonomy_to_yaml(taxonomy)
    copy = labeling.taxonomy_from_yaml(exported, slug="copy")
    assert labeling.taxonomy_to_yaml(copy).replace("slug: copy", "slug: default") == exported
    fields = ("name", "title", "kind", "definition", "examples", "roles", "takes_span", "links_turn", "key", "colour")
    assert list(copy.labels.values_list(*fields)) == list(taxonomy.labels.values_list(*fields))
    keys = [k for k in taxonomy.labels.values_list("key", flat=True) if k]
    assert len(keys) == len(set(keys)) and not set(keys) & set("123456789tbsr")  # no clash with vote keys


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("labels: [", "does not parse"),
        ("- just a list", "mapping"),
        ("slug: x\nlabels:\n  - name: a\n", "'definition' are required"),
        ("slug: x\nlabels:\n  - {name: a, definition: d, colour: red, wat: 1}\n", "unknown fields wat"),
        ("slug: x\nlabels:\n  - {name: a, definition: d, roles: robots}\n", "roles must be one of"),
        ("slug: x\nlabels:\n  - {name: a, definition: d, key: k}\n  - {name: b, definition: d, key: k}\n", "twice"),
    ],
)
def test_bad_taxonomy_yaml_is_refused_and_nothing_written(text, fragment):
    with pytest.raises(ActionRefused, match=fragment):
        labeling.taxonomy_from_yaml(text)
    assert not Taxonomy.objects.filter(slug="x").exists()


def test_reimport_keeps_labels_in_use(live):
    conversation, user_turn, a, _ = live
    labeling.tag_add(rater=conversation.rater, turn_id=a.pk, label="clarification")
    document = yaml.safe_load(labeling.taxonomy_to_yaml(labeling.default_taxonomy()))
    document["labels"] = [lab for lab in document["labels"] if lab["name"] not in ("clarification", "hedging")]
    labeling.taxonomy_from_yaml(yaml.safe_dump(document))
    names = set(Label.objects.filter(taxonomy__slug="default").values_list("name", flat=True))
    assert "clarification" in names and "hedging" not in names


def test_tag_whole_turn_span_and_link(live):
    conversation, user_turn, a, _ = live
    rater = conversation.rater
    whole = labeling.tag_add(rater=rater, turn_id=a.pk, label="clarification")
    again = labeling.tag_add(rater=rater, turn_id=a.pk, label="clarification")
    assert whole.pk == again.pk and whole.span_start is None
    span = labeling.tag_add(rater=rater, turn_id=a.pk, label="clarification", span_start=0, span_end=11)
    assert a.text[span.span_start : span.span_end] == "Do you mean"
    services.comparison_record(
        conversation=conversation, rater=rater, parent_id=user_turn.pk, choice="candidate", chosen_id=a.pk,
        idempotency_key=__import__("uuid").uuid4(),
    )  # fmt: skip
    second = services.message_send(conversation=conversation, text="No, I said a party for kids")
    rephrase = labeling.tag_add(rater=rater, turn_id=second.pk, label="rephrase", linked_turn_id=a.pk)
    assert rephrase.linked_turn_id == a.pk
    assert Tag.objects.filter(rater=rater).count() == 3


def test_the_first_message_takes_no_feedback_signal(live):
    """A feedback signal reacts to the reply before it: the first message has none, so none is offered or stored."""
    from labeling.templatetags.tagging import for_turn

    conversation, user_turn, _, _ = live
    with pytest.raises(ActionRefused, match="first message has none"):
        labeling.tag_add(rater=conversation.rater, turn_id=user_turn.pk, label="rephrase")
    offered = for_turn(Label.objects.all(), user_turn)
    assert offered and not any(label.kind == Label.Kind.FEEDBACK for label in offered)
    assert not Tag.objects.exists()


def test_bad_tags_are_refused_and_nothing_written(live, make_conversation, make_user):
    conversation, user_turn, a, b = live
    rater = conversation.rater
    other = make_conversation(study=conversation.study)
    foreign_turn = services.message_send(conversation=other, text="elsewhere")
    cases = [
        (dict(turn_id=a.pk, label="no-such-label"), "Unknown label", 400),
        (dict(turn_id=a.pk, label="rephrase"), "not used on assistant turns", 400),
        (dict(turn_id=user_turn.pk, label="over-response"), "not used on user turns", 400),
        (dict(turn_id=a.pk, label="clarification", span_start=5, span_end=500), "outside the turn's text", 400),
        (dict(turn_id=a.pk, label="clarification", span_start=5, span_end=5), "outside the turn's text", 400),
        (dict(turn_id=a.pk, label="topic-switch", span_start=0, span_end=2), "whole turn", 400),
        (dict(turn_id=a.pk, label="clarification", linked_turn_id=user_turn.pk), "does not link", 400),
        (dict(turn_id=a.pk, label="repair", linked_turn_id=foreign_turn.pk), "not part of this conversation", 400),
        (dict(turn_id=a.pk, label="repair", linked_turn_id=b.pk), "earlier turn", 400),
        (dict(turn_id=foreign_turn.pk, label="clarification"), "No such turn", 404),
        (dict(turn_id=999999, label="clarification"), "No such turn", 404),
    ]
    for kwargs, fragment, status in cases:
        with pytest.raises(ActionRefused, match=fragment) as refused:
            labeling.tag_add(rater=rater, **kwargs)
        assert refused.value.status == status, kwargs
    with pytest.raises(ActionRefused, match="No such turn"):  # someone else's work
        labeling.tag_add(rater=make_user(), turn_id=a.pk, label="clarification")
    assert not Tag.objects.exists()


def test_cannot_tag_a_reply_still_being_written(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="hi")
    pending = selectors.candidates_of(user_turn)[0]
    with pytest.raises(ActionRefused, match="Wait until") as refused:
        labeling.tag_add(rater=conversation.rater, turn_id=pending.pk, label="clarification")
    assert refused.value.status == 409


def test_remove_own_tag_only(live, make_user):
    conversation, _, a, _ = live
    tag = labeling.tag_add(rater=conversation.rater, turn_id=a.pk, label="acknowledgment")
    with pytest.raises(ActionRefused, match="No such tag"):
        labeling.tag_remove(rater=make_user(), tag_id=tag.pk)
    labeling.tag_remove(rater=conversation.rater, tag_id=tag.pk)
    assert not Tag.objects.exists()


def test_suggestions_are_accepted_or_rejected_not_deleted(live):
    conversation, _, a, _ = live
    label = labeling.default_taxonomy().labels.get(name="clarification")
    suggestion = Tag.objects.create(
        turn=a, label=label, rater=conversation.rater, source=Tag.Source.SUGGESTION, status=Tag.Status.SUGGESTED
    )
    labeling.tag_remove(rater=conversation.rater, tag_id=suggestion.pk)
    suggestion.refresh_from_db()
    assert suggestion.status == Tag.Status.REJECTED and suggestion.decided_at
    accepted = labeling.suggestion_decide(rater=conversation.rater, tag_id=suggestion.pk, accept=True)
    assert accepted.status == Tag.Status.CONFIRMED
    manual = labeling.tag_add(rater=conversation.rater, turn_id=a.pk, label="acknowledgment")
    with pytest.raises(ActionRefused, match="Only suggestions"):
        labeling.suggestion_decide(rater=conversation.rater, tag_id=manual.pk, accept=True)


def test_study_can_require_tags_before_the_vote(make_study, make_conversation):
    study = make_study(tags_required_before_vote=True)
    conversation = make_conversation(study=study)
    user_turn = services.message_send(conversation=conversation, text="hi")
    a, b = finish_candidates(user_turn)
    labeling.tag_add(rater=conversation.rater, turn_id=a.pk, label="no-grounding-act")
    with pytest.raises(ActionRefused, match="tag reply B"):
        choose(conversation, user_turn.pk, choice="tie", continue_from_id=b.pk)
    labeling.tag_add(rater=conversation.rater, turn_id=b.pk, label="clarification")
    choose(conversation, user_turn.pk, choice="tie", continue_from_id=b.pk)
    assert Comparison.objects.count() == 1


def test_review_tags_need_an_open_assignment(live, make_user):
    conversation, user_turn, a, _ = live
    reviewer = make_user()
    with pytest.raises(ActionRefused, match="No such turn"):
        labeling.tag_add(rater=reviewer, turn_id=a.pk, label="clarification", task="review")
    ReviewAssignment.objects.create(conversation=conversation, rater=reviewer)
    tag = labeling.tag_add(rater=reviewer, turn_id=a.pk, label="clarification", task="review")
    assert tag.task == "review" and tag.rater_id == reviewer.pk


def test_labels_are_cached_per_taxonomy_and_forgotten_when_one_changes(make_study, django_assert_num_queries):
    from labeling.selectors import labels_for

    study = make_study()
    first = labels_for(study)
    with django_assert_num_queries(0):
        assert [label.pk for label in labels_for(study)] == [label.pk for label in first]
    changed = Label.objects.get(pk=first[0].pk)
    changed.title = "Renamed"
    changed.save()
    assert labels_for(study)[0].title == "Renamed"  # the save forgot the cached list
    Label.objects.filter(pk=first[-1].pk).delete()  # a queryset delete sends post_delete too
    assert first[-1].pk not in {label.pk for label in labels_for(study)}
    with django_assert_num_queries(1):
        labels_for(study, fresh=True)
