"""The dataset card's body: the column table generated from the format's schema, how the data was collected
(study settings, models, raters, exclusions), limitations computed from the export, and a citation."""

from __future__ import annotations

import re
from typing import Any

import pytest

from annotate.models import Study
from exports import card, formats
from exports.selection import FORMATS
from tests.exports.export_study import build_export_study, export

pytestmark = pytest.mark.django_db


@pytest.fixture
def story() -> dict[str, Any]:
    return build_export_study()


def _section(text: str, title: str) -> str:
    """The body of a `## title` section, up to the next `## ` heading."""
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_column_of_every_format_has_a_description(fmt):
    undocumented = [c.name for c in formats.SCHEMAS[fmt] if not formats.column_description(fmt, c.name)]
    assert undocumented == [], f"{fmt}: describe these columns in exports.formats.COLUMN_DESCRIPTIONS"


def test_nested_types_are_written_readably():
    assert card._type_name(formats.MESSAGES) == "list<struct<role: string, content: string>>"
    assert card._type_name(formats.SCHEMAS["dpo"].field("agreement").type) == "float64"
    assert card._type_name(formats.SCHEMAS["kto"].field("tags").type) == "list<string>"


@pytest.mark.parametrize("fmt", ["dpo", "tree", "multiturn"])
def test_columns_table_lists_the_schema_in_order(story, tmp_path, fmt):
    _, out = export(tmp_path, format=fmt)
    table = _section((out / "README.md").read_text(), "Columns").strip().splitlines()
    assert table[:2] == ["| column | type | description |", "|---|---|---|"]
    rows = [re.match(r"\| `([^`]+)` \| `([^`]+)` \| (.+) \|$", line) for line in table[2:]]
    assert all(rows), table
    schema = formats.SCHEMAS[fmt]
    assert [(m[1], m[2]) for m in rows if m] == [(c.name, card._type_name(c.type)) for c in schema]
    assert [m[3] for m in rows if m] == [formats.column_description(fmt, c.name) for c in schema]


def test_collection_section_gives_the_study_settings_models_and_raters(story, tmp_path):
    Study.objects.filter(slug="golden").update(
        candidates_per_turn=2, max_user_turns=7, tie_policy="rewrite", attention_check_rate=0.05
    )
    _, out = export(tmp_path, format="dpo")
    collected = _section((out / "README.md").read_text(), "How it was collected")
    for expected in (
        "| candidate replies per user turn (K) | 2 |",
        "| user turns per conversation, at most | 7 |",
        "| after a tie or all bad (`tie_policy`) | `rewrite`:",
        "| model names shown to raters | no (blind) |",
        "| reviewers per conversation (review overlap) | 2 |",
        "| attention-check rate | 0.05 |",
        "| tags required before a vote | ",
        # The plain config sets temperature 0.7 over the defaults; the clarify config has a system prompt.
        "| `model-plain` | transformers | `{",
        '"temperature": 0.7',
        "| `model-clarify` | transformers | `{",
        "| yes |",
        # alice held the conversation in the rows, bob reviewed it; carol's tie gives no dpo row.
        "- 2 raters in the rows: 1 holding conversations, 1 reviewing",
        "- Quality control excluded 0 raters (0 conversations)",
    ):
        assert expected in collected, expected


def test_limitations_say_what_this_export_rests_on(story, tmp_path):
    _, out = export(tmp_path, format="dpo")
    limitations = _section((out / "README.md").read_text(), "Limitations")
    assert "crowd workers" in limitations
    assert "One language" in limitations
    assert "- Only 2 raters:" in limitations
    assert "fewer than 5 conversations: `model-clarify` (1), `model-plain` (1)." in limitations


def test_citation_is_a_bibtex_entry_of_the_study(story, tmp_path):
    Study.objects.filter(slug="golden").update(name="Golden {study} \\ with braces")
    _, out = export(tmp_path, format="kto")
    text = _section((out / "README.md").read_text(), "Citation")
    entry = text.split("```bibtex\n", 1)[1].split("```", 1)[0]
    assert entry.startswith("@misc{commonground_golden_kto_2026,\n")
    depth = 0
    for char in entry:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    fields = dict(re.findall(r"^  (\w+) = \{(.*)\},?$", entry, re.M))
    assert fields["title"] == "Golden study with braces: kto export"
    assert fields["year"] == "2026"
    assert "Common Ground" in fields["howpublished"]
