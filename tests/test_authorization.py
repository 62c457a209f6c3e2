"""The authorization matrix: every URL pattern of the URLconf × every role → the expected status.

`test_every_url_pattern_is_in_the_table` walks the URLconf (`get_resolver()`, recursively, the admin
included) and fails on any pattern the table does not cover, so a new view cannot be added without
saying who may open it: add one line to `TABLE` (the key is the pattern's name, or its route when it
has none). Each ModelAdmin's changelist / add / history / delete / change / redirect patterns come from
`model_admin_rows()`, on one representative object per model (`OBJECTS`: a newly registered model needs
its one line there).

`test_every_role_gets_the_expected_status` requests each pattern as each role, each request in a savepoint
rolled back afterwards (so a vote or a logout does not change what the next request sees):

    anonymous          not logged in
    participant        a plain user: owns the conversations, tags and review in the URLs
    other_participant  a plain user with a conversation of their own in the same study
    rater              a plain user whose finished conversation the participant is reviewing
    staff              is_staff, no permissions
    staff_with_perm    is_staff with exactly the permission(s) the row names
    superuser

Expected: a status, LOGIN (302 to the login page) or ADMIN_LOGIN (302 to the admin's login page).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from annotate import services
from annotate.models import Comparison, Participant, Scenario, Study
from exports.models import DatasetExport
from exports.selection import ExportParams
from labeling import services as labeling
from labeling.models import GoldAnswer, GoldItem, Label, Tag, Taxonomy
from tests.helpers import finish_candidates, finished_conversation

ROLES = ("anonymous", "participant", "other_participant", "rater", "staff", "staff_with_perm", "superuser")
PLAIN = ("participant", "other_participant", "rater")
LOGIN, ADMIN_LOGIN = "login", "admin-login"


# --- expectations ------------------------------------------------------------------------------------


def owned(ok: int = 200) -> dict[str, int | str]:
    """The participant's own object: theirs; anyone else (staff and superusers too) gets 404, no hint it exists."""
    return {"anonymous": LOGIN, "participant": ok} | dict.fromkeys(ROLES[2:], 404)


def anyone(ok: int = 200, **but: int | str) -> dict[str, int | str]:
    """Any logged-in user."""
    return {"anonymous": LOGIN} | dict.fromkeys(ROLES[1:], ok) | but


def everybody(ok: int) -> dict[str, int | str]:
    """Logged in or not."""
    return dict.fromkeys(ROLES, ok)


def researchers(ok: int = 200) -> dict[str, int | str]:
    """Pages of the app for those holding the row's permission (and superusers): anyone else 403."""
    return {"anonymous": LOGIN} | dict.fromkeys((*PLAIN, "staff"), 403) | {"staff_with_perm": ok, "superuser": ok}


def admin_only(ok: int = 200, *, staff: int = 403, superuser: int | None = None) -> dict[str, int | str]:
    """Behind the admin's staff login: non-staff are sent to it; staff need the row's permission."""
    return (
        {"anonymous": ADMIN_LOGIN}
        | dict.fromkeys(PLAIN, ADMIN_LOGIN)
        | {"staff": staff, "staff_with_perm": ok, "superuser": ok if superuser is None else superuser}
    )


@dataclass(frozen=True)
class Row:
    """One pattern: the request to make (placeholders from the world, `{uuid}` a fresh one each time),
    the status per role, the permissions `staff_with_perm` holds, and whether the request logs out."""

    url: str
    expected: dict[str, int | str]
    method: str = "get"
    data: dict[str, str] = field(default_factory=dict)
    perms: tuple[str, ...] = ()
    logs_out: bool = False


TABLE: dict[str, Row] = {
    # --- log in / out
    "login": Row("/accounts/login/", everybody(200)),
    "logout": Row("/accounts/logout/", everybody(302), method="post", logs_out=True),
    # the icon browsers ask for on every page: a redirect to the static file
    "favicon": Row("/favicon.ico", everybody(302)),
    # --- rating session (annotate)
    "annotate:home": Row("/", anyone(200)),
    "annotate:study_start": Row("/studies/{study_slug}/start/", anyone(302), method="post"),
    "annotate:conversation": Row("/c/{voting}/", owned(200)),
    "annotate:message_send": Row(
        "/c/{ready}/messages/", owned(302), method="post", data={"text": "Hello", "client_key": "{uuid}"}
    ),
    "annotate:vote": Row(
        "/c/{voting}/vote/",
        owned(302),
        method="post",
        data={"parent": "{user_turn}", "choice": "tie", "continue_from": "{reply_a}", "idempotency_key": "{uuid}"},
    ),  # fmt: skip
    "annotate:turn_retry": Row("/c/{voting}/turns/{reply_a}/retry/", owned(302), method="post"),
    "annotate:finish": Row("/c/{ready}/finish/", owned(302), method="post", data={"goal": "yes", "understanding": "4"}),
    "annotate:stream": Row("/c/{voting}/stream/", owned(200)),
    "annotate:transcript": Row("/c/{voting}/transcript/", owned(200)),
    # --- a panel participant's way in and out (annotate.panel_views): the link signs the browser in as the panel
    # id's participant (anonymous: on to consent); an account with a password is asked first (200, the question).
    # The other pages are a signed-in panel participant's own: nobody here is one, and there is no login to send
    # them to (no password), so 403 with "open the study link again".
    "annotate:panel_enter": Row(
        "/p/{study_slug}/?PROLIFIC_PID=matrix-pid", everybody(200) | {"anonymous": 302}, logs_out=True
    ),
    "annotate:panel_consent": Row("/p/{study_slug}/consent/", everybody(403)),
    "annotate:panel_work": Row("/p/{study_slug}/work/", everybody(403)),
    "annotate:panel_done": Row("/p/{study_slug}/done/", everybody(403)),
    # --- tags and the review pass (labeling)
    "labeling:tag_add": Row("/tags/", owned(302), method="post", data={"turn": "{reply_a}", "label": "follow-up"}),
    "labeling:tag_remove": Row("/tags/{tag}/delete/", owned(302), method="post"),
    "labeling:suggestion_decide": Row("/tags/{suggestion}/decide/", owned(302), method="post", data={"accept": "1"}),
    "labeling:review_home": Row("/review/", anyone(200)),
    # anyone may claim a review, except of their own conversation (the rater's is the only one finished)
    "labeling:review_next": Row("/review/studies/{review_slug}/next/", anyone(302, rater=409), method="post"),
    # no attention check is due for anyone here: the page sends them back to the review list
    "labeling:review_check": Row("/review/studies/{review_slug}/check/", anyone(302)),
    "labeling:review_detail": Row("/review/{review}/", owned(200)),
    "labeling:review_done": Row("/review/{review}/done/", owned(302), method="post"),
    "labeling:review_vote": Row(
        "/review/{review}/vote/",
        owned(302),
        method="post",
        data={"parent": "{reviewed_turn}", "choice": "tie", "idempotency_key": "{uuid}"},
    ),  # fmt: skip
    "labeling:dashboard": Row(
        "/studies/{study_slug}/dashboard/", researchers(200), perms=("annotate.view_study_dashboard",)
    ),
    # "Refresh now": the page's permission; asks the worker (deduped) and redirects back to the page
    "labeling:dashboard_refresh": Row(
        "/studies/{study_slug}/dashboard/refresh/",
        researchers(302),
        method="post",
        perms=("annotate.view_study_dashboard",),
    ),  # fmt: skip
    # the arena leaderboard: the dashboard's permission (figures computed on the request: the world is small)
    "labeling:leaderboard": Row(
        "/studies/{study_slug}/leaderboard/", researchers(200), perms=("annotate.view_study_dashboard",)
    ),
    "labeling:leaderboard_refresh": Row(
        "/studies/{study_slug}/leaderboard/refresh/",
        researchers(302),
        method="post",
        perms=("annotate.view_study_dashboard",),
    ),  # fmt: skip
    # the qualification page: any logged-in user (the study has no qualification items: it says so)
    "labeling:qualify": Row("/studies/{study_slug}/qualify/", anyone(200)),
    # --- the admin site
    "admin:index": Row("/admin/", admin_only(200, staff=200)),
    "admin:login": Row(
        "/admin/login/", dict.fromkeys(ROLES, 200) | {"staff": 302, "staff_with_perm": 302, "superuser": 302}
    ),
    # non-staff are sent to the admin's index (then its login page), staff to LOGOUT_REDIRECT_URL
    "admin:logout": Row("/admin/logout/", everybody(302), method="post", logs_out=True),
    "admin:password_change": Row("/admin/password_change/", admin_only(200, staff=200)),
    "admin:password_change_done": Row("/admin/password_change/done/", admin_only(200, staff=200)),
    "admin:autocomplete": Row("/admin/autocomplete/", admin_only(403)),  # no autocomplete fields: refused
    "admin:jsi18n": Row("/admin/jsi18n/", admin_only(200, staff=200)),
    "admin:view_on_site": Row("/admin/r/{study_type}/{study}/", admin_only(404, staff=404)),  # no absolute URLs
    "admin:app_list": Row("/admin/annotate/", admin_only(200, staff=404), perms=("annotate.view_study",)),
    "admin/(?P<url>.*)$": Row("/admin/no-such-page/", admin_only(404, staff=404)),
    # --- the admin's own views (get_urls): each checks the model permission it acts on
    "admin:annotate_study_import_scenarios": Row(
        "/admin/annotate/study/{study}/import-scenarios/", admin_only(200), perms=("annotate.change_study",)
    ),
    "admin:labeling_taxonomy_import": Row(
        "/admin/labeling/taxonomy/import-yaml/",
        admin_only(200),
        perms=("labeling.add_taxonomy", "labeling.change_taxonomy"),
    ),  # fmt: skip
    "admin:labeling_golditem_import": Row(
        "/admin/labeling/golditem/import/",
        admin_only(200),
        perms=("labeling.add_golditem", "labeling.change_golditem"),
    ),  # fmt: skip
    "admin:labeling_taxonomy_export": Row(
        "/admin/labeling/taxonomy/{taxonomy}/yaml/", admin_only(200), perms=("labeling.view_taxonomy",)
    ),
    "admin:exports_datasetexport_progress": Row(
        "/admin/exports/datasetexport/{export}/progress/", admin_only(200), perms=("exports.view_datasetexport",)
    ),
    "admin:exports_datasetexport_download": Row(
        "/admin/exports/datasetexport/{export}/download/dpo.jsonl",
        admin_only(200),
        perms=("exports.view_datasetexport",),
    ),  # fmt: skip
    # model operations: the health page reads (view), the test prompt may reach the configured server (change)
    "admin:workers_modelconfig_health": Row(
        "/admin/workers/modelconfig/health/", admin_only(200), perms=("workers.view_modelconfig",)
    ),
    "admin:workers_modelconfig_test_prompt": Row(
        "/admin/workers/modelconfig/{config}/test-prompt/", admin_only(200), perms=("workers.change_modelconfig",)
    ),
    "admin:auth_user_password_change": Row(
        "/admin/auth/user/{participant}/password/", admin_only(200), perms=("auth.change_user",)
    ),
}

# One object per registered model, for its admin's object pages (a key of the world, or a callable).
OBJECTS: dict[str, Any] = {
    "auth.user": "participant",
    "auth.group": "group",
    "axes.accessattempt": "access_attempt",
    "axes.accesslog": "access_log",
    "axes.accessfailurelog": "access_failure",
    "workers.modelconfig": "config",
    "annotate.study": "study",
    "annotate.scenario": "scenario",
    "annotate.conversation": "voting",
    "annotate.turn": "reply_a",
    "annotate.comparison": "comparison",
    "annotate.participant": "participation",
    "labeling.taxonomy": "taxonomy",
    "labeling.label": "label",
    "labeling.tag": "tag",
    "labeling.reviewassignment": "review",
    "labeling.golditem": "gold_item",
    "labeling.goldanswer": "gold_answer",
    "exports.datasetexport": "export",
}
# Admins whose add page is closed to everyone (rows are written by the app, not by hand), and add pages that
# need more than the add permission (Django's UserAdmin: add and change).
NO_ADD_PAGE = {
    "axes.accessattempt", "axes.accesslog", "axes.accessfailurelog", "annotate.participant", "labeling.goldanswer",
}  # fmt: skip
ADD_PERMS = {"auth.user": ("auth.add_user", "auth.change_user")}


def model_admin_rows() -> dict[str, Row]:
    """Each ModelAdmin's standard pages: view / add / delete permission of the model; the bare object URL
    redirects any staff user to the change page (which then checks)."""
    rows: dict[str, Row] = {}
    for model in admin.site._registry:
        label = model._meta.label_lower
        if label not in OBJECTS:
            continue  # its pages show up as missing in test_every_url_pattern_is_in_the_table
        app, name = model._meta.app_label, model._meta.model_name
        base = f"/admin/{app}/{name}/"
        obj = f"{{{OBJECTS[label]}}}"
        add = admin_only(403, superuser=403) if label in NO_ADD_PAGE else admin_only(200)
        rows |= {
            f"admin:{app}_{name}_changelist": Row(base, admin_only(200), perms=(f"{app}.view_{name}",)),
            f"admin:{app}_{name}_add": Row(f"{base}add/", add, perms=ADD_PERMS.get(label, (f"{app}.add_{name}",))),
            f"admin:{app}_{name}_history": Row(f"{base}{obj}/history/", admin_only(200), perms=(f"{app}.view_{name}",)),
            f"admin:{app}_{name}_delete": Row(f"{base}{obj}/delete/", admin_only(200), perms=(f"{app}.delete_{name}",)),
            f"admin:{app}_{name}_change": Row(f"{base}{obj}/change/", admin_only(200), perms=(f"{app}.view_{name}",)),
            f"admin/{app}/{name}/<path:object_id>/": Row(f"{base}{obj}/", admin_only(302, staff=302)),
        }
    return rows


# --- the URLconf -------------------------------------------------------------------------------------


def url_patterns(
    resolver: URLResolver | None = None, prefix: str = "", namespace: str = ""
) -> Iterator[tuple[str, str]]:
    """(key, route) of every pattern: the key is the namespaced name, or the route when it has none."""
    for pattern in (resolver or get_resolver()).url_patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = namespace + (f"{pattern.namespace}:" if pattern.namespace else "")
            yield from url_patterns(pattern, route, inner)
        else:
            assert isinstance(pattern, URLPattern)
            yield (f"{namespace}{pattern.name}" if pattern.name else route), route


def all_rows() -> dict[str, Row]:
    return TABLE | model_admin_rows()


def test_every_url_pattern_is_in_the_table():
    patterns = dict(url_patterns())
    rows = all_rows()
    missing = {key: route for key, route in patterns.items() if key not in rows}
    assert not missing, "URL patterns with no line in tests/test_authorization.py's TABLE:\n" + "\n".join(
        f"  {key!r}: Row(...),  # /{route}" for key, route in sorted(missing.items())
    )
    stale = sorted(set(rows) - set(patterns))
    assert not stale, f"TABLE lines for patterns that no longer exist: {stale}"
    unknown = [m._meta.label_lower for m in admin.site._registry if m._meta.label_lower not in OBJECTS]
    assert not unknown, f"registered in admin with no representative object in OBJECTS: {unknown}"


def test_every_row_names_every_role():
    for key, row in all_rows().items():
        assert set(row.expected) == set(ROLES), key


# --- the world the URLs point into ------------------------------------------------------------------


@pytest.fixture
def world(make_study, make_user, tmp_path) -> dict[str, Any]:
    participant, other, rater = make_user("participant"), make_user("other"), make_user("rater")
    study = make_study(scenarios=5, overlap=10)
    voting = services.conversation_start(study=study, rater=participant)
    user_turn = services.message_send(conversation=voting, text="Plan a party")
    reply_a, reply_b = finish_candidates(user_turn, ("Which kind of party?", "Cake."))
    ready = services.conversation_start(study=make_study(), rater=participant)
    services.conversation_start(study=study, rater=other)
    review_study = make_study(scenarios=2, overlap=1, review_overlap=10)
    reviewed = finished_conversation(review_study, rater)
    review = labeling.review_claim(rater=participant, study=review_study)
    tag = labeling.tag_add(rater=participant, turn_id=reply_a.pk, label="clarification")
    suggestion = Tag.objects.create(
        turn=reply_b, label=Label.objects.get(taxonomy__slug="default", name="acknowledgment"), rater=participant,
        source=Tag.Source.SUGGESTION, status=Tag.Status.SUGGESTED,
    )  # fmt: skip
    gold_item = GoldItem.objects.create(study=make_study(scenarios=0), context="Hi", reply="Hello! What for?")
    gold_answer = GoldAnswer.objects.create(item=gold_item, rater=rater, score=1.0, passed=True)
    (tmp_path / "dpo.jsonl").write_text("{}\n")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [{"path": "dpo.jsonl"}]}))
    export = DatasetExport.objects.create(
        study=study, format="dpo", params=ExportParams(study=study.slug, format="dpo").as_manifest(),
        status=DatasetExport.Status.DONE, out_dir=str(tmp_path),
    )  # fmt: skip
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    seen = {"user_agent": "test", "ip_address": "127.0.0.1", "username": "x", "http_accept": "*/*", "path_info": "/"}
    objects = {
        "participant": participant, "other": other, "rater": rater, "study": study, "voting": voting, "ready": ready,
        "user_turn": user_turn, "reply_a": reply_a, "review": review, "tag": tag, "suggestion": suggestion,
        "reviewed_turn": reviewed.turns.get(text="Plan a party"), "export": export, "group": Group.objects.create(),
        "gold_item": gold_item, "gold_answer": gold_answer,
        "config": study.model_pool.first(), "scenario": Scenario.objects.filter(study=study).first(),
        "comparison": Comparison.objects.filter(conversation=reviewed).first(),
        "participation": Participant.objects.filter(user=participant).first()
        or Participant.objects.create(study=study, user=participant),
        "taxonomy": Taxonomy.objects.get(slug="default"), "label": Label.objects.filter(taxonomy__slug="default")[0],
        "access_attempt": AccessAttempt.objects.create(failures_since_start=1, get_data="", post_data="", **seen),
        "access_log": AccessLog.objects.create(**seen), "access_failure": AccessFailureLog.objects.create(**seen),
    }  # fmt: skip
    values: dict[str, Any] = {key: getattr(obj, "pk", obj) for key, obj in objects.items()}
    values |= {"study_slug": study.slug, "review_slug": review_study.slug}
    values["study_type"] = ContentType.objects.get_for_model(Study).pk
    values["users"] = {"participant": participant, "other_participant": other, "rater": rater}
    return values


@contextmanager
def undone() -> Iterator[None]:
    """One request in a savepoint rolled back afterwards: every request sees the same world."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


class Clients:
    """A logged-in client per role (`staff_with_perm`: one per set of permissions), logged in again
    after a request that logs out."""

    def __init__(self, users: dict[str, User]) -> None:
        self.users: dict[str | tuple[str, ...], User | None] = {"anonymous": None, **users}
        # No passwords (force_login needs none): hashing one per user would cost most of the test's time.
        self.users["staff"] = User.objects.create(username="staff", is_staff=True)
        self.users["superuser"] = User.objects.create(username="boss", is_staff=True, is_superuser=True)
        self.clients: dict[str | tuple[str, ...], Client] = {}

    def _user(self, key: str | tuple[str, ...]) -> User | None:
        if key not in self.users:
            assert isinstance(key, tuple)
            user = User.objects.create(username=f"staff-{len(self.users)}", is_staff=True)
            for perm in key:
                app_label, codename = perm.split(".")
                user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
            self.users[key] = user
        return self.users[key]

    def get(self, role: str, perms: tuple[str, ...]) -> Client:
        key: str | tuple[str, ...] = perms if role == "staff_with_perm" else role
        if key not in self.clients:
            client = Client()
            user = self._user(key)
            if user is not None:
                client.force_login(user)
            self.clients[key] = client
        return self.clients[key]

    def forget(self, role: str, perms: tuple[str, ...]) -> None:
        self.clients.pop(perms if role == "staff_with_perm" else role, None)


def _matches(response: Any, expected: int | str) -> bool:
    if expected == LOGIN:
        return response.status_code == 302 and response["Location"].startswith(reverse("login") + "?next=")
    if expected == ADMIN_LOGIN:
        return response.status_code == 302 and response["Location"].startswith(reverse("admin:login") + "?next=")
    return response.status_code == expected


def _shown(response: Any) -> str:
    location = response.get("Location")
    return f"{response.status_code}" + (f" → {location}" if location else "")


@pytest.mark.django_db
def test_every_role_gets_the_expected_status(world, settings):
    if hasattr(settings, "RATE_LIMITS"):
        settings.RATE_LIMITS = dict.fromkeys(settings.RATE_LIMITS, 0)
    clients = Clients(world.pop("users"))
    patterns = dict(url_patterns())
    wrong = []
    for key, row in sorted(all_rows().items()):
        if key not in patterns:
            continue  # reported by test_every_url_pattern_is_in_the_table
        for role in ROLES:
            values = {**world, "uuid": uuid.uuid4()}
            url = row.url.format(**values)
            data = {name: value.format(**values) for name, value in row.data.items()}
            client = clients.get(role, row.perms)
            with undone():
                response = getattr(client, row.method)(url, data)
            if row.logs_out:
                clients.forget(role, row.perms)
            if not _matches(response, row.expected[role]):
                wrong.append(
                    f"{row.method.upper()} {url} as {role}: expected {row.expected[role]}, got {_shown(response)}"
                )
    assert not wrong, f"{len(wrong)} unexpected answers:\n" + "\n".join(wrong)
