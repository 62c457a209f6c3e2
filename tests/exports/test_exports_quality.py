"""Quality control in exports: planted attention checks never reach a dataset, and excluded raters' work is
left out by default (`include_excluded` keeps it); the manifest and the card say so. The golden study
(tests/exports/export_study.py) has no excluded rater: its records are checked in test_exports.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command

from annotate.models import Comparison, Participant, Turn
from labeling.models import Label, Tag
from tests.exports.export_study import build_export_study, export

pytestmark = pytest.mark.django_db


@pytest.fixture
def story() -> dict[str, Any]:
    return build_export_study()


def exclude(story: dict[str, Any], name: str) -> Participant:
    participant, _ = Participant.objects.update_or_create(
        study=story["study"], user=story["users"][name],
        defaults={"excluded": True, "exclusion_reason": "Spam", "requeued": True},
    )  # fmt: skip
    return participant


def plant(story: dict[str, Any], parent: str, key: str) -> Turn:
    """A planted attention check answering `parent` (the slot after the real candidates), tagged by alice."""
    user_turn = story[parent]
    planted = Turn.objects.create(
        conversation=user_turn.conversation, parent=user_turn, role="assistant", depth=user_turn.depth + 1,
        position=5, text="six he as is said I", status="done", is_attention_check=True,
    )  # fmt: skip
    label = Label.objects.get(taxonomy=story["study"].taxonomy, name="clarification")
    Tag.objects.create(turn=planted, label=label, rater=story["users"]["alice"])
    story[key] = planted
    return planted


def test_the_golden_manifest_records_the_new_parameter_and_what_quality_control_left_out(story, tmp_path):
    _, out = export(tmp_path, format="dpo")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["include_excluded"] is False
    assert manifest["quality_control"] == {
        "excluded_raters": 0,
        "excluded_conversations": 0,
        "excluded_work_left_out": True,
        "attention_checks_left_out": True,
    }
    card = (out / "README.md").read_text()
    assert "## Quality control" in card and "No rater of the study was excluded" in card


def test_planted_checks_and_the_votes_that_failed_them_never_reach_an_export(story, tmp_path):
    golden = {fmt: export(tmp_path, f"golden-{fmt}", format=fmt)[0] for fmt in ("dpo", "kto", "arena")}
    plant(story, "u1", "a1C")  # alice chose a real reply: her vote passed
    Comparison.objects.filter(pk=story["v1"].pk).update(attention_passed=True)
    plant(story, "w1", "b1C")  # carol's tie failed the check
    Comparison.objects.filter(pk=story["x1"].pk).update(attention_passed=False)
    for fmt, rows in golden.items():
        # The planted replies add nothing; carol's tie is gone (only arena makes rows of a tie).
        expected = [row for row in rows if row["comparison_id"] != story["x1"].pk]
        assert len(expected) == len(rows) - (fmt == "arena")
        assert export(tmp_path, f"planted-{fmt}", format=fmt)[0] == expected, fmt
    trees, _ = export(tmp_path, "tree", format="tree")
    turn_ids = {t["turn_id"] for tree in trees for t in tree["turns"]}
    assert story["a1C"].pk not in turn_ids and story["b1C"].pk not in turn_ids
    assert story["a1B"].pk in turn_ids
    votes = {v["comparison_id"] for tree in trees for v in tree["votes"]}
    assert story["x1"].pk not in votes and story["v1"].pk in votes
    texts = json.dumps(trees)
    assert "six he as is said I" not in texts
    with_ties, _ = export(tmp_path, "ties", format="dpo", include_ties=True)
    assert all(row["comparison_id"] != story["x1"].pk for row in with_ties)


def test_an_excluded_raters_conversations_are_left_out_unless_asked_for(story, tmp_path):
    exclude(story, "carol")
    trees, out = export(tmp_path, format="tree")
    assert [t["conversation_id"] for t in trees] == [story["c1"].pk]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selection"]["conversations"] == 1
    assert manifest["quality_control"]["excluded_raters"] == 1
    assert manifest["quality_control"]["excluded_conversations"] == 1
    card = (out / "README.md").read_text()
    assert "1 rater excluded by quality control: their 1 conversation" in card

    kept, out = export(tmp_path, "kept", format="tree", include_excluded=True)
    assert [t["conversation_id"] for t in kept] == [story["c1"].pk, story["c2"].pk]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["include_excluded"] is True
    assert manifest["quality_control"]["excluded_work_left_out"] is False
    assert "this export keeps their work, as asked" in (out / "README.md").read_text()


def test_an_excluded_reviewers_votes_and_tags_are_left_out(story, tmp_path):
    rows, _ = export(tmp_path, "before", format="dpo")
    assert {row["rater"] for row in rows} == {f"rater-{story['users'][n].pk}" for n in ("alice", "bob")}
    exclude(story, "bob")
    rows, _ = export(tmp_path, "after", format="dpo")
    assert {row["rater"] for row in rows} == {f"rater-{story['users']['alice'].pk}"}
    assert len(rows) == 4  # bob's two review pairs are gone
    trees, _ = export(tmp_path, "tree", format="tree")
    tags = [tag for tree in trees for turn in tree["turns"] for tag in turn["tags"]]
    assert tags and all(tag["rater"] != f"rater-{story['users']['bob'].pk}" for tag in tags)
    rows, _ = export(tmp_path, "kept", format="dpo", include_excluded=True)
    assert len(rows) == 6


def test_the_command_takes_include_excluded(story, tmp_path):
    exclude(story, "carol")
    out = tmp_path / "cli"
    call_command("export_dataset", "--study", "golden", "--format", "tree", "--out", str(out), "--include-excluded",
                 "--quiet")  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["include_excluded"] is True and manifest["selection"]["conversations"] == 2
