"""Label kinds that mean what the charts say: over-response and topic switch are non-grounding behaviours, so they
raise neither a model's grounding rate on the dashboard nor the `multiturn` export's grounding component."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import Permission
from django.urls import reverse

from annotate import services
from annotate.models import Turn
from labeling import services as labeling
from labeling.dashboard import study_dashboard
from labeling.models import DashboardSnapshot, Label, Tag
from labeling.services import DEFAULT_TAXONOMY_FILE
from tests.exports.export_study import build_export_study, export
from tests.helpers import choose, finish_candidates
from tests.test_migrations import migrate

pytestmark = pytest.mark.django_db

BEHAVIOURS = {"over-response", "topic-switch"}


def test_the_shipped_taxonomy_marks_over_response_and_topic_switch_as_behaviours():
    labels = {raw["name"]: raw["kind"] for raw in yaml.safe_load(DEFAULT_TAXONOMY_FILE.read_text())["labels"]}
    assert {name for name, kind in labels.items() if kind == Label.Kind.BEHAVIOUR} == BEHAVIOURS
    stored = dict(Label.objects.filter(taxonomy__slug="default").values_list("name", "kind"))
    assert stored == labels
    assert Label.Kind.BEHAVIOUR.label == "Non-grounding behaviour (over-response, topic switch…)"


def test_a_taxonomy_import_accepts_the_behaviour_kind():
    taxonomy = labeling.taxonomy_from_yaml(
        "name: T\nslug: t-kinds\nlabels:\n  - name: verbose\n    kind: behaviour\n    definition: Too long.\n"
    )
    assert taxonomy.labels.get().kind == Label.Kind.BEHAVIOUR


def test_over_response_tags_do_not_raise_a_models_grounding_rate(make_study, make_config, make_user, client):
    # Given two models: m1's replies over-respond and switch topic, m2's reply asks a clarifying question
    configs = [make_config("m1"), make_config("m2")]
    study = make_study(configs=configs)
    rater = make_user()
    conversation = services.conversation_start(study=study, rater=rater)
    for text in ("Plan a party", "For kids"):
        user_turn = services.message_send(conversation=conversation, text=text)
        for position, config in enumerate(configs):
            Turn.objects.filter(parent=user_turn, position=position).update(model_config=config)
        a, b = finish_candidates(user_turn)
        labeling.tag_add(rater=rater, turn_id=a.pk, label="over-response")
        labeling.tag_add(rater=rater, turn_id=a.pk, label="topic-switch")
        if text == "Plan a party":
            labeling.tag_add(rater=rater, turn_id=b.pk, label="clarification")
        choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)

    # When the dashboard counts grounding acts
    figures = study_dashboard(study=study)
    reference = study_dashboard(study=study, reference=True)

    # Then m1's behaviours count for nothing; m2 grounds in 1 of its 2 replies
    for dashboard in (figures, reference):
        assert {r.name: (r.turns, r.grounded) for r in dashboard.model_rates} == {"m1": (2, 0), "m2": (2, 1)}
    # and the page shows the behaviours apart from the grounding acts
    researcher = make_user(is_staff=True)
    researcher.user_permissions.add(Permission.objects.get(codename="view_study_dashboard"))
    client.force_login(researcher)
    html = client.get(reverse("labeling:dashboard", args=[study.slug])).content.decode()
    behaviours = html.split('class="kind-behaviour"', 1)[1].split("</tbody>", 1)[0]
    grounding = html.split('class="kind-grounding"', 1)[1].split("</tbody>", 1)[0]
    assert "Non-grounding behaviours (not counted in the grounding rates)" in behaviours
    assert 'id="label-over-response"' in behaviours and 'id="label-topic-switch"' in behaviours
    assert 'id="label-clarification"' in grounding and "over-response" not in grounding


def test_multiturn_grounding_component_counts_grounding_acts_only(tmp_path):
    # Given the golden study, with an over-response and a topic switch confirmed on a reply that also clarifies
    ids = build_export_study()
    alice = ids["c1"].rater
    for name in ("over-response", "topic-switch"):
        label = Label.objects.get(taxonomy__slug="default", name=name)
        Tag.objects.create(turn=ids["a2A"], label=label, rater=alice, task=Tag.Task.LIVE)

    # When it is exported with a weight per grounding act
    rows, _ = export(tmp_path, format="multiturn", grounding_weight=1.0)
    tree, _ = export(tmp_path, name="tree", format="tree")

    # Then the reply still has one grounding act, and the tree export says what the others are
    assert rows[1]["grounding_acts"] == ["clarification"]
    kinds = {tag["label"]: tag["kind"] for turn in tree[0]["turns"] for tag in turn["tags"]}
    assert kinds["over-response"] == kinds["topic-switch"] == "behaviour"
    assert kinds["clarification"] == "grounding"


# --- the data migration -------------------------------------------------------------------------


@pytest.fixture
def at_latest_after(transactional_db: None) -> Iterator[None]:
    yield
    migrate()


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_the_default_behaviours_still_marked_grounding(at_latest_after: Any):
    # Given a database before the behaviour kind, where the default taxonomy ships them as grounding acts and a
    # researcher made topic switch a kind of their own, plus another taxonomy's over-response
    apps = migrate([("labeling", "0007_dashboard_snapshot")])
    LabelThen = apps.get_model("labeling", "Label")
    TaxonomyThen = apps.get_model("labeling", "Taxonomy")
    default = LabelThen.objects.filter(taxonomy__slug="default")
    default.filter(name="over-response").update(kind="grounding")
    default.filter(name="topic-switch").update(kind="other")
    theirs = TaxonomyThen.objects.create(slug="theirs", name="Theirs")
    LabelThen.objects.create(taxonomy=theirs, name="over-response", title="O", kind="grounding", definition="x")
    snapshot_model = apps.get_model("labeling", "DashboardSnapshot")
    study = apps.get_model("annotate", "Study").objects.create(name="S", slug="s-kinds")
    snapshot_model.objects.create(study_id=study.pk, data={"stale": True})

    # When it migrates
    migrate()

    # Then the default over-response is a behaviour, the researcher's choice stays, another taxonomy is untouched,
    # and the dashboard figures that counted it are computed again
    kinds = {(slug, name): kind for slug, name, kind in Label.objects.values_list("taxonomy__slug", "name", "kind")}
    assert kinds["default", "over-response"] == "behaviour"
    assert kinds["default", "topic-switch"] == "other"
    assert kinds["theirs", "over-response"] == "grounding"
    assert kinds["default", "clarification"] == "grounding"
    assert not DashboardSnapshot.objects.exists()
