"""A researcher exports a dataset from admin, in headless Chromium against the real server and worker.

From the Studies change list they pick the golden study, run the "Export dataset…" action, choose
dpo / jsonl in the export form and start it; the export's page shows a progress bar, then the
download links once the worker is done. The downloaded data file is the one the manifest describes.
Filters that select nothing are refused on the form itself, and no export is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from exports.models import DatasetExport
from tests.exports.export_study import build_export_study
from tests.helpers import PASSWORD, log_in

pytestmark = [pytest.mark.browser]

FILES = ["dpo.jsonl", "README.md", "manifest.json"]


def admin_log_in(page: Any, base_url: str, username: str) -> None:
    log_in(page, base_url, username, home="/admin/", login="/admin/login/")


def download(page: Any, name: str, directory: Path) -> Path:
    """Click the export's download link `name` and save what the browser received."""
    with page.expect_download() as info:
        page.locator("ul.export-files a", has_text=name).click()
    received = info.value
    assert received.suggested_filename == name
    target = directory / name
    received.save_as(target)
    return target


@pytest.mark.django_db(transaction=True)
def test_researcher_exports_dpo_from_the_study_list_and_downloads_it(
    start_worker, start_server, make_user, browser_page, tmp_path
):
    # Given the golden study, a superuser, and a worker and server writing exports to the same place
    golden = build_export_study()
    researcher = make_user(password=PASSWORD, is_staff=True, is_superuser=True)
    exports = tmp_path / "exports"
    exports.mkdir()
    start_worker(EXPORT_DIR=str(exports))
    base_url = start_server(EXPORT_DIR=str(exports))
    page = browser_page.page
    admin_log_in(page, base_url, researcher.username)

    # When they tick the golden study in the Studies list and run "Export dataset…"
    page.goto(f"{base_url}/admin/annotate/study/")
    page.locator("#result_list tr", has_text="Golden study").locator("input.action-select").check()
    page.locator("select[name=action]").select_option(label="Export dataset…")
    page.get_by_role("button", name="Go").click()

    # Then the export form opens with the study preselected
    page.wait_for_url(re.compile(rf"/admin/exports/datasetexport/add/\?study={golden['study'].pk}$"))
    form = page.locator("#export-form")
    assert form.locator("#id_study option:checked").inner_text() == "Golden study"
    assert form.locator("#id_file_format").input_value() == "jsonl"

    # When they choose dpo and start the export
    form.locator("#id_format").select_option("dpo")
    form.get_by_role("button", name="Start export").click()

    # Then the export's page shows a progress bar, and the status turns to Done with the download links
    page.wait_for_url(re.compile(r"/admin/exports/datasetexport/\d+/change/$"))
    export = DatasetExport.objects.get()
    assert page.locator("#export-progress progress").count() == 1
    assert page.locator("#content h1").all_inner_texts() == [f"Export {export.pk}: dpo of Golden study"]
    assert page.locator("#export-progress").get_attribute("data-status") in {"queued", "running", "done"}
    page.wait_for_selector("#export-progress[data-status=done] ul.export-files a", timeout=60_000)
    assert page.locator(".export-status").inner_text() == "Done"
    assert page.locator("#export-progress progress").get_attribute("value") == "100"
    assert page.locator("ul.export-files a").all_inner_texts() == FILES

    # When they download the data file and the manifest
    saved = tmp_path / "downloads"
    saved.mkdir()
    data = download(page, "dpo.jsonl", saved)
    manifest = json.loads(download(page, "manifest.json", saved).read_text())

    # Then the data file has the 6 dpo rows, and the sha256 the manifest and the page give for it
    lines = data.read_text().splitlines()
    assert len(lines) == 6 and all(isinstance(json.loads(line), dict) for line in lines)
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    (entry,) = manifest["files"]
    assert (entry["path"], entry["rows"], entry["sha256"]) == ("dpo.jsonl", 6, digest)
    assert page.locator("#export-progress code").inner_text() == digest

    # ... the database row says the same, after one attempt, with files under EXPORT_DIR
    export.refresh_from_db()
    assert (export.status, export.rows, export.attempt, export.sha256) == ("done", 6, 1, digest)
    assert (export.format, export.study_id, export.requested_by_id) == ("dpo", golden["study"].pk, researcher.pk)
    assert Path(export.out_dir).parent == exports
    assert (Path(export.out_dir) / "dpo.jsonl").read_bytes() == data.read_bytes()

    # ... and nothing went wrong in the browser
    assert browser_page.page_errors == [] and browser_page.bad_responses == [] and browser_page.dialogs == []


@pytest.mark.django_db(transaction=True)
def test_filters_that_select_nothing_are_refused_on_the_form(start_server, make_user, browser_page):
    # Given the golden study and a superuser (no worker: nothing may be queued)
    golden = build_export_study()
    researcher = make_user(password=PASSWORD, is_staff=True, is_superuser=True)
    base_url = start_server()
    page = browser_page.page
    admin_log_in(page, base_url, researcher.username)

    # When they open the export form from the study's page and ask only for conversations until 2000
    page.goto(f"{base_url}/admin/annotate/study/{golden['study'].pk}/change/")
    page.locator(".object-tools").get_by_role("link", name="Export dataset").click()
    page.wait_for_url(re.compile(r"/admin/exports/datasetexport/add/\?study=\d+$"))
    form = page.locator("#export-form")
    assert page.locator("#content h1").all_inner_texts() == ["Export a dataset"]
    assert form.locator("#id_study option:checked").inner_text() == "Golden study"
    form.locator("#id_format").select_option("dpo")
    form.locator("#id_until").fill("2000-01-01")
    form.get_by_role("button", name="Start export").click()
    page.wait_for_load_state()

    # Then the form is shown again with the reason, keeping what they chose, and no export exists
    error = page.locator("#export-form ul.errorlist.nonfield")
    error.wait_for()
    assert "match the filters: nothing to export" in error.inner_text()
    assert re.search(r"/admin/exports/datasetexport/add/", page.url)
    assert form.locator("#id_until").input_value() == "2000-01-01"
    assert form.locator("#id_format").input_value() == "dpo"
    assert not DatasetExport.objects.exists()

    # ... and an export page for an id that is not a number is "not found", not a server error
    assert page.request.get(f"{base_url}/admin/exports/datasetexport/1/manifest.json/change/").status == 404
    assert browser_page.page_errors == [] and browser_page.bad_responses == [] and browser_page.dialogs == []
