"""The admin's custom views check the model permission they act on, not only `is_staff`: a staff user
without it gets 403 and nothing happens; with it, the view works. (The whole URL map × roles is
tests/test_authorization.py; this file checks each custom view's permission precisely.)"""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotate.models import Scenario
from exports.models import DatasetExport
from labeling.models import Taxonomy
from tests.helpers import staff_with

pytestmark = pytest.mark.django_db

TAXONOMY_YAML = b"name: Mine\nslug: mine\nlabels:\n  - {name: ok-label, definition: A definition.}\n"


def test_scenario_import_needs_change_study(client, make_user, make_study):
    study = make_study(scenarios=0)
    url = reverse("admin:annotate_study_import_scenarios", args=[study.pk])
    upload = b"id,brief\nx,Brief X\n"
    for perms in [(), ("annotate.view_study",), ("annotate.add_study",)]:
        client.force_login(staff_with(make_user, *perms))
        assert client.get(url).status_code == 403, perms
        assert client.post(url, {"file": SimpleUploadedFile("s.csv", upload)}).status_code == 403, perms
        page = client.get(reverse("admin:annotate_study_change", args=[study.pk])).content.decode()
        assert "Import scenarios" not in page  # no button to a door that is locked
    assert not Scenario.objects.filter(study=study).exists()
    client.force_login(staff_with(make_user, "annotate.change_study"))
    assert "Import scenarios" in client.get(reverse("admin:annotate_study_change", args=[study.pk])).content.decode()
    assert client.post(url, {"file": SimpleUploadedFile("s.csv", upload)}).status_code == 302
    assert Scenario.objects.filter(study=study, external_id="x").exists()


def test_taxonomy_yaml_import_needs_add_and_change_taxonomy(client, make_user):
    url = reverse("admin:labeling_taxonomy_import")
    for perms in [(), ("labeling.view_taxonomy",), ("labeling.add_taxonomy",), ("labeling.change_taxonomy",)]:
        client.force_login(staff_with(make_user, *perms))
        assert client.get(url).status_code == 403, perms
        assert client.post(url, {"file": SimpleUploadedFile("t.yaml", TAXONOMY_YAML)}).status_code == 403, perms
    assert not Taxonomy.objects.filter(slug="mine").exists()
    client.force_login(staff_with(make_user, "labeling.add_taxonomy", "labeling.change_taxonomy"))
    assert "Import YAML" in client.get(reverse("admin:labeling_taxonomy_changelist")).content.decode()
    assert client.post(url, {"file": SimpleUploadedFile("t.yaml", TAXONOMY_YAML)}).status_code == 302
    assert Taxonomy.objects.get(slug="mine").labels.get().name == "ok-label"


def test_taxonomy_yaml_export_needs_view_taxonomy(client, make_user):
    taxonomy = Taxonomy.objects.get(slug="default")
    url = reverse("admin:labeling_taxonomy_export", args=[taxonomy.pk])
    client.force_login(staff_with(make_user, "labeling.add_taxonomy"))
    assert client.get(url).status_code == 403
    client.force_login(staff_with(make_user, "labeling.view_taxonomy"))
    response = client.get(url)
    assert response.status_code == 200 and b"slug: default" in response.content
    assert response["Content-Disposition"] == 'attachment; filename="default.yaml"'


def test_taxonomy_yaml_export_of_a_slug_with_a_newline_is_not_a_500(admin_client):
    """Slugs are checked on import and in admin's form; one written another way must still export."""
    taxonomy = Taxonomy.objects.create(name="Odd", slug="odd\nslug")
    response = admin_client.get(reverse("admin:labeling_taxonomy_export", args=[taxonomy.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="odd-slug.yaml"'


@pytest.fixture
def finished_export(make_study, tmp_path) -> DatasetExport:
    """A finished export with one data file (as export_run leaves it)."""
    (tmp_path / "dpo.jsonl").write_text('{"row": 1}\n')
    (tmp_path / "README.md").write_text("card\n")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [{"path": "dpo.jsonl"}]}))
    return DatasetExport.objects.create(
        study=make_study(), format="dpo", params={}, status=DatasetExport.Status.DONE, out_dir=str(tmp_path)
    )


def test_export_progress_and_download_need_view_datasetexport(client, make_user, finished_export):
    progress = reverse("admin:exports_datasetexport_progress", args=[finished_export.pk])
    download = reverse("admin:exports_datasetexport_download", args=[finished_export.pk, "dpo.jsonl"])
    client.force_login(staff_with(make_user, "annotate.view_study", "exports.add_datasetexport"))
    assert client.get(progress).status_code == 403
    assert client.get(download).status_code == 403
    client.force_login(staff_with(make_user, "exports.view_datasetexport"))
    assert client.get(progress).status_code == 200
    response = client.get(download)
    assert response.status_code == 200 and response["Content-Length"] == "11"


def test_export_form_and_study_action_need_add_datasetexport(client, make_user, make_study):
    study = make_study()
    add = reverse("admin:exports_datasetexport_add")
    changelist = reverse("admin:annotate_study_changelist")
    action = {"action": "export_dataset", "_selected_action": [study.pk]}
    client.force_login(staff_with(make_user, "annotate.change_study", "exports.view_datasetexport"))
    assert client.get(add).status_code == 403
    assert client.post(add, {"study": study.pk, "format": "dpo", "file_format": "jsonl"}).status_code == 403
    assert "Export dataset" not in client.get(reverse("admin:annotate_study_change", args=[study.pk])).content.decode()
    assert "export_dataset" not in client.get(changelist).content.decode()  # the action is not offered ...
    response = client.post(changelist, action)
    assert not (response.status_code == 302 and response["Location"].startswith(add))  # ... nor run
    assert not DatasetExport.objects.exists()

    client.force_login(staff_with(make_user, "annotate.change_study", "exports.add_datasetexport"))
    assert client.get(add).status_code == 200
    assert "Export dataset" in client.get(reverse("admin:annotate_study_change", args=[study.pk])).content.decode()
    response = client.post(changelist, action)
    assert response.status_code == 302 and response["Location"] == f"{add}?study={study.pk}"


def test_a_403_from_admin_is_the_apps_page(client, make_user, make_study):
    client.force_login(staff_with(make_user))
    response = client.get(reverse("admin:annotate_study_import_scenarios", args=[make_study().pk]))
    assert response.status_code == 403 and "You cannot open this page" in response.content.decode()
