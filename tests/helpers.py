"""Helpers shared by test modules (plain functions and constants; the fixtures live in the
conftest.py files). Child processes, free ports and polling are in tests/processes.py, which
bench/ shares; the golden export study is built by tests/exports/export_study.py.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Permission

from annotate import selectors, services
from annotate.models import Comparison, Conversation, Turn

# --- rating sessions without a worker ----------------------------------------------------------


def finish_candidates(user_turn: Turn, texts: tuple[str, ...] = ("reply A", "reply B")) -> list[Turn]:
    """Stand in for the worker: mark the candidates done (the worker path is tested in tests/workers)."""
    from django.utils import timezone

    candidates = selectors.candidates_of(user_turn)
    for turn, text in zip(candidates, texts, strict=False):
        Turn.objects.filter(pk=turn.pk).update(status=Turn.Status.DONE, text=text, finished_at=timezone.now())
    return selectors.candidates_of(user_turn)


def choose(conversation: Conversation, parent_id: int, **fields: object) -> Comparison:
    """The rater's vote on the candidates answering `parent_id`, with a fresh request key."""
    return services.comparison_record(
        conversation=conversation,
        rater=conversation.rater,
        parent_id=parent_id,
        idempotency_key=uuid.uuid4(),
        **fields,  # type: ignore[arg-type]
    )


def finished_conversation(study, rater, texts=("Plan a party", "For ten kids")) -> Conversation:
    """A completed conversation: each message answered, the first reply chosen, the survey filled."""
    conversation = services.conversation_start(study=study, rater=rater)
    for number, text in enumerate(texts):
        user_turn = services.message_send(conversation=conversation, text=text)
        a, _ = finish_candidates(user_turn, (f"answer {number} A", f"answer {number} B"))
        choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    return services.conversation_finish(conversation=conversation, goal="yes", understanding=4)


# --- pages ---------------------------------------------------------------------------------------

HTMX = {"HTTP_HX_REQUEST": "true"}  # the header htmx sends: the views answer with a fragment


# --- processes on the test database (see tests/processes.py) ------------------------------------


def child_database_url() -> str:
    """DATABASE_URL of the test database pytest-django created (for child processes)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a worker / web server child: this one, on the test database."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=child_database_url(),
        MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR),
        TURN_LEASE_SECONDS=str(settings.TURN_LEASE_SECONDS),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


# --- the browser (Playwright pages) ---------------------------------------------------------------

PASSWORD = "browser-test-pw-1"


def log_in(page: Any, base_url: str, username: str, *, home: str = "/", login: str = "/accounts/login/") -> None:
    """Open `home`, get sent to the `login` page, log in and land back on `home` (admin: "/admin/",
    "/admin/login/")."""
    page.goto(f"{base_url}{home}")
    page.wait_for_url(re.compile(re.escape(login)))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}{home}")


def staff_with(make_user: Any, *perms: str) -> Any:
    """A staff user holding exactly these permissions ("app_label.codename")."""
    user = make_user(is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user
