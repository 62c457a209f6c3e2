"""Admin pages, scenario import through admin, and the management commands."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotate.models import Conversation, Scenario, Study, Turn
from workers.models import ModelConfig

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, make_user):
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


def test_every_admin_changelist_and_add_page_renders(staff_client, make_conversation):
    make_conversation()
    for model in (Study, Scenario, Conversation, Turn, ModelConfig):
        meta = model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert staff_client.get(changelist).status_code == 200, changelist
        assert staff_client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_add")).status_code == 200


def test_admin_imports_scenarios_and_reports_bad_rows(staff_client, make_study):
    study = make_study(scenarios=0)
    url = reverse("admin:annotate_study_import_scenarios", args=[study.pk])
    assert (
        "Import scenarios" in staff_client.get(reverse("admin:annotate_study_change", args=[study.pk])).content.decode()
    )
    good = SimpleUploadedFile("s.csv", b"id,title,brief,hidden_intent\nx,X,Brief X,intent\n")
    response = staff_client.post(url, {"file": good})
    assert response.status_code == 302
    assert Scenario.objects.filter(study=study, external_id="x", hidden_intent="intent").exists()
    bad = SimpleUploadedFile("s.jsonl", b'{"id": "y", "brief": "ok"}\nnope\n')
    response = staff_client.post(url, {"file": bad})
    assert response.status_code == 400 and "Line 2 is not valid JSON" in response.content.decode()
    assert not Scenario.objects.filter(external_id="y").exists()


def test_model_config_validation_in_admin(staff_client):
    response = staff_client.post(
        reverse("admin:workers_modelconfig_add"),
        {"name": "bad", "backend": "openai", "prompt_format": "auto", "params": '{"temprature": 1}', "enabled": "on"},
    )
    body = response.content.decode()
    assert response.status_code == 200 and "Unknown parameters: temprature" in body
    assert not ModelConfig.objects.filter(name="bad").exists()


def test_import_scenarios_command(tmp_path, make_study):
    study = make_study(scenarios=0)
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a", "brief": "Brief", "hidden_intent": "x"}\n')
    out = io.StringIO()
    call_command("import_scenarios", str(path), "--study", study.slug, stdout=out)
    assert "1 scenarios created, 0 updated" in out.getvalue()
    with pytest.raises(CommandError, match="No study"):
        call_command("import_scenarios", str(path), "--study", "nope")
    with pytest.raises(CommandError, match="is not a file"):
        call_command("import_scenarios", str(tmp_path / "missing.csv"), "--study", study.slug)


def test_setup_demo_is_repeatable_and_prints_credentials():
    out = io.StringIO()
    call_command("setup_demo", stdout=out)
    call_command("setup_demo", stdout=out)
    study = Study.objects.get(slug="demo")
    assert study.scenarios.count() == 6
    assert sorted(study.model_pool.values_list("name", flat=True)) == ["gemma-clarify", "gemma-plain"]
    assert "rater  / commonground-rater" in out.getvalue()


@pytest.mark.parametrize("command", ["import_scenarios", "setup_demo", "serve", "prepare_models"])
def test_commands_have_help(command):
    from django.core.management import get_commands, load_command_class

    parser = load_command_class(get_commands()[command], command).create_parser("manage.py", command)
    assert parser.format_help().strip()
