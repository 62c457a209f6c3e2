"""Scenario imports check every field (type, length, storable text, shallow metadata) before writing:
a bad file is refused with the row and field named, a 400 in admin (413 when too large), and nothing
is written."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotate import services
from annotate.models import Scenario
from core.errors import ActionRefused

pytestmark = pytest.mark.django_db


def _jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _import(study, name: str, data: bytes) -> tuple[int, int]:
    return services.scenarios_import(study=study, rows=services.scenario_rows_read(name=name, data=data))


GOOD = {"id": "ok", "brief": "A fine brief"}


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        # lengths: external_id and title were silently cut to 100 and 200 characters
        ("s.jsonl", _jsonl(GOOD, {"id": "x" * 101, "brief": "b"}), "Row 2: 'external_id' is 101 characters long"),
        ("s.jsonl", _jsonl({"id": "x", "title": "t" * 201, "brief": "b"}), "Row 1: 'title' is 201 characters long"),
        ("s.csv", f"id,title,brief\nx,{'t' * 201},b\n".encode(), "'title' is 201 characters long; the limit is 200"),
        ("s.jsonl", _jsonl({"id": "x", "title": "two\nlines", "brief": "b"}), "'title' must be one line"),
        ("s.jsonl", _jsonl({"id": "x\ny", "brief": "b"}), "'external_id' must be one line"),
        # types: text or numbers only
        ("s.jsonl", _jsonl({"id": "x", "brief": ["a", "list"]}), "Row 1: 'brief' must be text or a number, not a list"),
        ("s.jsonl", _jsonl({"id": {"a": 1}, "brief": "b"}), "'external_id' must be text or a number, not an object"),
        ("s.jsonl", _jsonl({"id": True, "brief": "b"}), "'external_id' must be text or a number, not true/false"),
        ("s.jsonl", _jsonl({"id": "x", "brief": "b", "hidden_intent": {}}), "'hidden_intent' must be text"),
        # storable text: NUL and lone surrogates (JSON escapes), raw NUL bytes
        ("s.jsonl", b'{"id": "x", "brief": "nul \\u0000 here"}\n', "Line 1: 'brief' contains a NUL character"),
        ("s.jsonl", b'{"id": "x", "brief": "half \\ud800 pair"}\n', "Line 1: 'brief' contains a lone surrogate"),
        ("s.jsonl", b'{"id": "x", "brief": "b", "note": "\\u0000"}\n', "Line 1: 'note' contains a NUL"),
        ("s.jsonl", b'{"id": "x", "brief": "b", "k\\u0000": 1}\n', "Line 1: the field name 'k"),
        ("s.csv", b"id,brief\nx,nul\x00byte\n", "NUL character"),
        # metadata: shallow, and JSON PostgreSQL can hold
        (
            "s.jsonl",
            _jsonl({"id": "x", "brief": "b", "tags": [["deep"]]}),
            "Row 1: 'tags[0]' is nested more than 2 levels",
        ),
        ("s.jsonl", b'{"id": "x", "brief": "b", "score": NaN}\n', "'score' is a number JSON cannot hold"),
        ("s.jsonl", b'{"id": "x", "brief": "b", "k' + b"y" * 101 + b'": 1}\n', "over 100 characters"),
        # JSON the parser chokes on: deep nesting, integers past Python's digit limit
        ("s.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "Line 1 is nested too deep"),
        ("s.jsonl", b'{"id": "x", "brief": "b", "n": [[[[[[1]]]]]]}\n', "Row 1: 'n[0]' is nested more than 2 levels"),
        ("s.jsonl", b'{"id": ' + b"9" * 5000 + b', "brief": "b"}\n', "Line 1 is not valid JSON"),
    ],
)
def test_bad_fields_are_refused_by_row_and_field_and_nothing_written(make_study, name, data, fragment):
    study = make_study(scenarios=0)
    with pytest.raises(ActionRefused, match=fragment.replace("(", r"\(").replace("[", r"\[")) as refused:
        _import(study, name, data)
    assert refused.value.status == 400
    assert not Scenario.objects.filter(study=study).exists()


def test_numbers_are_read_as_text_and_metadata_kept(make_study):
    study = make_study(scenarios=0)
    data = _jsonl({"id": 7, "brief": "Brief", "title": 3.5, "tags": ["a", "b"], "level": {"x": 1}, "note": None})
    assert _import(study, "s.jsonl", data) == (1, 0)
    scenario = Scenario.objects.get(study=study)
    assert (scenario.external_id, scenario.title) == ("7", "3.5")
    assert scenario.metadata == {"tags": ["a", "b"], "level": {"x": 1}, "note": None}


def test_title_from_a_long_brief_is_one_line_of_80(make_study):
    study = make_study(scenarios=0)
    _import(study, "s.jsonl", _jsonl({"id": "x", "brief": "word\n" * 50}))
    title = Scenario.objects.get(study=study).title
    assert len(title) == 80 and "\n" not in title


@pytest.fixture
def admin_import(admin_client, make_study):
    study = make_study(scenarios=0)
    url = reverse("admin:annotate_study_import_scenarios", args=[study.pk])

    def post(name: str, data: bytes):
        return admin_client.post(url, {"file": SimpleUploadedFile(name, data)})

    post.study = study
    return post


def test_admin_refusal_is_a_400_with_the_message(admin_import):
    response = admin_import("s.jsonl", _jsonl(GOOD, {"id": "x" * 101, "brief": "b"}))
    assert response.status_code == 400
    assert "Row 2: &#x27;external_id&#x27; is 101 characters long" in response.content.decode()
    assert not Scenario.objects.filter(study=admin_import.study).exists()


def test_admin_refuses_a_file_over_the_size_limit_before_reading_it(admin_import, settings):
    settings.IMPORT_MAX_BYTES = 1000
    response = admin_import("s.jsonl", _jsonl(*[{"id": f"x{i}", "brief": "b" * 20} for i in range(40)]))
    assert response.status_code == 413 and "larger than the limit of 1,000 bytes" in response.content.decode()
    assert not Scenario.objects.filter(study=admin_import.study).exists()
    assert admin_import("s.jsonl", _jsonl(GOOD)).status_code == 302  # under the limit: imported


def test_admin_post_without_a_file_is_a_400(admin_client, make_study):
    url = reverse("admin:annotate_study_import_scenarios", args=[make_study().pk])
    assert admin_client.post(url, {}).status_code == 400
