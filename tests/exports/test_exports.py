"""Exports: golden records for every format on the fixed study (tests/exports/export_study.py),
filters, reproducibility, the command line, the admin request path and failure cleanup."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from core.errors import ActionRefused
from exports import formats
from exports.build import export_build
from exports.selection import FORMATS, ExportParams
from tests.exports.export_study import T0, build_export_study, export

pytestmark = pytest.mark.django_db


@pytest.fixture
def story() -> dict[str, Any]:
    return build_export_study()


def U(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def A(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Ask if unsure."}
U1, A1A, A1B = U("Plan a party."), A("Sure! Cake, balloons, games."), A("What kind of party?")
U2, A2A, A2B = U("A birthday party for my son."), A("How old is he?"), A("Balloons and cake.")
U3, A3A, A3B = U("He is six, as I said."), A("A dinosaur theme!"), A("Six? Dinosaurs then?")
R3 = A("A dinosaur party for a six-year-old: cake, fossils, games.")


def rater(story: dict[str, Any], name: str) -> str:
    return f"rater-{story['users'][name].pk}"


def test_dpo_golden_records(story, tmp_path):
    rows, _ = export(tmp_path, format="dpo")
    pk = {key: obj.pk for key, obj in story.items() if hasattr(obj, "pk")}
    c1 = story["c1"]
    uuid = {key: str(obj.uuid) for key, obj in story.items() if hasattr(obj, "uuid")}
    common = {
        "study": "golden",
        "conversation_id": pk["c1"],
        "conversation_uuid": str(c1.uuid),
        "scenario": "party",
        "language": "en",
    }
    first = {
        "prompt": [U1],
        "chosen": [A1B],
        "rejected": [A1A],
        **common,
        "turn_index": 1,
        "comparison_id": pk["v1"],
        "task": "live",
        "rater": rater(story, "alice"),
        "choice": "candidate",
        "strength": "clear",
        "strength_score": 1.0,
        "chosen_is_rewrite": False,
        "chosen_turn_id": pk["a1B"],
        "rejected_turn_id": pk["a1A"],
        "chosen_turn_uuid": uuid["a1B"],
        "rejected_turn_uuid": uuid["a1A"],
        "chosen_model": "model-clarify",
        "rejected_model": "model-plain",
        "chosen_source": "model",
        "rejected_source": "model",
        "chosen_tags": ["clarification"],
        "rejected_tags": [],  # alice rejected the over-response suggestion: not a tag
        "votes": 2,
        "agreement": 1.0,
        # Both votes at turn 1 chose a1B over a1A: alice's clear one and bob's (no strength asked: weight 1).
        "votes_for": 2,
        "votes_against": 0,
        "votes_tied": 0,
        "margin": 1.0,
        "comparison_ids": [pk["v1"], pk["v1r"]],
    }
    assert rows[0] == first
    # bob's review vote agrees: the same pair under his pseudonym.
    assert rows[1] == {
        **first,
        "comparison_id": pk["v1r"],
        "task": "review",
        "rater": rater(story, "bob"),
        "strength": "",
        "strength_score": None,
    }
    # Turn 2: alice and bob disagree, so each vote has agreement 0 and the pairs are mirrored.
    history2 = [U1, A1B, U2]
    assert rows[2] | {} == {
        **first,
        "prompt": history2,
        "chosen": [A2A],
        "rejected": [A2B],
        "turn_index": 2,
        "comparison_id": pk["v2"],
        "strength": "slight",
        "strength_score": 0.5,
        "chosen_turn_id": pk["a2A"],
        "rejected_turn_id": pk["a2B"],
        "chosen_turn_uuid": uuid["a2A"],
        "rejected_turn_uuid": uuid["a2B"],
        "agreement": 0.0,
        # alice slightly preferred a2A, bob preferred a2B (weight 1): (0.5 − 1) / 2.
        "votes_for": 1,
        "votes_against": 1,
        "margin": -0.25,
        "comparison_ids": [pk["v2"], pk["v2r"]],
    }
    assert (rows[3]["prompt"], rows[3]["chosen"], rows[3]["rejected"]) == (history2, [A2B], [A2A])
    assert (rows[3]["chosen_model"], rows[3]["chosen_tags"], rows[3]["rejected_tags"]) == (
        "model-plain",
        [],
        ["clarification"],
    )
    # Turn 3: all bad, with a rewrite: the rewrite beats both candidates; one vote, no agreement.
    history3 = [U1, A1B, U2, A2A, U3]
    for row, rejected, model in ((rows[4], A3A, "model-plain"), (rows[5], A3B, "model-clarify")):
        assert (row["prompt"], row["chosen"], row["rejected"]) == (history3, [R3], [rejected])
        assert (row["choice"], row["chosen_is_rewrite"], row["chosen_turn_id"]) == ("all_bad", True, pk["r3"])
        assert (row["rejected_model"], row["votes"], row["agreement"]) == (model, 1, None)
    assert len(rows) == 6  # carol's tie gives no pair by default


def test_dpo_include_ties_adds_tie_and_all_bad_pairs_marked_by_choice(story, tmp_path):
    rows, _ = export(tmp_path, format="dpo", include_ties=True)
    extra = [(r["choice"], r["prompt"], r["chosen"], r["rejected"]) for r in rows if not r["chosen_is_rewrite"]][4:]
    assert extra == [
        ("all_bad", [U1, A1B, U2, A2A, U3], [A3A], [A3B]),
        ("tie", [U("Hello?")], [A("Hi.")], [A("Hello! What do you need?")]),
    ]
    assert len(rows) == 8


def test_kto_golden_labels(story, tmp_path):
    rows, _ = export(tmp_path, format="kto")
    got = [(r["completion"][0]["content"], r["label"], r["rater"], r["choice"]) for r in rows]
    alice, bob = rater(story, "alice"), rater(story, "bob")
    assert got == [
        (A1A["content"], False, alice, "candidate"),
        (A1B["content"], True, alice, "candidate"),
        (A1A["content"], False, bob, "candidate"),
        (A1B["content"], True, bob, "candidate"),
        (A2A["content"], True, alice, "candidate"),
        (A2B["content"], False, alice, "candidate"),
        (A2A["content"], False, bob, "candidate"),
        (A2B["content"], True, bob, "candidate"),
        (A3A["content"], False, alice, "all_bad"),  # all bad: every candidate undesirable
        (A3B["content"], False, alice, "all_bad"),
        (R3["content"], True, alice, "all_bad"),  # the rewrite is what the rater wanted
    ]  # carol's tie says nothing absolute: no rows
    # The system prompt a reply was sampled with is part of its prompt.
    assert rows[1]["prompt"] == [SYSTEM, U1] and rows[0]["prompt"] == [U1]
    assert rows[10]["is_rewrite"] is True and rows[10]["prompt"] == [U1, A1B, U2, A2A, U3]


def test_reward_golden_pairs_are_full_transcripts(story, tmp_path):
    rows, _ = export(tmp_path, format="reward")
    assert "prompt" not in rows[0]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ([U1, A1B], [U1, A1A])
    assert (rows[4]["chosen"], rows[4]["rejected"]) == ([U1, A1B, U2, A2A, U3, R3], [U1, A1B, U2, A2A, U3, A3A])
    assert [r["comparison_id"] for r in rows] == [r["comparison_id"] for r in export(tmp_path, "dpo", format="dpo")[0]]


def test_tree_golden_record(story, tmp_path):
    rows, _ = export(tmp_path, format="tree")
    pk = {key: obj.pk for key, obj in story.items() if hasattr(obj, "pk")}
    first, second = rows
    assert {k: first[k] for k in ("conversation_id", "rater", "status", "started_at", "ended_at", "outcome")} == {
        "conversation_id": pk["c1"],
        "rater": rater(story, "alice"),
        "status": "completed",
        "started_at": "2026-05-04T09:00:00.000Z",
        "ended_at": "2026-05-04T09:01:00.000Z",
        "outcome": {"goal": "yes", "understanding": 4, "comment": "Nice."},
    }
    assert first["scenario"] == {
        "external_id": "party",
        "title": "Party",
        "brief": "Plan a party.",
        "hidden_intent": "Son's 6th birthday.",
    }
    assert first["lived_path"] == [pk[k] for k in ("u1", "a1B", "u2", "a2A", "u3", "r3")]
    turns = {t["turn_id"]: t for t in first["turns"]}
    assert len(turns) == 10  # every branch is there
    ranks = {key: turns[pk[key]]["rank"] for key in ("u1", "a1A", "a1B", "a2A", "a2B", "a3A", "a3B", "r3")}
    # All bad with a rewrite: the rewrite first, both candidates one below where a chosen one would be.
    assert ranks == {"u1": None, "a1A": 1, "a1B": 0, "a2A": 0, "a2B": 1, "a3A": 2, "a3B": 2, "r3": 0}
    a1b = turns[pk["a1B"]]
    assert {k: a1b[k] for k in ("parent_id", "role", "depth", "position", "model", "seed", "on_lived_path")} == {
        "parent_id": pk["u1"],
        "role": "assistant",
        "depth": 1,
        "position": 1,
        "model": "model-clarify",
        "seed": 12,
        "on_lived_path": True,
    }
    assert (a1b["first_token_ms"], a1b["generation_ms"], a1b["created_at"]) == (250, 2000, "2026-05-04T09:00:01.000Z")
    assert [(t["label"], t["task"]) for t in a1b["tags"]] == [("clarification", "live"), ("clarification", "review")]
    assert turns[pk["a1A"]]["params"]["temperature"] == 0.7
    assert turns[pk["a1A"]]["tags"] == []  # the rejected suggestion is left out
    assert turns[pk["a2A"]]["tags"][0] | {} == {
        "label": "clarification",
        "kind": "grounding",
        "rater": rater(story, "alice"),
        "task": "live",
        "source": "rater",
        "span_start": 0,
        "span_end": 14,
        "linked_turn_id": None,
    }
    correction = turns[pk["u3"]]["tags"][0]
    assert (correction["label"], correction["linked_turn_id"]) == ("correction", pk["a2A"])
    r3 = turns[pk["r3"]]
    assert (r3["is_rewrite"], r3["rewrite_of"], r3["generation_ms"]) == (True, pk["a3A"], None)
    votes = [
        (v["comparison_id"], v["task"], v["choice"], v["chosen_id"], v["continued_from_id"]) for v in first["votes"]
    ]
    assert votes == [
        (pk["v1"], "live", "candidate", pk["a1B"], pk["a1B"]),
        (pk["v1r"], "review", "candidate", pk["a1B"], None),
        (pk["v2"], "live", "candidate", pk["a2A"], pk["a2A"]),
        (pk["v2r"], "review", "candidate", pk["a2B"], None),
        (pk["v3"], "live", "all_bad", None, pk["r3"]),
    ]
    assert first["votes"][0]["decision_ms"] == 7000 and first["votes"][4]["reason"] == "Both ignore what I said."
    # Carol's conversation is still active, with a tie: both replies rank equal.
    assert (second["status"], second["ended_at"], second["outcome"]["goal"]) == ("active", None, None)
    assert [t["rank"] for t in second["turns"]] == [None, 0, 0]


def test_arena_golden_battles(story, tmp_path):
    rows, _ = export(tmp_path, format="arena")
    alice, bob, carol = (rater(story, n) for n in ("alice", "bob", "carol"))
    got = [(r["model_a"], r["model_b"], r["winner"], r["judge"], r["turn"]) for r in rows]
    assert got == [
        ("model-plain", "model-clarify", "model_b", alice, 1),
        ("model-plain", "model-clarify", "model_b", bob, 1),
        ("model-clarify", "model-plain", "model_a", alice, 2),  # slot A held the clarify model at turn 2
        ("model-clarify", "model-plain", "model_b", bob, 2),
        ("model-plain", "model-clarify", "tie (bothbad)", alice, 3),
        ("model-plain", "model-clarify", "tie", carol, 1),
    ]
    assert rows[0]["conversation_a"] == [U1, A1A] and rows[0]["conversation_b"] == [SYSTEM, U1, A1B]
    assert rows[0]["anony"] is True
    assert rows[0]["tstamp"] == (T0 + dt.timedelta(seconds=10)).timestamp()
    assert rows[0]["question_id"] == story["u1"].uuid.hex  # as Chatbot Arena's: 32 hex digits
    assert rows[0]["language"] == "en" and rows[0]["own_history"] is True
    # Turn 2: each side holds its own model's earlier reply (Chatbot Arena), not the lived one. Slot A
    # (clarify) wrote a1B at turn 1, slot B (plain) a1A.
    assert rows[2]["conversation_a"] == [SYSTEM, U1, A1B, U2, A2A]
    assert rows[2]["conversation_b"] == [U1, A1A, U2, A2B]
    assert rows[4]["conversation_b"] == [SYSTEM, U1, A1B, U2, A2A, U3, A3B]  # the lived turn-2 reply was clarify's


def test_arena_lived_history_is_a_named_option_that_says_whose_history_it_is(story, tmp_path):
    rows, out = export(tmp_path, format="arena", arena_history="lived")
    assert json.loads((out / "manifest.json").read_text())["parameters"]["arena_history"] == "lived"
    assert rows[2]["conversation_a"] == [SYSTEM, U1, A1B, U2, A2A]
    assert rows[2]["conversation_b"] == [U1, A1B, U2, A2B]  # plain's side holds clarify's turn-1 reply
    assert [r["own_history"] for r in rows] == [True, True, False, False, False, True]


def test_multiturn_golden_rewards(story, tmp_path):
    rows, _ = export(tmp_path, format="multiturn")
    # Conversation 1: T = 3 replies on the lived path (a1B, a2A, rewrite r3); outcome = mean(yes → 1,
    # understanding 4 → 0.5) = 0.75; the only feedback is on u3 (correction + rephrase → −1), the
    # reaction to reply 2.
    got = [(r["turn_index"], r["preference"], [f["value"] for f in r["feedback"]], r["feedback_return"]) for r in rows]
    assert got[:3] == [(1, 1.0, [0.0, -1.0, 0.0], -0.9), (2, 0.5, [-1.0, 0.0], -1.0), (3, 1.0, [0.0], 0.0)]
    assert [(r["outcome"], r["outcome_term"], r["reward"]) for r in rows[:3]] == [
        (0.75, 0.6075, 0.7075),  # 1 − 0.9 + 0.9² · 0.75
        (0.75, 0.675, 0.175),  # 0.5 − 1 + 0.9 · 0.75
        (0.75, 0.75, 1.75),  # the rewrite: 1 + 0 + 0.75
    ]
    assert rows[0]["feedback"][1] == {"k": 1, "turn_index": 2, "value": -1.0, "labels": ["correction", "rephrase"]}
    assert [r["grounding_acts"] for r in rows[:3]] == [["clarification"], ["clarification"], []]
    assert rows[0]["prompt"] == [SYSTEM, U1] and rows[0]["completion"] == [A1B]
    assert rows[2]["is_rewrite"] is True and rows[2]["prompt"] == [U1, A1B, U2, A2A, U3]
    # Conversation 2: a tie (preference 0), no survey (outcome null, no term).
    assert (rows[3]["preference"], rows[3]["outcome"], rows[3]["reward"], rows[3]["num_turns"]) == (0.0, None, 0.0, 1)


def test_multiturn_gamma_and_grounding_weight_are_parameters(story, tmp_path):
    rows, _ = export(tmp_path, format="multiturn", gamma=0.5, grounding_weight=1.0)
    # 1 + (0 − 0.5 + 0) + 0.25 · 0.75 + 1 · 1 grounding act
    assert (rows[0]["feedback_return"], rows[0]["outcome_term"], rows[0]["reward"]) == (-0.5, 0.1875, 1.6875)
    assert rows[0]["gamma"] == 0.5


def test_segments_are_sdpo_segments_starting_at_the_erroneous_reply(story, tmp_path):
    """u3 ("He is six, as I said.") reacts to a2A as an error (correction, rephrase). a2A was the rater's
    choice in its turn; the segment starts there: rejected = a2A and what followed it, chosen = a better
    reply from the same point, its sibling a2B and the reply that repaired the error (the rewrite r3)."""
    rows, _ = export(tmp_path, format="segments")
    pk = {key: obj.pk for key, obj in story.items() if hasattr(obj, "pk")}
    got = [(r["chosen_from"], r["chosen"], r["rejected"], r["chosen_source"]) for r in rows]
    assert got == [("sibling", [A2B], [A2A, U3, R3], "model"), ("repair", [R3], [A2A, U3, R3], "human")]
    for row in rows:
        assert row["prompt"] == [U1, A1B, U2]  # the history before the erroneous reply; no shared system prompt
        assert (row["segment_kind"], row["error_turn_id"], row["reaction_turn_id"]) == ("sdpo", pk["a2A"], pk["u3"])
        assert (row["rejected_turn_id"], row["rejected_model"], row["error_labels"]) == (
            pk["a2A"],
            "model-clarify",
            ["correction", "rephrase"],
        )
        # The in-turn vote the reaction overturns: alice chose a2A, slightly.
        assert (row["comparison_id"], row["choice"], row["strength_score"], row["turn_index"]) == (
            pk["v2"],
            "candidate",
            0.5,
            2,
        )
        assert (row["chosen_messages"], row["rejected_messages"]) == (1, 3)
    # bob's review preferred a2B, alice a2A (slightly): the pair's tally as seen from a2B.
    assert (rows[0]["votes_for"], rows[0]["votes_against"], rows[0]["margin"]) == (1, 1, 0.25)
    assert (rows[1]["votes_for"], rows[1]["comparison_ids"]) == (0, [])  # no vote compared the repair with a2A


@pytest.mark.parametrize(("longest", "rejected"), [(1, [A2A]), (2, [A2A]), (3, [A2A, U3, R3])])
def test_segment_turns_bounds_the_rejected_segment_which_ends_on_a_reply(story, tmp_path, longest, rejected):
    rows, _ = export(tmp_path, format="segments", segment_turns=longest)
    assert {tuple(m["content"] for m in r["rejected"]) for r in rows} == {tuple(m["content"] for m in rejected)}


def test_segments_after_error_keeps_the_earlier_pairs_as_a_named_option(story, tmp_path):
    rows, out = export(tmp_path, format="segments", segments="after-error")
    pk = {key: obj.pk for key, obj in story.items() if hasattr(obj, "pk")}
    # u3's candidates form the pairs; the rejected replies were never continued: one message each.
    assert [(r["chosen"], r["rejected"], r["chosen_messages"]) for r in rows] == [([R3], [A3A], 1), ([R3], [A3B], 1)]
    assert {(r["error_turn_id"], tuple(r["error_labels"]), r["turn_index"], r["segment_kind"]) for r in rows} == {
        (pk["a2A"], ("correction", "rephrase"), 3, "after_error")
    }
    assert rows[0]["prompt"] == [U1, A1B, U2, A2A, U3]
    assert json.loads((out / "manifest.json").read_text())["parameters"]["segments"] == "after-error"


def test_segments_cut_continuations_to_equal_length():
    """The chosen side continues along the lived path; both sides are cut to the shorter one."""
    from exports.selection import ConversationData, TurnRow

    def t(i: int, parent: int | None, role: str) -> TurnRow:
        return TurnRow(i, parent, role, 0, f"t{i}", "done", "m", "", False, f"uuid-{i}", False)

    conv = ConversationData(1, "uuid-c", "s", "en", {}, "r", "r", "completed", 5, "", None, "", T0, None)
    for turn in (t(1, None, "user"), t(2, 1, "assistant"), t(3, 1, "assistant"), t(4, 2, "user"), t(5, 4, "assistant")):
        conv.turns[turn.id] = turn
    lived = conv.lived_path()
    assert [x.id for x in formats._continuation(conv, conv.turns[2], lived)] == [2, 4, 5]
    assert [x.id for x in formats._continuation(conv, conv.turns[3], lived)] == [3]


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, int, int, float]]:
    return [
        (r["chosen"][-1]["content"], r["rejected"][-1]["content"], r["votes_for"], r["votes_against"],
         r["votes_tied"], r["margin"])
        for r in rows
    ]  # fmt: skip


@pytest.mark.parametrize("fmt", ["dpo", "reward"])
def test_aggregate_majority_gives_one_row_per_pair_of_replies_oriented_by_the_most_votes(story, tmp_path, fmt):
    rows, _ = export(tmp_path, format=fmt, aggregate="majority")
    pk = {key: obj.pk for key, obj in story.items() if hasattr(obj, "pk")}
    # Turn 1: both votes chose a1B (one row, not two). Turn 2: alice a2A, bob a2B, one each: no majority,
    # no row. Turn 3: the rewrite beats both candidates (one vote). Carol's tie: no direction.
    assert _pairs(rows) == [
        (A1B["content"], A1A["content"], 2, 0, 0, 1.0),
        (R3["content"], A3A["content"], 1, 0, 0, 1.0),
        (R3["content"], A3B["content"], 1, 0, 0, 1.0),
    ]
    first = rows[0]
    assert (first["comparison_id"], first["rater"], first["task"], first["strength"]) == (None, None, None, None)
    assert (first["choice"], first["comparison_ids"], first["agreement"]) == ("candidate", [pk["v1"], pk["v1r"]], 1.0)


def test_aggregate_mean_margin_weighs_strength_and_include_ties_keeps_undecided_pairs(story, tmp_path):
    rows, _ = export(tmp_path, format="dpo", aggregate="mean-margin")
    # Turn 2: alice slightly for a2A (0.5), bob for a2B (1): the mean margin favours a2B by 0.25.
    assert _pairs(rows)[1] == (A2B["content"], A2A["content"], 1, 1, 0, 0.25)
    assert len(rows) == 4 and rows[1]["agreement"] == 0.5
    tied, _ = export(tmp_path, "ties", format="dpo", aggregate="majority", include_ties=True)
    undecided = [
        (r["chosen"][0]["content"], r["rejected"][0]["content"], r["choice"]) for r in tied if r["choice"] == "tie"
    ]
    assert undecided == [
        (A2A["content"], A2B["content"], "tie"),  # 1–1, slot order
        (A3A["content"], A3B["content"], "tie"),  # all bad: judged equal
        ("Hi.", "Hello! What do you need?", "tie"),  # carol's tie
    ]


def test_aggregate_applies_to_pair_formats_only_and_names_its_choices(story, tmp_path):
    with pytest.raises(ActionRefused, match="pair formats"):
        export(tmp_path, format="kto", aggregate="majority")
    with pytest.raises(ActionRefused, match="Unknown aggregate"):
        export(tmp_path, "x", format="dpo", aggregate="mode")
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("export_dataset", "--study", "golden", "--format", "dpo", "--out", str(tmp_path / "y"),
                     "--aggregate", "sum", "--quiet")  # fmt: skip


def test_filters(story, tmp_path):
    def rows(**params: Any) -> list[dict[str, Any]]:
        return export(tmp_path, f"f{len(list(tmp_path.iterdir()))}", **params)[0]

    bob = rater(story, "bob")
    assert {r["rater"] for r in rows(format="dpo", raters=("bob",))} == {bob}
    assert len(rows(format="dpo", raters=("bob",))) == 2
    # Only plain-vs-plain pairs would survive a model filter of model-plain, and there are none: the
    # rewrite of a plain reply at turn 3 is the rater's text, not model-plain's.
    with pytest.raises(ActionRefused, match="give no `dpo` rows"):
        rows(format="dpo", models=("model-plain",))
    assert [r["turn_index"] for r in rows(format="kto", models=("model-plain",))] == [1, 1, 2, 2, 3]
    # Agreement 1.0 holds only at turn 1 (alice and bob both chose B).
    assert [r["turn_index"] for r in rows(format="dpo", min_agreement=1.0)] == [1, 1]
    assert len(rows(format="arena", completed_only=True)) == 5
    assert len(rows(format="tree", since=dt.date(2026, 5, 4), until=dt.date(2026, 5, 4))) == 2
    with pytest.raises(ActionRefused, match="No conversations in study “golden” match"):
        rows(format="tree", until=dt.date(2026, 5, 3))
    with pytest.raises(ActionRefused, match="give no `tree` rows"):
        rows(format="tree", raters=("bob",))  # bob held no conversation of his own


@pytest.mark.parametrize("file_format,compress", [("jsonl", False), ("jsonl", True), ("parquet", False)])
def test_every_format_is_byte_identical_when_exported_twice(story, tmp_path, file_format, compress):
    for fmt in FORMATS:
        outs = [
            export_build(
                params=ExportParams(study="golden", format=fmt, file_format=file_format, gzip=compress),
                out=tmp_path / f"{fmt}-{run}",
            ).out
            for run in (1, 2)
        ]
        for name in sorted(p.name for p in outs[0].iterdir()):
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), f"{fmt}/{name} differs"


def test_manifest_and_card_describe_the_export(story, tmp_path):
    _, out = export(tmp_path, format="dpo", licence="cc-by-4.0", file_format="parquet")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "dpo.parquet", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "dpo.parquet").read_bytes()
    assert manifest["files"] == [
        {"path": "dpo.parquet", "rows": 6, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    assert pq.read_table(out / "dpo.parquet").num_rows == 6
    assert manifest["parameters"]["licence"] == "cc-by-4.0" and manifest["app_version"]
    selection = manifest["selection"]
    # Conversation 2 (carol's tie) gives no dpo row: the card does not count it.
    assert (selection["conversations"], selection["comparisons"], selection["confirmed_tags"]) == (1, 5, 5)
    # Votes: turn 1 (B, B) and turn 2 (A, B) → α = 0; tags: a1B ({clar}, {clar}) and u3
    # ({correction}, {rephrase}) → MASI α = 1 − 0.5 / (10/12) = 0.4.
    assert (selection["vote_alpha"], selection["tag_alpha_masi"]) == (0.0, 0.4)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n")
    for expected in (
        "| rows in `dpo.parquet` | 6 |",
        "| conversations in the rows | 1 (1 completed) |",
        "0.000 over 2 units",
        "0.400 over 2 units",
        "| `correction` | feedback | -1 | 1 |",
        'load_dataset("parquet", data_files="dpo.parquet"',
        "Plan an event with the assistant.",
    ):
        assert expected in card


# --- bad input and failure cleanup ----------------------------------------------------------


@pytest.mark.parametrize(
    "params,message",
    [
        ({"study": "nope", "format": "dpo"}, "No study “nope”. Studies: golden."),
        ({"format": "sft"}, "Unknown format “sft”. Choose one of: dpo, kto, reward, tree, arena, multiturn, segments."),
        ({"format": "dpo", "file_format": "csv"}, "Unknown file format “csv”"),
        ({"format": "dpo", "file_format": "parquet", "gzip": True}, "gzip applies to JSONL only"),
        ({"format": "dpo", "raters": ("mallory",)}, "No rater in this study is called: mallory."),
        ({"format": "dpo", "models": ("gpt-9",)}, "No model config is called: gpt-9."),
        ({"format": "dpo", "min_agreement": 1.5}, "between 0 and 1"),
        ({"format": "dpo", "since": dt.date(2026, 6, 1), "until": dt.date(2026, 5, 1)}, "'since' is after 'until'"),
    ],
)
def test_bad_parameters_are_refused_and_write_nothing(story, tmp_path, params, message):
    with pytest.raises(ActionRefused, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        export(tmp_path, **params)
    assert info.value.status == 400
    assert list(tmp_path.iterdir()) == []


def test_an_existing_or_unwritable_output_is_refused(story, tmp_path):
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ActionRefused, match="already exists"):
        export_build(params=ExportParams(study="golden", format="dpo"), out=existing)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    with pytest.raises(ActionRefused, match="does not exist"):
        export_build(params=ExportParams(study="golden", format="dpo"), out=tmp_path / "missing" / "out")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ActionRefused, match="is a file, not a directory"):
        export_build(params=ExportParams(study="golden", format="dpo"), out=a_file / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]


def test_a_failure_while_writing_leaves_nothing_behind(story, tmp_path, monkeypatch):
    def exploding(conv, sel):
        yield from formats.dpo_rows(conv, sel)
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(formats.BUILDERS, "dpo", exploding)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_build(params=ExportParams(study="golden", format="dpo"), out=tmp_path / "out", chunk=1)
    assert list(tmp_path.iterdir()) == []  # neither the output nor the staging directory


def test_a_selection_without_rows_is_refused_and_leaves_nothing(story, tmp_path):
    with pytest.raises(ActionRefused, match="give no `dpo` rows"):
        export_build(params=ExportParams(study="golden", format="dpo", raters=("carol",)), out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_chunks_do_not_change_the_output(story, tmp_path):
    one = export_build(params=ExportParams(study="golden", format="tree"), out=tmp_path / "a", chunk=1)
    many = export_build(params=ExportParams(study="golden", format="tree"), out=tmp_path / "b", chunk=400)
    assert one.data_file.read_bytes() == many.data_file.read_bytes()


# --- the command line ---------------------------------------------------------------------


def test_command_writes_the_export_with_progress(story, tmp_path, capsys):
    out = tmp_path / "cli"
    call_command(
        "export_dataset", "--study", "golden", "--format", "kto", "--out", str(out), "--gzip", "--rater", "alice"
    )
    captured = capsys.readouterr()
    assert "2/2 conversations (100%), 7 rows" in captured.err
    assert "7 kto rows from 2 conversations" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"][0]["path"] == "kto.jsonl.gz" and manifest["parameters"]["raters"] == ["alice"]


def test_command_reports_bad_input_as_a_command_error(story, tmp_path):
    with pytest.raises(CommandError, match="Unknown format “nope”"):
        call_command("export_dataset", "--study", "golden", "--format", "nope", "--out", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="is not a date"):
        call_command("export_dataset", "--study", "golden", "--format", "dpo", "--out", "x", "--since", "May")
    assert list(tmp_path.iterdir()) == []


def test_command_help_lists_the_formats(capsys):
    with pytest.raises(SystemExit):
        call_command("export_dataset", "--help")
    assert "dpo, kto, reward, tree, arena, multiturn, segments" in capsys.readouterr().out


# --- exports requested in admin and run by a worker -----------------------------------------


def test_export_request_checks_parameters_before_queueing(story):
    from exports.models import DatasetExport
    from exports.services import export_request

    with pytest.raises(ActionRefused, match="No conversations in study “golden” match"):
        export_request(params=ExportParams(study="golden", format="dpo", until=dt.date(2000, 1, 1)), requested_by=None)
    with pytest.raises(ActionRefused, match="Unknown format"):
        export_request(params=ExportParams(study="golden", format="csv"), requested_by=None)
    assert not DatasetExport.objects.exists()


def test_export_run_claims_once_and_takes_over_a_silent_worker(
    story, tmp_path, settings, django_capture_on_commit_callbacks
):
    from django.utils import timezone

    from exports.models import DatasetExport
    from exports.services import export_files, export_request, export_run

    settings.EXPORT_DIR = tmp_path
    with django_capture_on_commit_callbacks(execute=False) as queued:
        export = export_request(params=ExportParams(study="golden", format="arena", gzip=True), requested_by=None)
    assert len(queued) == 1  # the task is sent only once the row is committed
    # A worker is running it and reporting progress: a second delivery must not start it again.
    DatasetExport.objects.filter(pk=export.pk).update(status="running", attempt=1, heartbeat_at=timezone.now())
    assert export_run(export_id=export.pk) == "busy"
    # That worker went silent for longer than the lease: the next delivery takes over.
    stale = timezone.now() - dt.timedelta(seconds=settings.EXPORT_LEASE_SECONDS + 1)
    DatasetExport.objects.filter(pk=export.pk).update(heartbeat_at=stale)
    assert export_run(export_id=export.pk) == "done"
    export.refresh_from_db()
    assert (export.status, export.attempt, export.rows, export.percent) == ("done", 2, 6, 100)
    assert export_files(export) == ["arena.jsonl.gz", "README.md", "manifest.json"]
    assert export_run(export_id=export.pk) == "gone"  # finished: a late duplicate does nothing


def test_export_run_records_a_refusal_on_the_export(story, tmp_path, settings):
    from exports.models import DatasetExport
    from exports.services import export_run

    settings.EXPORT_DIR = tmp_path
    params = ExportParams(study="golden", format="tree", raters=("bob",)).as_manifest()
    export = DatasetExport.objects.create(study=story["study"], format="tree", params=params)
    assert export_run(export_id=export.pk) == "failed"
    export.refresh_from_db()
    assert export.status == "failed" and "give no `tree` rows" in export.error
    assert list(tmp_path.iterdir()) == []


def test_admin_download_serves_only_the_exports_own_files(story, tmp_path, settings, admin_client):
    from exports.models import DatasetExport
    from exports.services import export_run

    settings.EXPORT_DIR = tmp_path
    params = ExportParams(study="golden", format="dpo").as_manifest()
    export = DatasetExport.objects.create(study=story["study"], format="dpo", params=params)
    base = f"/admin/exports/datasetexport/{export.pk}"
    assert admin_client.get(f"{base}/download/dpo.jsonl").status_code == 404  # not finished yet
    assert export_run(export_id=export.pk) == "done"
    response = admin_client.get(f"{base}/download/dpo.jsonl")
    assert response.status_code == 200 and response["Content-Disposition"] == 'attachment; filename="dpo.jsonl"'

    async def body() -> bytes:  # streamed from an async iterator, as uvicorn would read it
        return b"".join([chunk async for chunk in response.streaming_content])

    assert asyncio.run(body()).count(b"\n") == 6
    for name in ("..%2F..%2Fetc%2Fpasswd", "settings.py", "%2Fetc%2Fpasswd"):
        assert admin_client.get(f"{base}/download/{name}", follow=True).status_code == 404
    page = admin_client.get(f"{base}/change/").content.decode()
    assert "dpo.jsonl" in page and 'value="100"' in page and export.sha256 in page


def test_tree_keeps_why_a_reply_failed_without_the_model_servers_address(story, tmp_path):
    """Turn.error is for staff and may name the model server; a dataset may be published."""
    failed = story["a1A"]
    failed.status, failed.error = (
        "failed",
        (
            "Model server unreachable at http://10.1.2.3:8000/v1/chat: <urlopen error [Errno 111] refused>\n"
            "Traceback (most recent call last): internal-gpu-7.lab:9000"
        ),
    )
    failed.save(update_fields=["status", "error"])
    rows, _ = export(tmp_path, format="tree")
    turns = {t["turn_id"]: t for t in rows[0]["turns"]}
    assert turns[failed.pk]["error"] == "Model server unreachable at <address> <urlopen error [Errno 111] refused>"
    assert turns[story["a1B"].pk]["error"] is None
    assert formats.public_error("answered 500 from gpu-box.corp:8443 (" + "x" * 400) == (
        "answered 500 from <address> (" + "x" * (formats.ERROR_CHARS - len("answered 500 from <address> ("))
    )


def test_the_studys_declared_language_is_in_every_row_and_in_the_card(story, tmp_path):
    import yaml
    from django.core.exceptions import ValidationError

    from annotate.models import Study

    Study.objects.filter(slug="golden").update(language="pt-BR")
    for fmt in FORMATS:
        rows, out = export(tmp_path, fmt, format=fmt)
        assert {r["language"] for r in rows} == {"pt-BR"}, fmt
        front = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
        assert front["language"] == ["pt-BR"]
    study = Study.objects.get(slug="golden")
    for bad in ("en\nlicense: mit", "english language", "e"):
        study.language = bad
        with pytest.raises(ValidationError, match="BCP 47"):
            study.full_clean()


def test_ids_are_stable_uuids_the_same_in_every_format_and_export(story, tmp_path):
    dpo, _ = export(tmp_path, "dpo", format="dpo")
    tree, _ = export(tmp_path, "tree", format="tree")
    again, _ = export(tmp_path, "again", format="dpo")
    c1, a1b = story["c1"], story["a1B"]
    assert dpo[0]["conversation_uuid"] == tree[0]["conversation_uuid"] == str(c1.uuid)
    turns = {t["turn_id"]: t for t in tree[0]["turns"]}
    assert dpo[0]["chosen_turn_uuid"] == turns[a1b.pk]["turn_uuid"] == str(a1b.uuid)
    assert turns[a1b.pk]["parent_uuid"] == str(story["u1"].uuid)
    assert [r["chosen_turn_uuid"] for r in dpo] == [r["chosen_turn_uuid"] for r in again]
    assert len({t["turn_uuid"] for t in tree[0]["turns"]}) == len(tree[0]["turns"])


@pytest.mark.parametrize(
    ("fmt", "option", "says"),
    [
        ("dpo", {"aggregate": "majority"}, "`--aggregate majority`"),
        ("reward", {"aggregate": "mean-margin"}, "`--aggregate mean-margin`"),
        ("segments", {"segments": "after-error"}, "Segments are the vote pairs at the branch point after an error"),
        ("arena", {"arena_history": "lived"}, "`--arena-history lived`"),
    ],
)
def test_the_card_says_what_a_non_default_row_option_means(story, tmp_path, fmt, option, says):
    _, out = export(tmp_path, format=fmt, **option)
    assert says in (out / "README.md").read_text()
    _, plain = export(tmp_path, "plain", format=fmt)
    assert says not in (plain / "README.md").read_text()


def test_an_arena_battle_whose_reply_named_its_model_is_flagged(story, tmp_path):
    from annotate.models import Turn

    Turn.objects.filter(pk=story["a1A"].pk).update(identity_leak=True)
    rows, _ = export(tmp_path, format="arena")
    assert [r["identity_leak"] for r in rows] == [True, True, False, False, False, False]
