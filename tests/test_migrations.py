"""Migrations on PostgreSQL: upgrading a database of the previous release, and a fresh database.

The previous release had DatasetExport in the labeling app and no default-taxonomy migration.
labeling.0003 renames its table to exports_datasetexport, exports.0001 declares the model there and
moves its content type, and labeling.0004 creates the default taxonomy unless one exists.

Each test migrates the test database itself (so it needs a transactional one), and puts it back
at the latest migrations whatever happens, for the tests that follow.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from annotate.models import Comparison, Conversation, Scenario, Study, Turn
from exports.models import DatasetExport
from labeling.models import Label, ReviewAssignment, Tag, Taxonomy
from labeling.services import DEFAULT_TAXONOMY_FILE
from workers.models import ModelConfig

pytestmark = pytest.mark.django_db(transaction=True)

# The leaf migrations of the previous release (exports did not exist yet).
PREVIOUS_RELEASE = [
    ("annotate", "0004_comparison_per_rater"),
    ("labeling", "0002_dataset_export"),
    ("workers", "0001_initial"),
    ("exports", None),
]
T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


def migrate(targets: list[tuple[str, str | None]] | None = None) -> Any:
    """Migrate the test database to `targets` (default: the latest migrations) with a fresh
    executor, and return the historical models (an `apps`) of the database as it is then: the
    apps named in `targets` at their target, the others (auth, contenttypes, ...) at their latest."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()  # what is applied now, read from the database
    leaves = executor.loader.graph.leaf_nodes()
    if targets is None:
        targets = leaves
    executor.migrate(targets)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    named = {app for app, _ in targets}
    nodes = [node for node in targets if node[1] is not None] + [leaf for leaf in leaves if leaf[0] not in named]
    return executor.loader.project_state(nodes).apps


def applied() -> set[tuple[str, str]]:
    """The migrations the database records as applied."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    return set(executor.loader.applied_migrations)


@pytest.fixture
def back_at_latest(transactional_db: None) -> Iterator[None]:
    """Whatever the test did to the schema, leave the database at the latest migrations."""
    yield
    migrate()
    ContentType.objects.clear_cache()


def snapshot(obj: Any) -> dict[str, Any]:
    """Every column of a (historical) model instance, by attribute name (`study_id`, ...)."""
    return {field.attname: getattr(obj, field.attname) for field in obj._meta.concrete_fields}


def build_previous_release(apps: Any) -> dict[str, Any]:
    """One of everything, written through the previous release's models."""
    User = apps.get_model("auth", "User")
    ModelConfigThen = apps.get_model("workers", "ModelConfig")
    StudyThen = apps.get_model("annotate", "Study")
    ScenarioThen = apps.get_model("annotate", "Scenario")
    ConversationThen = apps.get_model("annotate", "Conversation")
    TurnThen = apps.get_model("annotate", "Turn")
    ComparisonThen = apps.get_model("annotate", "Comparison")
    TaxonomyThen = apps.get_model("labeling", "Taxonomy")
    LabelThen = apps.get_model("labeling", "Label")
    TagThen = apps.get_model("labeling", "Tag")
    ReviewThen = apps.get_model("labeling", "ReviewAssignment")
    ExportThen = apps.get_model("labeling", "DatasetExport")

    alice = User.objects.create(username="alice", email="alice@example.org", password="!", is_staff=True)
    bob = User.objects.create(username="bob", password="!")
    config = ModelConfigThen.objects.create(
        name="model-a", model_path="/models/a", system_prompt="Be brief.", params={"temperature": 0.5}
    )
    # Earlier versions created the "default" taxonomy on first read; this one was edited since.
    taxonomy = TaxonomyThen.objects.create(slug="default", name="Our labels", description="Edited by the team.")
    labels = [
        LabelThen.objects.create(
            taxonomy=taxonomy,
            name="clarification",  # also a label of default_taxonomy.yaml, defined otherwise here
            title="Asks back",
            kind="grounding",
            definition="Our own definition.",
            examples=["Which one?"],
            roles="assistant",
            takes_span=True,
            key="q",
            colour="#123456",
            order=0,
        ),
        LabelThen.objects.create(
            taxonomy=taxonomy, name="house-style", title="House style", kind="other", definition="Ours only.", order=1
        ),
    ]
    study = StudyThen.objects.create(
        name="Old study", slug="old-study", instructions="Plan an event.", taxonomy=taxonomy, review_overlap=1
    )
    study.model_pool.set([config])
    scenario = ScenarioThen.objects.create(
        study=study, external_id="party", title="Party", brief="Plan a party.", hidden_intent="A birthday."
    )
    conversation = ConversationThen.objects.create(study=study, scenario=scenario, rater=alice)
    user_turn = TurnThen.objects.create(
        conversation=conversation, role="user", depth=0, text="Plan a party.", client_key=uuid.uuid4()
    )
    replies = [
        TurnThen.objects.create(
            conversation=conversation,
            parent=user_turn,
            role="assistant",
            depth=1,
            position=position,
            text=text,
            model_config=config,
            params={"temperature": 0.5, "max_new_tokens": 96},
            system_prompt="Be brief.",
            seed=1000 + position,
            attempt=1,
            prompt_tokens=12,
            completion_tokens=7,
            started_at=T0,
            finished_at=T0 + dt.timedelta(seconds=2),
        )
        for position, text in enumerate(["Sure: cake and games.", "What kind of party?"])
    ]
    conversation.head = replies[1]
    conversation.save()
    comparison = ComparisonThen.objects.create(
        conversation=conversation,
        rater=alice,
        parent=user_turn,
        choice="candidate",
        chosen=replies[1],
        continued_from=replies[1],
        strength="clear",
        reason="It asks first.",
        decision_ms=4200,
        task="live",
    )
    tag = TagThen.objects.create(
        turn=replies[1], label=labels[0], rater=alice, task="live", span_start=0, span_end=8, suggestion_note=""
    )
    review = ReviewThen.objects.create(conversation=conversation, rater=bob, status="done", done_at=T0)
    export = ExportThen.objects.create(
        study=study,
        format="dpo",
        params={"study": "old-study", "format": "dpo", "include_branches": False, "seed": 7},
        status="done",
        attempt=1,
        conversations_total=1,
        conversations_done=1,
        rows=2,
        out_dir="/var/exports/old-study/1",
        sha256="ab" * 32,
        requested_by=alice,
        heartbeat_at=T0,
        finished_at=T0 + dt.timedelta(minutes=1),
    )
    rows = {
        get_user_model(): [alice, bob],
        ModelConfig: [config],
        Taxonomy: [taxonomy],
        Label: labels,
        Study: [study],
        Scenario: [scenario],
        Conversation: [conversation],
        Turn: [user_turn, *replies],
        Comparison: [comparison],
        Tag: [tag],
        ReviewAssignment: [review],
        DatasetExport: [export],
    }
    return {
        "rows": {model: [snapshot(obj) for obj in objs] for model, objs in rows.items()},
        "study": study,
        "taxonomy": taxonomy,
        "replies": replies,
        "export": export,
        "alice": alice,
    }


def test_upgrade_from_the_previous_release_keeps_every_row(back_at_latest):
    # The autouse fixture put today's default taxonomy in; the previous release's is built below.
    Taxonomy.objects.filter(slug="default").delete()
    apps = migrate(PREVIOUS_RELEASE)
    done = applied()
    assert {node for node in PREVIOUS_RELEASE if node[1] is not None} <= done
    assert ("labeling", "0003_move_datasetexport_to_exports") not in done
    assert not {node for node in done if node[0] == "exports"}
    tables = connection.introspection.table_names()
    assert "labeling_datasetexport" in tables and "exports_datasetexport" not in tables

    old = build_previous_release(apps)
    # The content type and a permission granted on it, as the previous release had them.
    ContentTypeThen = apps.get_model("contenttypes", "ContentType")
    PermissionThen = apps.get_model("auth", "Permission")
    assert not ContentTypeThen.objects.filter(app_label="exports").exists()
    content_type, _ = ContentTypeThen.objects.get_or_create(app_label="labeling", model="datasetexport")
    permission, _ = PermissionThen.objects.get_or_create(
        content_type=content_type, codename="view_datasetexport", defaults={"name": "Can view dataset export"}
    )
    old["alice"].user_permissions.add(permission)

    migrate()
    ContentType.objects.clear_cache()

    # Every row is there, with every value and foreign key it had, and nothing more.
    for model, rows in old["rows"].items():
        assert model.objects.count() == len(rows), model
        for row in rows:
            assert model.objects.filter(pk=row["id"]).values(*row).get() == row, model
    study = Study.objects.get(pk=old["study"].pk)
    assert list(study.model_pool.values_list("name", flat=True)) == ["model-a"]
    # annotate.0012: every conversation and turn there already got its own UUID; the study's language is "en".
    for model in (Conversation, Turn):
        uuids = list(model.objects.values_list("uuid", flat=True))
        assert uuids and None not in uuids and len(set(uuids)) == len(uuids), model
    assert study.language == "en"

    # The export: same id and foreign keys, now in the exports app's table.
    export = DatasetExport.objects.get(pk=old["export"].pk)
    assert DatasetExport._meta.db_table == "exports_datasetexport"
    tables = connection.introspection.table_names()
    assert "exports_datasetexport" in tables and "labeling_datasetexport" not in tables
    assert (export.study_id, export.requested_by_id) == (old["study"].pk, old["alice"].pk)
    assert (export.format, export.status, export.rows) == ("dpo", "done", 2)
    assert export.params == {"study": "old-study", "format": "dpo", "include_branches": False, "seed": 7}
    assert list(study.exports.all()) == [export]
    newer = DatasetExport.objects.create(study=study, format="sft", params={})
    assert newer.pk > export.pk  # the id sequence came along with the table

    # The default taxonomy the database had is kept as it was: not replaced, not topped up.
    assert Taxonomy.objects.filter(slug="default").count() == 1
    taxonomy = Taxonomy.objects.get(slug="default")
    assert (taxonomy.pk, taxonomy.name, taxonomy.description) == (
        old["taxonomy"].pk,
        "Our labels",
        "Edited by the team.",
    )
    assert list(taxonomy.labels.values_list("name", "title", "definition")) == [
        ("clarification", "Asks back", "Our own definition."),
        ("house-style", "House style", "Ours only."),
    ]
    assert Study.objects.get(pk=old["study"].pk).taxonomy_id == taxonomy.pk
    assert Tag.objects.get().label.taxonomy_id == taxonomy.pk

    # The content type moved to exports under the same id: granted permissions still apply.
    moved = ContentType.objects.get(pk=content_type.pk)
    assert (moved.app_label, moved.model) == ("exports", "datasetexport")
    assert not ContentType.objects.filter(app_label="labeling", model="datasetexport").exists()
    assert ContentType.objects.get_for_model(DatasetExport).pk == content_type.pk
    assert Permission.objects.get(pk=permission.pk).content_type_id == content_type.pk
    assert get_user_model().objects.get(pk=old["alice"].pk).has_perm("exports.view_datasetexport")


def test_a_fresh_database_gets_the_default_taxonomy_with_every_label(back_at_latest):
    executor = MigrationExecutor(connection)
    migrate([(app, None) for app in sorted({app for app, _ in executor.loader.graph.nodes})])
    assert applied() == set()
    assert "labeling_taxonomy" not in connection.introspection.table_names()

    migrate()

    document = yaml.safe_load(DEFAULT_TAXONOMY_FILE.read_text())
    taxonomy = Taxonomy.objects.get()
    assert (taxonomy.slug, taxonomy.name) == ("default", document["name"])
    assert taxonomy.description == (document.get("description") or "")
    labels = list(taxonomy.labels.order_by("order"))
    assert [label.name for label in labels] == [raw["name"] for raw in document["labels"]]
    assert [label.order for label in labels] == list(range(len(document["labels"])))
    for label, raw in zip(labels, document["labels"], strict=True):
        for field in ("title", "kind", "definition", "examples", "roles", "takes_span", "links_turn", "polarity"):
            if field in raw:
                assert getattr(label, field) == raw[field], (label.name, field)
        assert label.key == str(raw.get("key") or "")[:1]
        assert label.colour == raw.get("colour", "#888888")
