"""Property-based tests (hypothesis): whatever a user posts to the message, vote, tag, review vote, survey
and import endpoints, the answer is never a 5xx, and a refused request (4xx) writes nothing.

Values are arbitrary text (NUL, control characters, lone surrogates), arbitrary integers, and the
plausible values of each field. Every body is sent urlencoded as bytes, text encoded with
"surrogatepass": a lone surrogate arrives as %ED%A0%80 (invalid UTF-8), as from a broken client.
The Django test client raises a view's exception instead of answering 500, so a crash fails the
example outright (and hypothesis shrinks it to the smallest input).

Each test sets up its data once (the `db` fixture is function-scoped: hypothesis shares it across
examples, hence the suppressed health check) and runs each example inside a savepoint that is rolled
back, so examples are independent. Rate limits are off (a 429 would only shrink what is explored).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import reverse
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from annotate import services
from annotate.models import Comparison, Conversation, Participant, Scenario, Study, Turn
from labeling import services as labeling
from labeling.models import Label, ReviewAssignment, Tag, Taxonomy
from labeling.services import LABEL_FIELDS
from tests.helpers import finish_candidates, finished_conversation

pytestmark = pytest.mark.django_db

EXAMPLES = 75
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- values ---------------------------------------------------------------------------------------

# Any code point, lone surrogates and NUL included.
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=60)
ANY_NUMBER = st.integers().map(str)
HTMX = st.booleans()


def field(*likely: object) -> st.SearchStrategy[str]:
    """A form value: mostly one of the `likely` ones (what the page would send, so that examples get past
    the first check), else a number, any text or nothing."""
    plausible = [st.sampled_from([str(v) for v in likely])] * 3 if likely else []
    return st.one_of(*plausible, ANY_NUMBER, ANY_TEXT, st.just(""))


def form(
    required: dict[str, st.SearchStrategy[str]] | None = None, **optional: st.SearchStrategy[str]
) -> st.SearchStrategy[dict[str, str]]:
    """A form with the `required` fields (whose values may still be anything) and the others maybe."""
    return st.fixed_dictionaries(required or {}, optional=optional)


def body(data: dict[str, str]) -> bytes:
    """The urlencoded body a browser would send, lone surrogates passed through as invalid UTF-8."""
    return "&".join(
        f"{quote(k)}={quote_from_bytes(v.encode('utf-8', 'surrogatepass'))}" for k, v in data.items()
    ).encode()


def post(client: Any, url: str, data: dict[str, str], htmx: bool) -> Any:
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(url, body(data), content_type="application/x-www-form-urlencoded", headers=headers)


# --- what "wrote nothing" means -------------------------------------------------------------------

WATCHED = (Conversation, Turn, Comparison, Tag, ReviewAssignment, Scenario, Study, Taxonomy, Label)


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables a rater or an import can write (the test database is small)."""
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in WATCHED}


@contextmanager
def undone() -> Iterator[None]:
    """Run one example in a savepoint rolled back at the end: every example sees the same database."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def check(response: Any, before: dict[str, list[dict[str, Any]]]) -> None:
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        assert snapshot() == before, f"refused with {response.status_code} but wrote"


@pytest.fixture(autouse=True)
def _no_rate_limits(settings: Any) -> None:
    if hasattr(settings, "RATE_LIMITS"):
        settings.RATE_LIMITS = dict.fromkeys(settings.RATE_LIMITS, 0)


# --- the rating session -----------------------------------------------------------------------------


@pytest.fixture
def session(client, make_study, make_user) -> Any:
    """A logged-in rater with two conversations (two studies): `ready` takes a message, `voting` awaits
    a vote on two finished replies. `client.ids` resolves the placeholders the forms use for ids."""
    rater = make_user()
    ready = services.conversation_start(study=make_study(), rater=rater)
    voting = services.conversation_start(study=make_study(), rater=rater)
    user_turn = services.message_send(conversation=voting, text="Plan a party")
    a, b = finish_candidates(user_turn, ("Which kind of party?", "Cake."))
    label = Label.objects.get(taxonomy__slug="default", name="clarification")
    client.force_login(rater)
    client.ready, client.voting = ready, voting
    client.ids = {"<user>": user_turn.pk, "<a>": a.pk, "<b>": b.pk, "<label>": label.pk}
    return client


def resolved(data: dict[str, str], ids: dict[str, int]) -> dict[str, str]:
    """The form with its id placeholders ("<a>") replaced by the ids of the fixture's rows."""
    return {key: str(ids[value]) if value in ids else value for key, value in data.items()}


@FUZZ
@given(data=form({"text": field("Hello", "x" * 3000), "client_key": field(uuid.uuid4())}), htmx=HTMX)
@example(data={"text": "hi\x00", "client_key": str(uuid.uuid4())}, htmx=True)
@example(data={"text": "half \ud800 pair", "client_key": str(uuid.uuid4())}, htmx=False)
def test_message_never_5xx(session, data, htmx):
    url = reverse("annotate:message_send", args=[session.ready.pk])
    with undone():
        before = snapshot()
        check(post(session, url, data, htmx), before)


VOTE = form(
    {
        "parent": field("<user>", "<a>"),
        "choice": field("<a>", "<b>", "tie", "all_bad", "candidate"),
        "idempotency_key": field(uuid.uuid4()),
    },
    strength=field("slight", "clear"),
    reason=field("because"),
    rewrite=field("A better reply"),
    use_rewrite=field("on"),
)


@FUZZ
@given(data=VOTE, htmx=HTMX, pk=st.one_of(st.none(), st.none(), st.none(), st.integers(min_value=0)))
@example(data={"parent": "<user>", "choice": "²", "idempotency_key": str(uuid.uuid4())}, htmx=True, pk=None)
@example(data={"parent": "<user>", "choice": "9" * 30, "idempotency_key": str(uuid.uuid4())}, htmx=False, pk=None)
def test_vote_never_5xx(session, data, htmx, pk):
    url = reverse("annotate:vote", args=[session.voting.pk if pk is None else pk])
    with undone():
        before = snapshot()
        check(post(session, url, resolved(data, session.ids), htmx), before)


@FUZZ
@given(
    data=form({"goal": field("yes", "partly", "no"), "understanding": field(1, 3, 5, "²", 0, 6)}, comment=field("ok")),
    htmx=HTMX,
)
@example(data={"goal": "yes", "understanding": "²"}, htmx=False)
def test_survey_finish_never_5xx(session, data, htmx):
    url = reverse("annotate:finish", args=[session.ready.pk])
    with undone():
        before = snapshot()
        check(post(session, url, data, htmx), before)


TAG = form(
    {"turn": field("<a>", "<user>"), "label": field("clarification", "follow-up", "<label>")},
    task=field("live", "review"),
    span_start=field(0, 3),
    span_end=field(5, 10),
    linked_turn=field("<user>"),
)


@FUZZ
@given(data=TAG, htmx=HTMX)
@example(data={"turn": "<a>", "label": "²"}, htmx=True)
@example(data={"turn": "<a>", "label": "clari\x00fication"}, htmx=False)
@example(data={"turn": "<a>", "label": "9" * 30}, htmx=True)
def test_tag_never_5xx(session, data, htmx):
    with undone():
        before = snapshot()
        check(post(session, reverse("labeling:tag_add"), resolved(data, session.ids), htmx), before)


# --- the review pass --------------------------------------------------------------------------------


@pytest.fixture
def reviewer(client, make_study, make_user) -> Any:
    """A logged-in reviewer with an open review of a finished conversation (two replies per message)."""
    study = make_study(scenarios=2, overlap=1, review_overlap=2)
    conversation = finished_conversation(study, make_user())
    assignment = labeling.review_claim(rater=make_user(), study=study)
    user_turn = conversation.turns.get(text="Plan a party")
    a, b = Turn.objects.filter(parent=user_turn).order_by("position")
    client.force_login(assignment.rater)
    client.assignment = assignment
    client.ids = {"<user>": user_turn.pk, "<a>": a.pk, "<b>": b.pk}
    return client


REVIEW_VOTE = form(
    {
        "parent": field("<user>", "<a>"),
        "choice": field("<a>", "<b>", "tie", "all_bad"),
        "idempotency_key": field(uuid.uuid4()),
    },
    strength=field("slight", "clear"),
    reason=field("because"),
)


@FUZZ
@given(data=REVIEW_VOTE, htmx=HTMX)
@example(data={"parent": "<user>", "choice": "²", "idempotency_key": str(uuid.uuid4())}, htmx=True)
@example(data={"parent": "<user>", "choice": "²", "idempotency_key": str(uuid.uuid4())}, htmx=False)
def test_review_vote_never_5xx(reviewer, data, htmx):
    url = reverse("labeling:review_vote", args=[reviewer.assignment.pk])
    with undone():
        before = snapshot()
        check(post(reviewer, url, resolved(data, reviewer.ids), htmx), before)


# --- imports in admin, as a superuser -------------------------------------------------------------

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT)
JSON_VALUE = st.recursive(
    JSON_LEAF, lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=8,
)  # fmt: skip
SCENARIO_KEY = st.one_of(st.sampled_from(["id", "external_id", "title", "brief", "hidden_intent", "opening_message"]),
                         ANY_TEXT)  # fmt: skip
SCENARIO_ROW = st.dictionaries(SCENARIO_KEY, st.one_of(ANY_TEXT, JSON_VALUE), max_size=6)


def _csv(rows: list[dict[str, Any]]) -> bytes:
    keys = sorted({k for row in rows for k in row})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows([{k: str(v) for k, v in row.items()} for row in rows])
    return out.getvalue().encode("utf-8", "surrogatepass")


SCENARIO_FILE = st.one_of(
    st.tuples(st.just("s.jsonl"), st.lists(SCENARIO_ROW, max_size=3).map(
        lambda rows: "".join(json.dumps(row) + "\n" for row in rows).encode())),
    st.tuples(st.just("s.csv"), st.lists(SCENARIO_ROW, min_size=1, max_size=3).map(_csv)),
    st.tuples(st.sampled_from(["s.jsonl", "s.csv", "s.txt"]), st.binary(max_size=300)),
)  # fmt: skip


@pytest.fixture
def superuser(client, make_user) -> Any:
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


@FUZZ
@given(upload=SCENARIO_FILE)
@example(upload=("s.jsonl", b'{"id": "x", "brief": "\\ud800"}\n'))
@example(upload=("s.jsonl", b"[" * 50_000 + b"\n"))
@example(upload=("s.csv", b"id,brief\nx,\xed\xa0\x80\n"))
def test_scenario_import_never_5xx(superuser, make_study, upload):
    study = make_study(scenarios=1) if not Study.objects.exists() else Study.objects.get()
    name, data = upload
    url = reverse("admin:annotate_study_import_scenarios", args=[study.pk])
    with undone():
        before = snapshot()
        response = superuser.post(url, {"file": SimpleUploadedFile(name, data)})
        check(response, before)
        assert response.status_code in (302, 400), response.status_code


LABEL_VALUE = st.one_of(
    st.sampled_from([True, False, -1, 0, 1, 2, "#a0b1c2", "red", "grounding", "user", "both", "k", "t", "ok-name"]),
    JSON_VALUE,
)
LABEL = st.dictionaries(st.sampled_from([*LABEL_FIELDS, "wat"]), LABEL_VALUE, max_size=8)
TAXONOMY = st.fixed_dictionaries(
    {"labels": st.one_of(st.lists(LABEL, max_size=3), JSON_VALUE)},
    optional={"name": LABEL_VALUE, "slug": st.one_of(st.sampled_from(["x", "default", "a b"]), ANY_TEXT),
              "description": LABEL_VALUE},
)  # fmt: skip
TAXONOMY_FILE = st.one_of(
    TAXONOMY.map(lambda doc: yaml.safe_dump(doc, allow_unicode=False).encode()),
    ANY_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
)


@FUZZ
@given(data=TAXONOMY_FILE)
@example(data=b'slug: x\nlabels:\n  - {name: a, definition: "\\ud800"}\n')
@example(data=b"slug: x\nlabels: " + b"[" * 5000 + b"\n")
def test_taxonomy_import_never_5xx(superuser, data):
    url = reverse("admin:labeling_taxonomy_import")
    with undone():
        before = snapshot()
        response = superuser.post(url, {"file": SimpleUploadedFile("t.yaml", data)})
        check(response, before)
        assert response.status_code in (302, 400), response.status_code


# --- panel entry (/p/<slug>/) ---------------------------------------------------------------------
# PANEL ENTRY (annotate.panel_views.enter): the study link a panel (Prolific) sends participants to, with
# their ids in the query under the study's parameter names. Anyone can open it, signed in or not, so any
# query must give a page or a refusal, and a refused entry must make no account and no participant.
# More panel pages (consent, work, done) go here the same way.

PANEL_QUERY = st.dictionaries(
    st.one_of(st.sampled_from(["PROLIFIC_PID", "STUDY_ID", "SESSION_ID"]), ANY_TEXT),
    field("PID123", "5f1c0a", "{{%PROLIFIC_PID%}}", "x" * 101),
    max_size=4,
)


def _query(values: dict[str, str]) -> str:
    return "&".join(f"{quote(k.encode('utf-8', 'surrogatepass'))}={quote(v.encode('utf-8', 'surrogatepass'))}"
                    for k, v in values.items())  # fmt: skip


def panel_snapshot() -> dict[str, list[dict[str, Any]]]:
    return snapshot() | {model.__name__: list(model.objects.order_by("pk").values()) for model in (User, Participant)}


@FUZZ
@given(values=PANEL_QUERY)
@example(values={"PROLIFIC_PID": "a\x00b"})
@example(values={"PROLIFIC_PID": "half \ud800 pair"})
def test_panel_entry_never_5xx(client, make_study, values):
    study = make_study() if not Study.objects.exists() else Study.objects.get()
    with undone():
        before = panel_snapshot()
        response = client.get(f"/p/{study.slug}/?{_query(values)}")
        event(f"status {response.status_code}")
        assert response.status_code < 500, response.content[:500]
        if response.status_code >= 400:
            assert panel_snapshot() == before, f"refused with {response.status_code} but wrote"
