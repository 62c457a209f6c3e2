"""Taxonomy YAML imports check every field's type, choices and length before writing: a bad file is
refused naming the label and field, a 400 in admin (413 when too large), and nothing is written."""

from __future__ import annotations

import re

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from core.errors import ActionRefused
from labeling import services as labeling
from labeling.models import Label, Taxonomy

pytestmark = pytest.mark.django_db


def _doc(label: str = "", **top: str) -> str:
    """A taxonomy document with one label `{name: ok, definition: d, <label>}` (YAML flow mapping)."""
    head = {"name": "X", "slug": "x"} | top
    lines = [f"{k}: {v}" for k, v in head.items()]
    return "\n".join([*lines, "labels:", f"  - {{name: ok, definition: d{', ' + label if label else ''}}}", ""])


# ~3 kB of YAML, a million values once the aliases are followed
ALIAS_BOMB = "\n".join(
    ["slug: x", "labels: []", f"a: &a [{', '.join(['x'] * 100)}]", f"b: &b [{', '.join(['*a'] * 100)}]",
     f"c: [{', '.join(['*b'] * 100)}]", ""]
)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (_doc("examples: just text"), "Label 1 (ok): 'examples' must be a list of texts, not text"),
        (_doc("examples: [fine, 2]"), "Label 1 (ok), example 2: 'examples' must be text, not int"),
        (_doc("examples: [[a]]"), "must be text, not a list"),
        ("slug: x\nlabels:\n  - {name: Not A Slug!, definition: d}\n", "Label 1: 'name' must be a slug"),
        ("slug: x\nlabels:\n  - {name: '12', definition: d}\n", "'name' cannot be only digits"),
        ('slug: x\nlabels:\n  - {name: "a\\nb", definition: d}\n', "Label 1: 'name' must be a slug"),
        ("slug: x\nlabels:\n  - {name: [a], definition: d}\n", "Label 1: 'name' must be text, not a list"),
        ("slug: x\nlabels:\n  - {name: " + "n" * 61 + ", definition: d}\n", "'name' is 61 characters long"),
        (_doc("key: t"), "the key 't' is taken by the rating page"),
        (_doc("key: '1'"), "the key '1' is taken"),
        (_doc("key: 5"), "the key '5' is taken"),
        (_doc("key: ']'"), "the key ']' is taken"),
        (_doc("key: ab"), "'key' must be one printable character"),
        (_doc("key: C"), "'key' must be lower case"),
        (_doc("key: [c]"), "'key' must be text, not a list"),
        (_doc("takes_span: maybe"), "'takes_span' must be true or false, not text"),
        (_doc("links_turn: 1"), "'links_turn' must be true or false, not int"),
        (_doc("polarity: 2"), "'polarity' must be -1, 0 or 1"),
        (_doc("polarity: 0.5"), "'polarity' must be -1, 0 or 1"),
        (_doc("polarity: true"), "'polarity' must be -1, 0 or 1"),
        (_doc("polarity: '1'"), "'polarity' must be -1, 0 or 1"),
        (_doc("kind: robots"), "kind must be one of"),
        (_doc("kind: [grounding]"), "kind must be one of"),
        (_doc("colour: red"), "'colour' must be #rrggbb"),
        (_doc("colour: '#12345g'"), "'colour' must be #rrggbb"),
        (_doc("title: " + "t" * 101), "'title' is 101 characters long; the limit is 100"),
        (_doc('title: "two\\nlines"'), "'title' must be one line"),
        (_doc("definition2: x"), "unknown fields definition2"),
        (
            "slug: x\nlabels:\n  - {1: one, wat: 2, name: a, definition: d}\n",
            "'labels[0]' has a key that is not text: '1'",
        ),
        ("slug: x\nlabels:\n  - just text\n", "Label 1: a label is a mapping of fields, not text"),
        (_doc(name='"two\\nlines"'), "The taxonomy: 'name' must be one line"),
        (_doc(name="n" * 201), "The taxonomy: 'name' is 201 characters long"),
        (_doc(name="[a, list]"), "The taxonomy: 'name' must be text, not a list"),
        (_doc(description="[a, list]"), "The taxonomy: 'description' must be text"),
        ("slug: x y\nlabels: []\n", "The taxonomy: 'slug' must be a slug"),
        ('slug: "x\\n"\nlabels: []\n', "The taxonomy: 'slug' must be a slug"),
        ("slug: [x]\nlabels: []\n", "The taxonomy: 'slug' must be text"),
        ("slug: " + "s" * 81 + "\nlabels: []\n", "'slug' is 81 characters long; the limit is 80"),
        # text PostgreSQL cannot store, by YAML escapes (the file itself is valid UTF-8)
        (_doc('title: "nul \\0 here"'), "contains a NUL character"),
        (_doc('examples: ["half \\ud800 pair"]'), "contains a lone surrogate"),
        (_doc(description='"\\0"'), "contains a NUL character"),
        # deep nesting and alias bombs (a small file, a huge tree)
        (_doc("examples: " + "[" * 5000 + "]" * 5000), "nested"),
        (_doc("examples: [[[[[[x]]]]]]"), "'labels[0].examples[0][0]' is nested more than 5 levels deep"),
        (ALIAS_BOMB, "more than 200,000 values"),
        ("slug: x\nlabels:\n" + "".join(f"  - {{name: l{i}, definition: d}}\n" for i in range(501)), "at most 500"),
    ],
)
def test_bad_taxonomy_fields_are_refused_and_nothing_written(text, fragment):
    with pytest.raises(ActionRefused, match=re.escape(fragment)) as refused:
        labeling.taxonomy_from_yaml(text)
    assert refused.value.status == 400
    assert not Taxonomy.objects.filter(slug="x").exists()


def test_a_refused_reimport_leaves_the_taxonomy_as_it_was():
    labeling.taxonomy_from_yaml(_doc("key: c, polarity: -1"))
    with pytest.raises(ActionRefused, match="the key 'b' is taken"):
        labeling.taxonomy_from_yaml(_doc("key: b", name="Renamed"))
    taxonomy = Taxonomy.objects.get(slug="x")
    assert taxonomy.name == "X"
    assert list(taxonomy.labels.values_list("name", "key", "polarity")) == [("ok", "c", -1)]


def test_good_values_are_stored_as_given():
    text = _doc("key: 0, polarity: 1, takes_span: true, links_turn: false, colour: '#A0b1C2', examples: [Hi, There]")
    label = labeling.taxonomy_from_yaml(text).labels.get()
    assert (label.key, label.polarity, label.takes_span, label.links_turn) == ("0", 1, True, False)
    assert (label.colour, label.examples, label.title) == ("#A0b1C2", ["Hi", "There"], "Ok")


def test_the_shipped_taxonomy_passes_its_own_checks():
    document = yaml.safe_load(labeling.taxonomy_to_yaml(labeling.default_taxonomy()))
    copy = labeling.taxonomy_from_yaml(yaml.safe_dump(document), slug="copy")
    assert copy.labels.count() == Label.objects.filter(taxonomy__slug="default").count()


def test_admin_refusal_is_a_400_with_the_message(admin_client):
    url = reverse("admin:labeling_taxonomy_import")
    response = admin_client.post(url, {"file": SimpleUploadedFile("t.yaml", _doc("polarity: 7").encode())})
    assert response.status_code == 400 and "must be -1, 0 or 1" in response.content.decode()
    response = admin_client.post(url, {"file": SimpleUploadedFile("t.yaml", b"\xff\xfe not utf-8")})
    assert response.status_code == 400 and "not UTF-8" in response.content.decode()
    assert not Taxonomy.objects.filter(slug="x").exists()


def test_admin_refuses_a_file_over_the_size_limit(admin_client, settings):
    settings.IMPORT_MAX_BYTES = 100
    url = reverse("admin:labeling_taxonomy_import")
    big = _doc("examples: [" + ", ".join(["padding"] * 20) + "]").encode()
    response = admin_client.post(url, {"file": SimpleUploadedFile("t.yaml", big)})
    assert response.status_code == 413 and "larger than the limit of 100 bytes" in response.content.decode()
    assert not Taxonomy.objects.filter(slug="x").exists()
