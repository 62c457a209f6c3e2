"""`setup_demo` (run by `make run` at every start) creates what is missing and keeps what exists; --reset puts the
demo back as shipped."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands, load_command_class

from annotate.models import Scenario, Study
from labeling.models import Taxonomy
from workers.models import ModelConfig

pytestmark = pytest.mark.django_db


def setup_demo(*args: str) -> str:
    out = io.StringIO()
    call_command("setup_demo", *args, stdout=out)
    return out.getvalue()


def admin_edits() -> None:
    """What an admin changes in the demo between two starts."""
    Study.objects.filter(slug="demo").update(max_user_turns=3, instructions="Our own instructions.")
    ModelConfig.objects.filter(name="gemma-clarify").update(system_prompt="Our prompt.")
    Scenario.objects.filter(study__slug="demo", external_id="party-1").update(title="Our party")
    for username in ("admin", "rater"):
        user = get_user_model().objects.get(username=username)
        user.set_password(f"{username}-own-password")
        user.save()


def test_a_second_run_keeps_the_admins_edits_and_puts_back_what_was_deleted():
    first = setup_demo()
    assert "admin  / commonground-admin" in first and "rater  / commonground-rater" in first
    admin_edits()
    Scenario.objects.filter(study__slug="demo", external_id="trip-1").delete()
    Taxonomy.objects.filter(slug="default").delete()

    second = setup_demo()

    study = Study.objects.get(slug="demo")
    assert (study.max_user_turns, study.instructions) == (3, "Our own instructions.")
    assert ModelConfig.objects.get(name="gemma-clarify").system_prompt == "Our prompt."
    assert study.scenarios.get(external_id="party-1").title == "Our party"
    assert study.scenarios.filter(external_id="trip-1").exists() and study.scenarios.count() == 6  # put back
    assert Taxonomy.objects.filter(slug="default").exists()
    users = get_user_model().objects
    assert users.get(username="rater").check_password("rater-own-password")
    assert users.get(username="admin").check_password("admin-own-password")
    assert "rater  / (password kept; setup_demo --reset sets commonground-rater)" in second


def test_reset_puts_the_demo_back_as_shipped():
    setup_demo()
    admin_edits()
    get_user_model().objects.filter(username="admin").update(is_superuser=False)

    out = setup_demo("--reset")

    study = Study.objects.get(slug="demo")
    assert study.max_user_turns == 6 and study.instructions.startswith("Play the situation on the left.")
    assert ModelConfig.objects.get(name="gemma-clarify").system_prompt.startswith("The following is a conversation")
    assert study.scenarios.get(external_id="party-1").title == "Plan a birthday party"
    assert sorted(study.model_pool.values_list("name", flat=True)) == ["gemma-clarify", "gemma-plain"]
    users = get_user_model().objects
    assert users.get(username="rater").check_password("commonground-rater")
    admin = users.get(username="admin")
    assert admin.check_password("commonground-admin") and admin.is_superuser
    assert "put back as shipped" in out and "rater  / commonground-rater" in out


def test_help_says_what_is_kept_and_what_reset_does():
    parser = load_command_class(get_commands()["setup_demo"], "setup_demo").create_parser("manage.py", "setup_demo")
    text = " ".join(parser.format_help().split())
    assert "never changed" in text and "--reset" in text and "back as shipped" in text
